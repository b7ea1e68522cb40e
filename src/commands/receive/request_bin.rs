//! A webhook receiver that records every request (raw headers in order, body bytes) and
//! answers with scripted responses: `netbox-outbox receive` for trying a webhook out, the demo's
//! receiver, and the tests' and benchmarks' endpoint.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: SystemTime,
    pub method: String,
    pub path: String,
    /// Headers in arrival order, names lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Whether `X-Hook-Signature` is the HMAC-SHA512 of the body with `secret`.
    pub fn signature_valid(&self, secret: &str) -> bool {
        self.header("X-Hook-Signature") == Some(crate::request::sign(secret, &self.body).as_str())
    }
}

/// Fewer requests arrived than awaited before the deadline: what did arrive, to show.
pub struct TooFew {
    pub wanted: usize,
    pub waited: Duration,
    /// Requests counted (the same as `arrived.len()` unless only counting).
    pub counted: usize,
    pub arrived: Vec<Received>,
}

impl std::fmt::Display for TooFew {
    // Method and path only: bodies and headers may hold secrets and are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "waited {:?} for {} requests, {} arrived",
            self.waited, self.wanted, self.counted
        )?;
        for (i, r) in self.arrived.iter().enumerate() {
            write!(f, "\n  {}. {} {}", i + 1, r.method, r.path)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for TooFew {
    // `unwrap()` shows Debug: make that the readable message too.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for TooFew {}

/// How to answer one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// A status with extra headers (e.g. Retry-After).
    WithHeaders(u16, Vec<(String, String)>),
    /// Wait, then answer.
    Delay(Duration, u16),
    /// Close the connection without answering.
    Hang,
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    /// Count requests without keeping them (load tests).
    count_only: bool,
    counted: usize,
    script: VecDeque<Reply>,
    by_path: std::collections::HashMap<String, VecDeque<Reply>>,
    default: Option<Reply>,
}

/// A running receiver on 127.0.0.1.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
    stop: CancellationToken,
}

impl Receiver {
    /// Starts a receiver on an ephemeral port of 127.0.0.1, answering 200 by default.
    pub async fn start() -> std::io::Result<Receiver> {
        Self::bind("127.0.0.1:0".parse().expect("address")).await
    }

    pub async fn bind(addr: SocketAddr) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind(addr).await?;
        let receiver = Receiver {
            addr: listener.local_addr()?,
            state: Arc::new(Mutex::new(State::default())),
            arrived: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
        };
        let r = receiver.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = r.stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let r = r.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let r = r.clone();
                        async move { r.handle(req).await }
                    });
                    let conn =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    let _ = conn.await;
                });
            }
        });
        Ok(receiver)
    }

    /// The URL of a path on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests with these replies, in order, then with the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .lock()
            .expect("receiver state")
            .script
            .extend(replies);
    }

    /// Answers the next requests to `path` with these replies, in order.
    pub fn script_path(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .lock()
            .expect("receiver state")
            .by_path
            .entry(path.to_string())
            .or_default()
            .extend(replies);
    }

    /// Answers every request not scripted otherwise with this.
    pub fn default_reply(&self, reply: Reply) {
        self.state.lock().expect("receiver state").default = Some(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("receiver state").received.clone()
    }

    pub fn count(&self) -> usize {
        let state = self.state.lock().expect("receiver state");
        if state.count_only {
            state.counted
        } else {
            state.received.len()
        }
    }

    /// Keeps only a count of requests, not the requests (for load tests).
    pub fn keep_nothing(&self) {
        self.state.lock().expect("receiver state").count_only = true;
    }

    /// Waits until at least `n` requests arrived; past the deadline, says what did arrive.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Result<Vec<Received>, TooFew> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.arrived.notified();
            if self.count() >= n {
                return Ok(self.received());
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return Err(TooFew {
                    wanted: n,
                    waited: deadline,
                    counted: self.count(),
                    arrived: self.received(),
                });
            }
        }
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Serves HTTP/1.1 on one connection (for instance one already wrapped in TLS).
    pub async fn serve<I>(&self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let r = self.clone();
        let service = service_fn(move |req| {
            let r = r.clone();
            async move { r.handle(req).await }
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .await;
    }

    /// A receiver that records and answers but accepts no connections itself; feed it with
    /// [`Receiver::serve`].
    pub fn detached(addr: SocketAddr) -> Receiver {
        Receiver {
            addr,
            state: Arc::new(Mutex::new(State::default())),
            arrived: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let method = req.method().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let headers = wire_headers(&req);
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        let reply = {
            let mut state = self.state.lock().expect("receiver state");
            let scripted = state.by_path.get_mut(&path).and_then(VecDeque::pop_front);
            if state.count_only {
                state.counted += 1;
            } else {
                state.received.push(Received {
                    at: SystemTime::now(),
                    method,
                    path,
                    headers,
                    body,
                });
            }
            scripted
                .or_else(|| state.script.pop_front())
                .or_else(|| state.default.clone())
                .unwrap_or(Reply::Status(200))
        };
        self.arrived.notify_waiters();
        let (status, extra) = match reply {
            Reply::Status(s) => (s, Vec::new()),
            Reply::WithHeaders(s, h) => (s, h),
            Reply::Delay(d, s) => {
                tokio::time::sleep(d).await;
                (s, Vec::new())
            }
            Reply::Hang => {
                // Never answer: the client times out.
                std::future::pending::<()>().await;
                unreachable!()
            }
        };
        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
        *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        for (name, value) in extra {
            if let (Ok(n), Ok(v)) = (
                hyper::header::HeaderName::from_bytes(name.as_bytes()),
                hyper::header::HeaderValue::from_str(&value),
            ) {
                response.headers_mut().insert(n, v);
            }
        }
        Ok(response)
    }
}

/// The headers in the order they came (names lower case: HTTP names are case-insensitive).
fn wire_headers(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}
