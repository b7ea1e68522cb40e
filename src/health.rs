//! The sidecar's HTTP endpoint: `/metrics` (Prometheus), `/healthz` (the process is alive) and
//! `/readyz` (the database answers and its migrations are current).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::db::Database;

/// The process-wide metrics recorder (installed once, even when several sidecars share a process).
pub fn metrics_handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match crate::metrics::install() {
            Ok(handle) => Some(handle),
            Err(error) => {
                warn!(error, "metrics are disabled");
                None
            }
        })
        .as_ref()
}

/// Serves the endpoint on `addr` until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    database: Database,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let handle = metrics_handle();
    loop {
        let (stream, _) = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let database = database.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let database = database.clone();
                async move { Ok::<_, Infallible>(route(req.uri().path(), handle, &database).await) }
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
) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => match handle {
            Some(h) => text(StatusCode::OK, h.render(), "text/plain; version=0.0.4"),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "metrics are disabled\n".into(),
                "text/plain",
            ),
        },
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => match ready(database).await {
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

/// Ready: the database answers within 5 s and carries every migration this binary knows.
pub async fn ready(database: &Database) -> Result<(), String> {
    let check = async {
        let client = database
            .connect()
            .await
            .map_err(|e| crate::error_chain(&e))?;
        match crate::migrations::pending(&client).await {
            Ok(pending) if pending.is_empty() => Ok(()),
            Ok(pending) => Err(format!(
                "migrations pending: {}",
                pending
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Err(e) => Err(crate::error_chain(&e)),
        }
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
