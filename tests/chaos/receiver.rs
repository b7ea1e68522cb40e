//! The receivers under test: a small HTTP/1.1 server whose behaviour the fault schedule switches
//! (up, down, failing with a given fault for a share of requests), logging every request it reads.
//!
//! It speaks HTTP on the socket itself, rather than through a server library, so that it can do
//! what a library would not: stop answering, or cut a response off in the middle.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// How the receiver answers a request it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// 200 at once.
    Accepted,
    /// 200 after up to a second (within the webhook's timeout).
    Slow,
    /// 500.
    ServerError,
    /// 429 with `Retry-After: 1`.
    RateLimited,
    /// No answer at all: the sender's timeout fires.
    Silent,
    /// The connection is closed in the middle of the status line.
    Cut,
    /// 200 and its headers, then the connection is closed in the middle of the body: the
    /// receiver said yes, so it counts as accepted.
    CutBody,
}

impl Outcome {
    /// Whether the receiver took the webhook (answered 2xx).
    pub fn reached(self) -> bool {
        matches!(self, Outcome::Accepted | Outcome::Slow | Outcome::CutBody)
    }

    pub const ALL: [Outcome; 7] = [
        Outcome::Accepted,
        Outcome::Slow,
        Outcome::ServerError,
        Outcome::RateLimited,
        Outcome::Silent,
        Outcome::Cut,
        Outcome::CutBody,
    ];
}

/// The receiver's state, as the fault schedule sets it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Every request accepted.
    Up,
    /// The port is closed: connections are refused, and open ones are dropped.
    Down,
    /// This share of requests (0 to 1) gets `fault`; the others are accepted.
    Failing(Outcome, f64),
}

/// One request the receiver read, with the fields the checker needs (never the whole body).
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Since the run started.
    pub at: Duration,
    /// The webhook, by the receiver's name.
    pub webhook: String,
    /// The `X-Netbox-Outbox-Delivery` header.
    pub delivery: String,
    /// The workload's marker for the transaction: the payload's `request.id`.
    pub marker: String,
    pub object_id: i64,
    pub event: String,
    pub outcome: Outcome,
}

struct Shared {
    name: String,
    clock: Instant,
    mode: Mutex<Mode>,
    log: Mutex<Vec<Arrival>>,
    /// Cancelled when the receiver goes down: the listener and every connection close.
    up: Mutex<CancellationToken>,
    /// While down, the port, bound but not listening.
    held: Mutex<Option<TcpSocket>>,
}

/// A receiver on a fixed port of 127.0.0.1 (it keeps the port while down, so the webhook's URL
/// stays valid and no one else takes it).
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Starts a receiver, up, on a free port (within a tokio runtime).
    pub fn start(name: &str, clock: Instant) -> Receiver {
        let socket = listen_socket("127.0.0.1:0".parse().expect("address"));
        let listener = socket.listen(128).expect("listen");
        let receiver = Receiver {
            addr: listener.local_addr().expect("bound address"),
            shared: Arc::new(Shared {
                name: name.to_string(),
                clock,
                mode: Mutex::new(Mode::Up),
                log: Mutex::new(Vec::new()),
                up: Mutex::new(CancellationToken::new()),
                held: Mutex::new(None),
            }),
        };
        receiver.accept(listener);
        receiver
    }

    pub fn url(&self) -> String {
        format!("http://{}/{}", self.addr, self.shared.name)
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Switches the receiver's behaviour; going down closes the port, coming back reopens it.
    pub async fn set_mode(&self, mode: Mode) {
        let was = std::mem::replace(&mut *self.shared.mode.lock().unwrap(), mode);
        match (was == Mode::Down, mode == Mode::Down) {
            (false, true) => {
                self.shared.up.lock().unwrap().cancel();
                let held = self.hold_port().await;
                *self.shared.held.lock().unwrap() = Some(held);
            }
            (true, false) => {
                *self.shared.up.lock().unwrap() = CancellationToken::new();
                let held = self.shared.held.lock().unwrap().take();
                let listener = held
                    .expect("a receiver that is down holds its port")
                    .listen(128)
                    .unwrap_or_else(|e| {
                        panic!("receiver {} cannot reopen {}: {e}", self.name(), self.addr)
                    });
                self.accept(listener);
            }
            _ => {}
        }
    }

    /// Binds the port without listening: connections to it are refused, as to a closed port,
    /// but no other program on the machine gets the port meanwhile (another test's receiver on
    /// it would answer our sidecars, and what it accepted would look lost).
    async fn hold_port(&self) -> TcpSocket {
        // The listener closes as its task sees the cancellation: until then the port is taken.
        for _ in 0..200 {
            let socket = TcpSocket::new_v4().expect("a socket");
            socket.set_reuseaddr(true).expect("SO_REUSEADDR");
            if socket.bind(self.addr).is_ok() {
                return socket;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "receiver {} cannot hold its port {} while down",
            self.name(),
            self.addr
        )
    }

    /// Every request read so far.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.shared.log.lock().unwrap().clone()
    }

    fn accept(&self, listener: tokio::net::TcpListener) {
        let up = self.shared.up.lock().unwrap().clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = up.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let (shared, up) = (shared.clone(), up.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = up.cancelled() => {}
                        () = serve(stream, &shared) => {}
                    }
                });
            }
        });
    }
}

fn listen_socket(addr: SocketAddr) -> TcpSocket {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(addr)
        .unwrap_or_else(|e| panic!("bind a receiver to {addr}: {e}"));
    socket
}

/// Serves one keep-alive connection until the peer closes it or a fault ends it.
async fn serve(stream: TcpStream, shared: &Shared) {
    let mut stream = BufReader::new(stream);
    while let Some((headers, body)) = read_request(&mut stream).await {
        let outcome = match *shared.mode.lock().unwrap() {
            Mode::Up => Outcome::Accepted,
            // The port closed while this request was read: as if it never came.
            Mode::Down => return,
            Mode::Failing(fault, share) => {
                if rand::rng().random_bool(share) {
                    fault
                } else {
                    Outcome::Accepted
                }
            }
        };
        shared
            .log
            .lock()
            .unwrap()
            .push(arrival(shared, &headers, &body, outcome));
        let answer: &[u8] = match outcome {
            Outcome::Accepted => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Outcome::Slow => {
                let delay = rand::rng().random_range(200..1000);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            }
            Outcome::ServerError => {
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nboom"
            }
            Outcome::RateLimited => {
                b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 4\r\n\r\nslow"
            }
            Outcome::Silent => {
                // Longer than any webhook's timeout, then give up the connection.
                tokio::time::sleep(Duration::from_secs(10)).await;
                return;
            }
            Outcome::Cut => {
                let _ = stream.get_mut().write_all(b"HTTP/1.1 200 O").await;
                return;
            }
            Outcome::CutBody => {
                let _ = stream
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 64\r\n\r\naccepted, but")
                    .await;
                return;
            }
        };
        if stream.get_mut().write_all(answer).await.is_err() {
            return;
        }
    }
}

/// Reads one request: its headers (names lower case) and body, or None at the end of the
/// connection or on anything malformed.
async fn read_request(
    stream: &mut BufReader<TcpStream>,
) -> Option<(Vec<(String, String)>, Vec<u8>)> {
    let mut line = String::new();
    if stream.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        line.clear();
        stream.read_line(&mut line).await.ok()?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some((headers, body))
}

fn arrival(
    shared: &Shared,
    headers: &[(String, String)],
    body: &[u8],
    outcome: Outcome,
) -> Arrival {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    Arrival {
        at: shared.clock.elapsed(),
        webhook: shared.name.clone(),
        delivery: headers
            .iter()
            .find(|(n, _)| n == "x-netbox-outbox-delivery")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        marker: json["request"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        object_id: json["data"]["id"].as_i64().unwrap_or(-1),
        event: json["event"].as_str().unwrap_or_default().to_string(),
        outcome,
    }
}
