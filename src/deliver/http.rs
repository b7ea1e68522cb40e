//! Sending one frozen request: a pooled HTTP client per TLS setting, and the outcome of the
//! attempt as a value that can always be recorded, whatever the receiver answered.
//!
//! Redirects: only a 307 or 308 to the same origin is followed (they keep the method and the
//! body, and the same origin is the same receiver, so the secret headers and the signature go
//! nowhere new). Any other redirect is a failed attempt whose error names the status, the
//! origin it points to (never the path, which may hold tokens) and what to change. NetBox's own
//! sender (`requests`) follows every redirect: 301/302/303 as a body-less GET, and to any host
//! with the signature and custom headers; a receiver never got the webhook that way, yet it was
//! counted as delivered.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{DATE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{Certificate, Client, StatusCode};

use crate::config::DeliveryConfig;
use crate::request::Request;
use crate::standard_webhooks::Secrets;

/// Redirects followed in one attempt, at most (307/308 to the same origin only).
pub const MAX_REDIRECTS: usize = 5;

/// The longest error text recorded for an attempt, in bytes.
const MAX_ERROR_BYTES: usize = 2000;

/// What one attempt came to. Its text fields are safe to store whatever the receiver sent:
/// valid UTF-8 without NUL, and bounded.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    /// When the attempt started, by this host's monotonic clock: the database turns "this long
    /// ago" into a time with its own clock.
    pub started: Instant,
    pub duration: Duration,
    pub status: Option<u16>,
    /// Why no response came, or why it was not usable; never the request or the secret.
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    /// A Retry-After the receiver asked for (429 and 503 only), as a delay: seconds, or a date
    /// less the receiver's own `Date` header (its clock against its clock).
    pub retry_after: Option<Duration>,
    /// A Retry-After date from a receiver that sent no `Date`: the database compares it with
    /// its own now(), never this host's clock.
    pub retry_after_date: Option<SystemTime>,
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

    fn client(&self, request: &Request) -> Result<Client, String> {
        let ca_file = request.transport.ca_file_path.as_ref().map(|p| {
            let path = PathBuf::from(p);
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            (path, modified)
        });
        let key = TlsKey {
            verify: request.transport.ssl_verification,
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
            // the original URL may hold tokens; a followed redirect is the same origin anyway
            .referer(false)
            .redirect(redirect_policy());
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

    /// Sends a delivery's request once and reports what happened. `message_id` (the id the
    /// receiver sees, the same for every attempt and replay) goes in `delivery_header`; with
    /// Standard Webhooks secrets, the attempt is signed now (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`). Never fails: every problem is an outcome to record.
    pub async fn send(
        &self,
        request: &Request,
        message_id: i64,
        delivery_header: &str,
        standard_webhooks: Option<&Result<Secrets, String>>,
    ) -> AttemptResult {
        let timeout = request.transport.timeout;
        let start = Instant::now();
        let failed = |error: String| AttemptResult {
            started: start,
            duration: start.elapsed(),
            status: None,
            error: Some(storable(&error, MAX_ERROR_BYTES)),
            response_excerpt: None,
            retry_after: None,
            retry_after_date: None,
        };
        let client = match self.client(request) {
            Ok(client) => client,
            Err(error) => return failed(error),
        };
        let Ok(method) = reqwest::Method::from_bytes(request.method.as_bytes()) else {
            return failed(format!("{:?} is not an HTTP method", request.method));
        };
        let mut headers = HeaderMap::with_capacity(request.headers.len() + 1);
        for (name, value) in &request.headers {
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
            HeaderValue::from_str(&message_id.to_string()),
        ) {
            headers.insert(n, v);
        }
        match standard_webhooks {
            None => {}
            Some(Err(problem)) => return failed(format!("webhook {problem}")),
            Some(Ok(secrets)) => {
                // the receiver compares it with its own clock: this host's wall clock is the
                // only one the receiver can check against
                let timestamp = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                for (name, value) in
                    secrets.headers(&message_id.to_string(), timestamp, &request.body)
                {
                    if let Ok(v) = HeaderValue::from_str(&value) {
                        headers.insert(HeaderName::from_static(name), v);
                    }
                }
            }
        }
        let pending = client
            .request(method, &request.url)
            .headers(headers)
            .body(request.body.clone())
            .timeout(timeout);
        let mut response = match pending.send().await {
            Ok(response) => response,
            Err(error) => return failed(describe(&error, timeout, &request.url)),
        };
        let status = response.status();
        let (retry_after, retry_after_date) = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                retry_after(response.headers())
            }
            _ => (None, None),
        };
        let mut error = None;
        if status.is_redirection() {
            error = Some(unfollowed_redirect(status, &response));
        }
        // Read only the start of the body: enough for the log, never a whole large response.
        let limit = self.config.response_excerpt_bytes;
        let mut excerpt = Vec::new();
        while excerpt.len() < limit {
            match tokio::time::timeout(timeout, response.chunk()).await {
                Ok(Ok(Some(chunk))) => excerpt.extend_from_slice(&chunk),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    error.get_or_insert_with(|| {
                        format!("reading the response failed: {}", e.without_url())
                    });
                    break;
                }
                Err(_) => break,
            }
        }
        if !status.is_success() && error.is_none() {
            error = Some(format!("HTTP {}", status.as_u16()));
        }
        AttemptResult {
            started: start,
            duration: start.elapsed(),
            status: Some(status.as_u16()),
            error: error.map(|e| storable(&e, MAX_ERROR_BYTES)),
            response_excerpt: (!excerpt.is_empty()).then(|| excerpt_text(&excerpt, limit)),
            retry_after,
            retry_after_date,
        }
    }
}

/// Follows a 307 or 308 to the same origin, nothing else (see the module's comment).
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let keeps_method_and_body = matches!(
            attempt.status(),
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
        );
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if keeps_method_and_body && same_origin && attempt.previous().len() <= MAX_REDIRECTS {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// Why a redirect that came back was not followed, and what to do: names the status and the
/// origin it points to, never the path or query (they may hold tokens).
fn unfollowed_redirect(status: StatusCode, response: &reqwest::Response) -> String {
    let code = status.as_u16();
    let target = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|location| response.url().join(location).ok());
    let Some(target) = target else {
        return format!("HTTP {code}: a redirect without a usable Location header, not followed");
    };
    let origin = target.origin().ascii_serialization();
    let fix = "set the webhook's payload_url to the address the receiver redirects to";
    if target.origin() != response.url().origin() {
        format!(
            "HTTP {code}: a redirect to another origin ({origin}), not followed: the request \
             carries the webhook's secret headers and signature; {fix}"
        )
    } else if !matches!(
        status,
        StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
    ) {
        format!(
            "HTTP {code}: a redirect that turns the request into a GET without its body, not \
             followed (only 307 and 308 keep the method and body); {fix}"
        )
    } else {
        format!("HTTP {code}: more than {MAX_REDIRECTS} redirects, not followed; {fix}")
    }
}

/// A receiver's answer as text the database can store, whatever its bytes: invalid UTF-8 and
/// NUL (PostgreSQL's text cannot hold it) become U+FFFD, cut to at most `limit` bytes.
pub fn excerpt_text(bytes: &[u8], limit: usize) -> String {
    storable(
        &String::from_utf8_lossy(&bytes[..bytes.len().min(limit)]),
        limit,
    )
}

/// `text` without NUL, at most `limit` bytes, cut on a character boundary.
pub fn storable(text: &str, limit: usize) -> String {
    let mut text = text.replace('\0', "\u{FFFD}");
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// Retry-After, as a delay when the receiver's own clock gives one (seconds, or a date less its
/// `Date` header), else as the date for the database to compare with its clock.
fn retry_after(headers: &HeaderMap) -> (Option<Duration>, Option<SystemTime>) {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let Some(value) = header(RETRY_AFTER).map(str::trim) else {
        return (None, None);
    };
    if let Ok(seconds) = value.parse::<u64>() {
        return (Some(Duration::from_secs(seconds)), None);
    }
    let Some(when) = httpdate(value) else {
        return (None, None);
    };
    match header(DATE).and_then(httpdate) {
        Some(now) => (
            Some(when.duration_since(now).unwrap_or(Duration::ZERO)),
            None,
        ),
        None => (None, Some(when)),
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

/// Parses an HTTP date (IMF-fixdate, or the obsolete RFC 850 and asctime forms).
fn httpdate(value: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_as_seconds_or_date() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (n, v) in pairs {
                map.insert(*n, HeaderValue::from_str(v).unwrap());
            }
            map
        };
        assert_eq!(
            retry_after(&headers(&[("retry-after", "120")])),
            (Some(Duration::from_secs(120)), None)
        );
        // a date against the receiver's own Date: its clock against its clock
        assert_eq!(
            retry_after(&headers(&[
                ("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("date", "Sun, 06 Nov 1994 08:48:37 GMT")
            ])),
            (Some(Duration::from_secs(60)), None)
        );
        // without a Date, the date goes to the database as it is
        assert_eq!(
            retry_after(&headers(&[(
                "retry-after",
                "Sun, 06 Nov 1994 08:49:37 GMT"
            )])),
            (
                None,
                Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784111777))
            )
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "soon")])),
            (None, None)
        );
    }

    #[test]
    fn any_answer_becomes_storable_text() {
        assert_eq!(
            excerpt_text(b"ok\0\xff\xfeend", 1024),
            "ok\u{FFFD}\u{FFFD}\u{FFFD}end"
        );
        // cut on a character boundary, never inside one
        assert_eq!(excerpt_text("aé".as_bytes(), 2), "a");
        assert_eq!(storable("aé", 2), "a");
        assert_eq!(excerpt_text(&[b'x'; 5000], 1024).len(), 1024);
    }
}
