//! Sending one frozen request: a pooled HTTP client per TLS setting, and the outcome of the
//! attempt as a value.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Certificate, Client, StatusCode};

use crate::config::DeliveryConfig;

/// A delivery as the sender needs it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: i64,
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
    pub ssl_verification: bool,
    pub ca_file_path: Option<String>,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    pub started_at: SystemTime,
    pub duration: Duration,
    pub status: Option<u16>,
    /// Why no response came, or why it was not usable; never the request or the secret.
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    /// A Retry-After the receiver asked for (429 and 503 only).
    pub retry_after: Option<Duration>,
}

impl AttemptResult {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// TLS settings that call for a client of their own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TlsKey {
    verify: bool,
    ca_file: Option<(PathBuf, Option<SystemTime>)>,
}

/// HTTP clients, one per distinct TLS setting, each with its own keep-alive pool.
pub struct Sender {
    config: DeliveryConfig,
    clients: Mutex<HashMap<TlsKey, Client>>,
}

impl Sender {
    pub fn new(config: DeliveryConfig) -> Self {
        Sender {
            config,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, out: &Outgoing) -> Result<Client, String> {
        let ca_file = out.ca_file_path.as_ref().map(|p| {
            let path = PathBuf::from(p);
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            (path, modified)
        });
        let key = TlsKey {
            verify: out.ssl_verification,
            ca_file,
        };
        if let Some(client) = self.clients.lock().expect("client cache").get(&key) {
            return Ok(client.clone());
        }
        let mut builder = Client::builder()
            .user_agent(self.config.user_agent.clone())
            .http1_title_case_headers()
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(self.config.per_webhook_concurrency)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(30))
            .redirect(if self.config.follow_redirects {
                reqwest::redirect::Policy::limited(30)
            } else {
                reqwest::redirect::Policy::none()
            });
        builder = match &self.config.proxy {
            Some(proxy) => builder.proxy(
                reqwest::Proxy::all(proxy).map_err(|e| format!("delivery.proxy {proxy:?}: {e}"))?,
            ),
            // NetBox applies only HTTP_PROXIES, never the *_PROXY environment variables
            None => builder.no_proxy(),
        };
        if let Some((path, _)) = &key.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                format!(
                    "ca_file_path {}: cannot read it ({e}); fix the path in the webhook, or make \
                     the file readable by netbox-outbox",
                    path.display()
                )
            })?;
            let what_to_do = "point ca_file_path at a PEM file of the CA certificates that sign \
                              the receiver's certificate, in the webhook";
            let certs = Certificate::from_pem_bundle(&pem).map_err(|e| {
                format!(
                    "ca_file_path {}: not a PEM certificate bundle ({e}); {what_to_do}",
                    path.display()
                )
            })?;
            if certs.is_empty() {
                return Err(format!(
                    "ca_file_path {}: holds no PEM certificate; {what_to_do}",
                    path.display()
                ));
            }
            builder = builder.tls_certs_only(certs);
        } else if !key.verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        self.clients
            .lock()
            .expect("client cache")
            .insert(key, client.clone());
        Ok(client)
    }

    /// Sends the request once and reports what happened. Never fails: every problem is an
    /// outcome to record.
    pub async fn send(&self, out: &Outgoing, delivery_header: &str) -> AttemptResult {
        let started_at = SystemTime::now();
        let start = Instant::now();
        let failed = |error: String| AttemptResult {
            started_at,
            duration: start.elapsed(),
            status: None,
            error: Some(error),
            response_excerpt: None,
            retry_after: None,
        };
        let client = match self.client(out) {
            Ok(client) => client,
            Err(error) => return failed(error),
        };
        let Ok(method) = reqwest::Method::from_bytes(out.method.as_bytes()) else {
            return failed(format!("{:?} is not an HTTP method", out.method));
        };
        let mut headers = HeaderMap::with_capacity(out.headers.len() + 1);
        for (name, value) in &out.headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(n), Ok(v)) => {
                    headers.insert(n, v);
                }
                _ => return failed(format!("invalid header {name:?}")),
            }
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(delivery_header.as_bytes()),
            HeaderValue::from_str(&out.id.to_string()),
        ) {
            headers.insert(n, v);
        }
        let request = client
            .request(method, &out.url)
            .headers(headers)
            .body(out.body.clone())
            .timeout(out.timeout);
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => return failed(describe(&error, out.timeout, &out.url)),
        };
        let status = response.status();
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after),
            _ => None,
        };
        // Read only the start of the body: enough for the log, never a whole large response.
        let limit = self.config.response_excerpt_bytes;
        let mut excerpt = Vec::new();
        let mut error = None;
        while excerpt.len() < limit {
            match tokio::time::timeout(out.timeout, response.chunk()).await {
                Ok(Ok(Some(chunk))) => excerpt.extend_from_slice(&chunk),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    error = Some(format!("reading the response failed: {}", e.without_url()));
                    break;
                }
                Err(_) => break,
            }
        }
        excerpt.truncate(limit);
        if !status.is_success() && error.is_none() {
            error = Some(format!("HTTP {}", status.as_u16()));
            if status.is_redirection() && !self.config.follow_redirects {
                error = Some(format!(
                    "HTTP {}: a redirect, which is not followed (delivery.follow_redirects)",
                    status.as_u16()
                ));
            }
        }
        AttemptResult {
            started_at,
            duration: start.elapsed(),
            status: Some(status.as_u16()),
            error,
            response_excerpt: (!excerpt.is_empty())
                .then(|| String::from_utf8_lossy(&excerpt).into_owned()),
            retry_after,
        }
    }
}

/// A reqwest error without the URL (whose path and query may carry tokens), in words an
/// operator acts on: what failed, where (host and port only), and what to check.
fn describe(error: &reqwest::Error, timeout: Duration, url: &str) -> String {
    use std::error::Error as _;
    let parsed = reqwest::Url::parse(url).ok();
    let host = parsed
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let port = parsed
        .as_ref()
        .and_then(reqwest::Url::port_or_known_default)
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    if error.is_timeout() {
        return format!(
            "timed out after {}s waiting for {host}{port}; the receiver is slow or unreachable \
             (raise the webhook's timeout if it needs longer)",
            timeout.as_secs_f64()
        );
    }
    let mut chain = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push(cause.to_string());
        source = cause.source();
    }
    let detail = chain.join(": ");
    let (kind, what_to_do) = if error.is_connect() {
        if detail.contains("dns error") || detail.contains("failed to lookup") {
            (
                format!("DNS lookup failed for {host}"),
                "check the host name in the webhook's payload_url, and this host's DNS",
            )
        } else if detail.contains("certificate") || detail.contains("tls") || detail.contains("TLS")
        {
            (
                format!("TLS handshake failed with {host}{port}"),
                "the receiver's certificate must carry the name in payload_url and be signed \
                 by a CA this host trusts, or by one in the webhook's ca_file_path",
            )
        } else {
            (
                format!("connection failed to {host}{port}"),
                "is the receiver running, and reachable from this host (firewall, proxy)?",
            )
        }
    } else if error.is_request() || error.is_body() {
        ("sending the request failed".to_string(), "")
    } else {
        ("request failed".to_string(), "")
    };
    let mut message = kind;
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(&detail);
    }
    if !what_to_do.is_empty() {
        message.push_str("; ");
        message.push_str(what_to_do);
    }
    message
}

/// Retry-After as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate(value)?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate(value: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: u64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as u64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<u64> = parts[4].split(':').filter_map(|p| p.parse().ok()).collect();
    if hms.len() != 3 {
        return None;
    }
    // days from civil (Howard Hinnant's algorithm)
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m as i64 + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + (hms[0] * 3600 + hms[1] * 60 + hms[2]) as i64;
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_as_seconds_or_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(
            httpdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784111777))
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
