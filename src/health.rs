//! The sidecar's HTTP endpoint: `/metrics` (Prometheus), `/healthz` (the process is alive) and
//! `/readyz` (the database answers, its migrations are current and changes are being read), and
//! the database-wide gauges behind them, sampled at each scrape so they never go stale. The
//! recorder that renders `/metrics` is [`crate::metrics`]'s.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics::gauge;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::db::Database;
use crate::metrics as m;

/// Batches failing in a row after which /readyz fails: one failure is retried at once and is
/// no stall, three in a row (backing off) are.
pub const FAILING_BATCHES_NOT_READY: u32 = 3;

/// What the sidecar's tasks tell the endpoint, and what the gauges last reported.
#[derive(Debug)]
pub struct Health {
    stall_after: Duration,
    failing_batches: AtomicU32,
    /// Webhooks whose backlog gauges were last set, so a webhook that drained or was deleted
    /// (and so is absent from the query) gets 0 instead of its last value.
    backlog_webhooks: Mutex<HashSet<String>>,
    /// The webhooks whose oldest-blocked-head gauge is set (reset to 0 when they clear).
    blocked_webhooks: Mutex<HashSet<String>>,
}

impl Health {
    pub fn new(stall_after: Duration) -> Arc<Self> {
        Arc::new(Health {
            stall_after,
            failing_batches: AtomicU32::new(0),
            backlog_webhooks: Mutex::new(HashSet::new()),
            blocked_webhooks: Mutex::new(HashSet::new()),
        })
    }

    /// The assembler's batches that failed in a row (0 after one succeeds).
    pub fn set_failing_batches(&self, n: u32) {
        self.failing_batches.store(n, Ordering::Relaxed);
        gauge!(m::FAILING_BATCHES).set(f64::from(n));
    }

    /// Samples the database-wide gauges: the read lag (unread changes, the oldest one's age),
    /// backlog and oldest pending delivery per webhook, paused webhooks, dead deliveries.
    pub async fn sample_gauges(
        &self,
        db: &tokio_postgres::Client,
    ) -> Result<ReadLag, tokio_postgres::Error> {
        let lag = read_lag(db).await?;
        gauge!(m::UNREAD_CHANGES).set(lag.unread as f64);
        gauge!(m::OLDEST_UNREAD).set(lag.oldest_unread_seconds);
        let mut pending = HashSet::new();
        for row in db
            .query(
                "select webhook_name, count(*), extract(epoch from now() - min(created_at))::float8
                 from netbox_outbox.delivery where state = 'pending' group by webhook_name",
                &[],
            )
            .await?
        {
            let name: String = row.get(0);
            gauge!(m::BACKLOG, "webhook" => name.clone()).set(row.get::<_, i64>(1) as f64);
            gauge!(m::OLDEST_PENDING, "webhook" => name.clone()).set(row.get::<_, f64>(2));
            pending.insert(name);
        }
        {
            let mut reported = self.backlog_webhooks.lock().expect("not poisoned");
            for drained in reported.difference(&pending) {
                gauge!(m::BACKLOG, "webhook" => drained.clone()).set(0.0);
                gauge!(m::OLDEST_PENDING, "webhook" => drained.clone()).set(0.0);
            }
            *reported = pending;
        }
        // The oldest blocked queue head per webhook (0 once none is blocked).
        let mut blocked = HashSet::new();
        for row in db
            .query(
                "select webhook_name, extract(epoch from max(blocked_for))::float8
                 from netbox_outbox.blocked_heads group by webhook_name",
                &[],
            )
            .await?
        {
            let name: String = row.get(0);
            gauge!(m::OLDEST_BLOCKED_HEAD, "webhook" => name.clone())
                .set(row.get::<_, Option<f64>>(1).unwrap_or(0.0));
            blocked.insert(name);
        }
        {
            let mut reported = self.blocked_webhooks.lock().expect("not poisoned");
            for cleared in reported.difference(&blocked) {
                gauge!(m::OLDEST_BLOCKED_HEAD, "webhook" => cleared.clone()).set(0.0);
            }
            *reported = blocked;
        }
        let row = db
            .query_one(
                "select (select count(*) from netbox_outbox.webhook_state where paused_until > now()),
                        (select count(*) from netbox_outbox.delivery where state = 'dead')",
                &[],
            )
            .await?;
        gauge!(m::PAUSED_WEBHOOKS).set(row.get::<_, i64>(0) as f64);
        gauge!(m::DEAD_PENDING_REPLAY).set(row.get::<_, i64>(1) as f64);
        Ok(lag)
    }
}

/// Committed changes no sidecar has read yet (`netbox_outbox.read_lag()`, V7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadLag {
    pub unread: i64,
    /// 0 when nothing is unread.
    pub oldest_unread_seconds: f64,
}

pub async fn read_lag(db: &tokio_postgres::Client) -> Result<ReadLag, tokio_postgres::Error> {
    let row = db
        .query_one(
            "select unread, oldest_unread_seconds from netbox_outbox.read_lag()",
            &[],
        )
        .await?;
    Ok(ReadLag {
        unread: row.get(0),
        oldest_unread_seconds: row.get(1),
    })
}

/// Binds the endpoint's address: done before the sidecar starts, so an address in use (a
/// second sidecar on the host) stops the start instead of running on without health checks.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the endpoint on a bound `listener` until `cancel`.
pub async fn serve(
    listener: TcpListener,
    database: Database,
    health: Arc<Health>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let handle = m::recorder();
    loop {
        let (stream, _) = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let (database, health) = (database.clone(), health.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (database, health) = (database.clone(), health.clone());
                async move {
                    Ok::<_, Infallible>(route(req.uri().path(), handle, &database, &health).await)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(
    path: &str,
    handle: Option<&PrometheusHandle>,
    database: &Database,
    health: &Health,
) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => match handle {
            Some(h) => {
                // Fresh database-wide gauges; if the database does not answer, the rest still
                // renders (and /readyz says why).
                let sampled = tokio::time::timeout(Duration::from_secs(5), async {
                    let client = database
                        .connect()
                        .await
                        .map_err(|e| crate::error_chain(&e))?;
                    health
                        .sample_gauges(&client)
                        .await
                        .map_err(|e| crate::error_chain(&e))
                })
                .await
                .unwrap_or_else(|_| Err("the database did not answer within 5s".into()));
                if let Err(error) = sampled {
                    warn!(
                        error,
                        "sampling gauges for /metrics failed; they show older values"
                    );
                }
                text(StatusCode::OK, h.render(), "text/plain; version=0.0.4")
            }
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "metrics are disabled\n".into(),
                "text/plain",
            ),
        },
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => match ready(database, health).await {
            Ok(()) => text(StatusCode::OK, "ready\n".into(), "text/plain"),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
                "text/plain",
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
            "text/plain",
        ),
    }
}

/// Ready: the database answers within 5 s, carries every migration this binary knows, and
/// changes are being read: no committed change waits longer than `[metrics] stall_after`, and
/// batches do not keep failing in this sidecar.
pub async fn ready(database: &Database, health: &Health) -> Result<(), String> {
    let check = async {
        let client = database
            .connect()
            .await
            .map_err(|e| crate::error_chain(&e))?;
        match crate::migrations::pending(&client).await {
            Ok(pending) if pending.is_empty() => {}
            Ok(pending) => {
                return Err(format!(
                    "migrations pending: {}",
                    pending
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Err(e) => return Err(crate::error_chain(&e)),
        }
        let failing = health.failing_batches.load(Ordering::Relaxed);
        if failing >= FAILING_BATCHES_NOT_READY {
            return Err(format!(
                "the last {failing} batches of changes failed; the cause is in the log \
                 (\"processing a batch of changes failed\")"
            ));
        }
        let lag = read_lag(&client)
            .await
            .map_err(|e| crate::error_chain(&e))?;
        if lag.oldest_unread_seconds > health.stall_after.as_secs_f64() {
            return Err(format!(
                "changes are not being read: {} unread, the oldest {:.0}s old (more than \
                 [metrics] stall_after = {:?}); is a sidecar's assembler stuck? see the log and \
                 netbox-outbox status",
                lag.unread, lag.oldest_unread_seconds, health.stall_after
            ));
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .unwrap_or_else(|_| Err("the database did not answer within 5s".into()))
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
