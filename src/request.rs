//! The webhook's HTTP request: the one type the builder makes, the store freezes (table
//! netbox_outbox.request), the sender sends and the commands show; and how it is built the way
//! NetBox's `send_webhook` does (reference docs 6): the template context, the default body
//! (`json.dumps`), the rendered body, URL and headers, and the `X-Hook-Signature`. Frozen into
//! the delivery row, so every retry sends the same bytes.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha512;

use crate::config::PayloadFormat;
use crate::python::json::dumps;
use crate::rules::Webhook;
use crate::template::{TemplateError, Templates};

/// The request as it will be sent, minus what the HTTP client adds (Host, Content-Length) and
/// the delivery id header, which is added at send time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub url: String,
    /// In the order they are sent; names as written.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub transport: Transport,
}

/// How a webhook's requests travel: timeout and TLS. A delivery keeps them even when its
/// request could not be built, so they are worked out here only, from the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    pub timeout: Duration,
    pub ssl_verification: bool,
    pub ca_file_path: Option<String>,
}

impl Transport {
    /// The webhook's settings; without a webhook (a rule pointing nowhere), the defaults.
    pub fn of(webhook: Option<&Webhook>, default_timeout: Duration) -> Transport {
        Transport {
            timeout: webhook
                .and_then(|w| w.timeout_seconds)
                .filter(|t| *t > 0)
                .map_or(default_timeout, |t| Duration::from_secs(t as u64)),
            // NetBox: a CA file turns verification on, whatever ssl_verification says
            ssl_verification: webhook
                .is_none_or(|w| w.ssl_verification || w.ca_file_path.is_some()),
            ca_file_path: webhook.and_then(|w| w.ca_file_path.clone()),
        }
    }

    /// The timeout as the delivery row stores it.
    pub fn timeout_ms(&self) -> i32 {
        self.timeout.as_millis().min(i32::MAX as u128) as i32
    }
}

impl Request {
    /// The same request without its headers and body, which may be large: enough to record an
    /// outcome.
    pub fn without_payload(&self) -> Request {
        Request {
            method: self.method.clone(),
            url: self.url.clone(),
            headers: Vec::new(),
            body: Vec::new(),
            transport: self.transport.clone(),
        }
    }

    /// The headers as netbox_outbox.request stores them: a JSON array of `[name, value]`.
    pub fn headers_json(&self) -> String {
        serde_json::to_string(&self.headers.iter().map(|(n, v)| [n, v]).collect::<Vec<_>>())
            .expect("headers serialize")
    }
}

/// What an event gives a webhook's templates.
#[derive(Debug, Clone)]
pub struct EventContext {
    /// `created`, `updated` or `deleted`.
    pub event: String,
    /// NetBox's timestamp: UTC isoformat with `+00:00`.
    pub timestamp: String,
    /// `app_label.model`.
    pub object_type: String,
    /// The serialized object, with the rule's `action_data` merged in front.
    pub data: Map<String, Value>,
    /// NetBox's request context, the payload's `request` block: `{id, path, path_info, method,
    /// GET, user}` (not the webhook's own request).
    pub netbox_request: Map<String, Value>,
    pub snapshots: Value,
}

impl EventContext {
    /// The template context, in NetBox's key order (moved, not copied: `data` is the payload's
    /// largest part).
    pub fn into_value(self, format: PayloadFormat) -> Value {
        let mut context = Map::new();
        context.insert("event".into(), Value::String(self.event));
        context.insert("timestamp".into(), Value::String(self.timestamp));
        match format {
            PayloadFormat::Netbox47 => {
                context.insert("object_type".into(), Value::String(self.object_type));
                context.insert("data".into(), Value::Object(self.data));
                context.insert("request".into(), Value::Object(self.netbox_request));
            }
            PayloadFormat::Legacy => {
                let model = self.object_type.split_once('.').map_or("", |(_, m)| m);
                context.insert("model".into(), Value::String(model.to_string()));
                context.insert(
                    "username".into(),
                    self.netbox_request
                        .get("user")
                        .cloned()
                        .unwrap_or(Value::Null),
                );
                context.insert(
                    "request_id".into(),
                    self.netbox_request
                        .get("id")
                        .cloned()
                        .unwrap_or(Value::Null),
                );
                context.insert("data".into(), Value::Object(self.data));
            }
        }
        // NetBox adds snapshots only when truthy (always, for object events)
        if crate::python::value::truthy(&self.snapshots) {
            context.insert("snapshots".into(), self.snapshots);
        }
        Value::Object(context)
    }
}

/// Why a request could not be built: which field of the webhook, and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BuildError {
    pub field: &'static str,
    pub message: String,
}

fn error(field: &'static str, message: impl Into<String>) -> BuildError {
    BuildError {
        field,
        message: message.into(),
    }
}

impl From<(&'static str, TemplateError)> for BuildError {
    fn from((field, e): (&'static str, TemplateError)) -> Self {
        error(field, e.0)
    }
}

/// Renders the webhook's request for one event.
pub fn build(
    webhook: &Webhook,
    context: &Value,
    templates: &Templates,
    default_timeout: Duration,
) -> Result<Request, BuildError> {
    let jinja = crate::template::Context::new(context);
    let mut headers = vec![(
        "Content-Type".to_string(),
        webhook.http_content_type.clone(),
    )];
    if !webhook.additional_headers.is_empty() {
        let rendered = templates
            .render_in(&webhook.additional_headers, &jinja)
            .map_err(|e| BuildError::from(("additional_headers", e)))?;
        for (name, value) in parse_headers(&rendered) {
            set_header(&mut headers, name, value);
        }
    }
    for (name, value) in &headers {
        reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            error(
                "additional_headers",
                format!("{name:?} is not a valid header name"),
            )
        })?;
        reqwest::header::HeaderValue::from_str(value).map_err(|_| {
            error(
                "additional_headers",
                format!(
                    "the value of {name} holds a control character; pass interpolated values \
                     through the header_safe filter"
                ),
            )
        })?;
    }

    let body = if webhook.body_template.is_empty() {
        dumps(context)
    } else {
        templates
            .render_in(&webhook.body_template, &jinja)
            .map_err(|e| BuildError::from(("body_template", e)))?
    };

    let url = templates
        .render_in(&webhook.payload_url, &jinja)
        .map_err(|e| BuildError::from(("payload_url", e)))?;
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| {
        error(
            "payload_url",
            format!("rendered {url:?}, which is not a valid URL ({e})"),
        )
    })?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(error(
            "payload_url",
            format!(
                "rendered {url:?}: unsupported scheme {:?}; use http or https",
                parsed.scheme()
            ),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(error(
            "payload_url",
            format!("rendered {url:?}, which has no host"),
        ));
    }

    if crate::standard_webhooks::is_standard(&webhook.secret) {
        // Signed per attempt when sent (the timestamp is the attempt's); checked here so a
        // malformed key rejects the delivery, visibly, instead of failing every attempt.
        crate::standard_webhooks::Secrets::parse(&webhook.secret)
            .map_err(|e| error("secret", e))?;
    } else if !webhook.secret.is_empty() {
        // Added after the additional headers, so it overrides one given there.
        set_header(
            &mut headers,
            "X-Hook-Signature".into(),
            sign(&webhook.secret, body.as_bytes()),
        );
    }

    let method = webhook.http_method.to_uppercase();
    reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| error("http_method", format!("{method:?} is not an HTTP method")))?;

    Ok(Request {
        method,
        url: parsed.to_string(),
        headers,
        body: body.into_bytes(),
        transport: Transport::of(Some(webhook), default_timeout),
    })
}

/// `X-Hook-Signature`: lower-case hex HMAC-SHA512 of the exact body, keyed with the secret.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha512>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// NetBox's `render_headers`: one header per line, split at the first colon, both sides
/// stripped; lines without a colon are skipped.
fn parse_headers(rendered: &str) -> Vec<(String, String)> {
    python_splitlines(rendered)
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

/// Python's `str.splitlines()`, which also breaks at \v, \f, \x1c-\x1e, \x85, \u2028, \u2029.
fn python_splitlines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.find(|c| {
            matches!(
                c,
                '\n' | '\r'
                    | '\x0b'
                    | '\x0c'
                    | '\x1c'
                    | '\x1d'
                    | '\x1e'
                    | '\u{85}'
                    | '\u{2028}'
                    | '\u{2029}'
            )
        }) {
            Some(i) => {
                let line = &rest[..i];
                let break_len = if rest[i..].starts_with("\r\n") {
                    2
                } else {
                    rest[i..].chars().next().map_or(1, char::len_utf8)
                };
                rest = &rest[i + break_len..];
                Some(line)
            }
            None => {
                let line = rest;
                rest = "";
                Some(line)
            }
        }
    })
}

/// Sets a header as Python's dict update followed by requests' case-insensitive dict would:
/// a later duplicate (in any case) takes the first one's place with its own name and value.
fn set_header(headers: &mut Vec<(String, String)>, name: String, value: String) {
    match headers
        .iter_mut()
        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
    {
        Some(existing) => *existing = (name, value),
        None => headers.push((name, value)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn webhook() -> Webhook {
        Webhook::sample("hook")
    }

    fn context() -> Value {
        json!({"event": "created", "timestamp": "2026-11-24T22:47:51.248053+00:00",
               "object_type": "dcim.site", "data": {"id": 1, "name": "h\u{e9}"}})
    }

    fn build_it(w: &Webhook) -> Result<Request, BuildError> {
        build(
            w,
            &context(),
            &Templates::new(vec![], Default::default()),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn default_body_url_template_and_timeout() {
        let r = build_it(&webhook()).unwrap();
        assert_eq!(r.url, "http://127.0.0.1:9/hook/dcim.site");
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"event": "created", "timestamp": "2026-11-24T22:47:51.248053+00:00", "object_type": "dcim.site", "data": {"id": 1, "name": "h\u00e9"}}"#
        );
        assert_eq!(
            r.headers,
            [("Content-Type".to_string(), "application/json".to_string())]
        );
        assert_eq!(r.transport.timeout, Duration::from_secs(60));
        let mut w = webhook();
        w.timeout_seconds = Some(5);
        assert_eq!(
            build_it(&w).unwrap().transport.timeout,
            Duration::from_secs(5)
        );
    }

    #[test]
    fn headers_follow_netbox_rules() {
        let mut w = webhook();
        w.additional_headers =
            "X-One: 1\nno colon here\nX-Empty:   \n x-one : later \nX-Url: http://a:b\ncontent-type: text/plain".into();
        let r = build_it(&w).unwrap();
        assert_eq!(
            r.headers,
            [
                ("content-type".into(), "text/plain".into()),
                ("x-one".into(), "later".into()),
                ("X-Empty".into(), "".into()),
                ("X-Url".into(), "http://a:b".into()),
            ]
        );
    }

    /// requests' CaseInsensitiveDict: a name given twice in different case keeps the first's
    /// position and takes the last one's spelling and value (NetBox sends `x-dup: second`).
    #[test]
    fn a_header_given_twice_takes_the_last_spelling_in_the_first_place() {
        let mut w = webhook();
        w.additional_headers = "X-Dup: first\nX-Other: o\nx-dup: second".into();
        let r = build_it(&w).unwrap();
        assert_eq!(
            r.headers,
            [
                ("Content-Type".into(), "application/json".into()),
                ("x-dup".into(), "second".into()),
                ("X-Other".into(), "o".into()),
            ]
        );
    }

    #[test]
    fn the_signature_covers_the_exact_body() {
        let mut w = webhook();
        w.secret = "s3cret".into();
        w.additional_headers = "X-Hook-Signature: forged".into();
        let r = build_it(&w).unwrap();
        let (name, signature) = r.headers.last().unwrap();
        assert_eq!(name, "X-Hook-Signature");
        assert_eq!(signature, &sign("s3cret", &r.body));
        assert_eq!(signature.len(), 128);
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"k",b"body",hashlib.sha512).hexdigest())'
        assert_eq!(
            sign("k", b"body"),
            "4d948b89a71133e81eb5922b7a2eff649adc1a068cd29c8dd9650946f0e79977511f52e06933619416f70be91b7568c258a037a5d22cd64b00cbc9cab1f981a6"
        );
    }

    #[test]
    fn bad_templates_and_urls_say_which_field() {
        let mut w = webhook();
        w.body_template = "{% if %}".into();
        assert_eq!(build_it(&w).unwrap_err().field, "body_template");

        let mut w = webhook();
        w.payload_url = "ftp://{{ object_type }}/x".into();
        let e = build_it(&w).unwrap_err();
        assert_eq!(e.field, "payload_url");
        assert!(e.message.contains("unsupported scheme"), "{e}");

        let mut w = webhook();
        w.payload_url = "{{ nothing }}".into();
        assert!(
            build_it(&w)
                .unwrap_err()
                .message
                .contains("not a valid URL")
        );

        let mut w = webhook();
        w.additional_headers = "X-Bad: {{ data.name }}\u{7}".into();
        let e = build_it(&w).unwrap_err();
        assert!(e.message.contains("header_safe"), "{e}");

        let mut w = webhook();
        w.additional_headers = "Bad Name: x".into();
        assert!(
            build_it(&w)
                .unwrap_err()
                .message
                .contains("not a valid header name")
        );
    }

    #[test]
    fn a_ca_file_turns_verification_on() {
        let mut w = webhook();
        w.ssl_verification = false;
        assert!(!build_it(&w).unwrap().transport.ssl_verification);
        w.ca_file_path = Some("/etc/ca.pem".into());
        assert!(build_it(&w).unwrap().transport.ssl_verification);
    }

    #[test]
    fn legacy_format_keys() {
        let ctx = EventContext {
            event: "updated".into(),
            timestamp: "t".into(),
            object_type: "dcim.device".into(),
            data: Map::new(),
            netbox_request: json!({"id": "r", "user": "alice"})
                .as_object()
                .unwrap()
                .clone(),
            snapshots: json!({"prechange": null, "postchange": {}}),
        };
        let keys: Vec<String> = ctx
            .clone()
            .into_value(PayloadFormat::Legacy)
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            keys,
            [
                "event",
                "timestamp",
                "model",
                "username",
                "request_id",
                "data",
                "snapshots"
            ]
        );
        let keys: Vec<String> = ctx
            .into_value(PayloadFormat::Netbox47)
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            keys,
            [
                "event",
                "timestamp",
                "object_type",
                "data",
                "request",
                "snapshots"
            ]
        );
    }
}
