//! Configuration: one TOML file, overridden by environment variables, parsed once into typed
//! values and checked before anything starts.
//!
//! Every key is optional; `netbox-outbox config` prints the defaults as a commented file (see
//! [`DEFAULT_TOML`]). An environment variable `NETBOX_OUTBOX_<SECTION>__<KEY>` overrides
//! `<key>` in `[<section>]` (for example `NETBOX_OUTBOX_DELIVERY__CONCURRENCY=64`), and
//! `DATABASE_URL` overrides `database_url`. Unknown keys are errors, so a typo never passes
//! silently.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::db::DatabaseUrl;

/// The documented defaults, as a config file an operator can start from.
pub const DEFAULT_TOML: &str = include_str!("../examples/netbox-outbox.toml");

/// A configuration error: where it was set (file and line, or environment variable), which key,
/// what is wrong, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {cause}{}", path.display(), read_hint(path, cause))]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{key}: {message}{}", origin.as_ref().map(|o| format!(" (set by {o})")).unwrap_or_default())]
    Invalid {
        key: String,
        message: String,
        /// Where the value came from, once known.
        origin: Option<String>,
    },
}

/// What to do about a config file that cannot be read.
fn read_hint(path: &Path, cause: &std::io::Error) -> String {
    match cause.kind() {
        std::io::ErrorKind::NotFound => format!(
            "; write one with every default: netbox-outbox config > {}",
            path.display()
        ),
        std::io::ErrorKind::PermissionDenied => "; the user running netbox-outbox may not read \
            it: under systemd, pass it with LoadCredential= as examples/netbox-outbox.service \
            does (docs/install.md, step 7)"
            .to_string(),
        _ => String::new(),
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
        origin: None,
    }
}

/// Where each setting came from: the file (with the line it is on) or an environment variable.
struct Origins<'a> {
    file: &'a str,
    text: &'a str,
    /// `section.key` (or `key` at the top level) → the environment variable that set it.
    environment: BTreeMap<String, String>,
}

impl Origins<'_> {
    /// `NETBOX_OUTBOX_DELIVERY__CONCURRENCY`, or `file line 12`, or the file alone when the
    /// key is not on a line of its own (an inline table).
    fn of(&self, key: &str) -> String {
        // `delivery.retry_schedule[2]` was set as `delivery.retry_schedule`
        let key = key.split('[').next().unwrap_or(key);
        let mut path = key.to_string();
        loop {
            if let Some(variable) = self.environment.get(&path) {
                return format!("environment variable {variable}");
            }
            match path.rsplit_once('.') {
                Some((parent, _)) => path = parent.to_string(),
                None => break,
            }
        }
        match line_of(self.text, key) {
            Some(line) => format!("{} line {line}", self.file),
            None => self.file.to_string(),
        }
    }

    fn locate(&self, error: ConfigError) -> ConfigError {
        match error {
            ConfigError::Invalid {
                key,
                message,
                origin: None,
            } => ConfigError::Invalid {
                origin: Some(self.of(&key)),
                key,
                message,
            },
            other => other,
        }
    }
}

/// The line (from 1) on which `section.key` is set in a TOML text: the first `key =` after the
/// `[section]` header. Enough for messages; the parser has already accepted the text.
fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = match dotted.rsplit_once('.') {
        Some((section, key)) => (section, key),
        None => ("", dotted),
    };
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = header
                .split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            continue;
        }
        if current != section {
            continue;
        }
        let name = line.split('=').next().unwrap_or_default().trim();
        if line.contains('=') && name.trim_matches('"') == key {
            return Some(i + 1);
        }
    }
    None
}

/// Rewrites serde's wording for an operator: Rust type names become what to write, and an
/// unknown choice gets its nearest valid one.
fn type_message(message: &str) -> String {
    let mut out = message.to_string();
    for (rust, plain) in [
        ("expected usize", "expected a whole number, such as 10"),
        ("expected u32", "expected a whole number, such as 10"),
        ("expected u64", "expected a whole number, such as 10"),
        ("expected f64", "expected a number, such as 0.5"),
        ("expected a boolean", "expected true or false"),
        ("expected a string", "expected a quoted string"),
        (
            "expected a sequence",
            "expected a list, such as [\"5s\", \"1m\"]",
        ),
    ] {
        out = out.replace(rust, plain);
    }
    if let Some(rest) = message.strip_prefix("unknown variant `")
        && let Some((given, choices)) = rest.split_once('`')
    {
        let choices: Vec<&str> = choices.split('`').skip(1).step_by(2).collect();
        if let Some(near) = nearest(given, &choices) {
            out.push_str(&format!("; did you mean `{near}`?"));
        }
    }
    out
}

/// The valid choice closest to what was written, if it is close enough to be a typo.
fn nearest<'a>(given: &str, choices: &[&'a str]) -> Option<&'a str> {
    choices
        .iter()
        .map(|c| {
            (
                strsim::levenshtein(&c.to_lowercase(), &given.to_lowercase()),
                *c,
            )
        })
        .min()
        .filter(|(d, c)| *d <= 3.max(c.len() / 3))
        .map(|(_, c)| c)
}

/// The levels `[log] level` accepts alone; a filter such as `netbox_outbox=debug` may also
/// name a target.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks `[log] level` as `run` will use it: a bare word that is no level would be read by
/// tracing as a target name and silence every line, so it is refused with the nearest level.
fn log_level(text: &str) -> Result<String, ConfigError> {
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level);
        if !LOG_LEVELS.contains(&level.to_lowercase().as_str()) {
            let near = nearest(level, &LOG_LEVELS)
                .map(|n| format!("did you mean `{n}`? "))
                .unwrap_or_default();
            return Err(invalid(
                "log.level",
                format!(
                    "{level:?} is not a level; {near}expected one of {} (or a filter such as \
                     \"info,netbox_outbox=debug\")",
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
    }
    if tracing_subscriber::EnvFilter::try_new(text).is_err() {
        return Err(invalid(
            "log.level",
            format!("{text:?} is not a level or a filter such as \"info,netbox_outbox=debug\""),
        ));
    }
    Ok(text.to_string())
}

/// The sidecar's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The connection string; its `Debug` hides the password.
    pub database_url: Option<DatabaseUrl>,
    pub rules: RulesConfig,
    pub delivery: DeliveryConfig,
    pub assembly: AssemblyConfig,
    pub netbox: NetboxConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct RulesConfig {
    /// Also deliver NetBox's own `webhook` rules (NetBox delivers those itself too).
    pub deliver_netbox_webhook_rules: bool,
    /// How often rules, webhooks and custom fields are re-read at most.
    pub refresh_interval: Duration,
}

/// The payload layout a webhook's receiver expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadFormat {
    /// NetBox 4.7: event, timestamp, object_type, data, request, snapshots.
    #[serde(rename = "netbox-4.7")]
    Netbox47,
    /// Older NetBox: event, timestamp, model, username, request_id, data, snapshots.
    Legacy,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub concurrency: usize,
    pub per_webhook_concurrency: usize,
    pub claim_batch: usize,
    /// The most deliveries of one (webhook, object) queue claimed together and sent one after
    /// another, each once the one before it was delivered (1: only queue heads).
    pub run_length: usize,
    pub poll_interval: Duration,
    pub default_timeout: Duration,
    pub lease_margin: Duration,
    pub retry_schedule: Vec<Duration>,
    pub retry_jitter: f64,
    pub max_retry_after: Duration,
    pub pause_after_failures: u32,
    pub pause_initial: Duration,
    pub pause_max: Duration,
    pub response_excerpt_bytes: usize,
    pub user_agent: String,
    pub delivery_id_header: String,
    pub payload_format: PayloadFormat,
    /// Per-webhook payload format, by webhook name.
    pub payload_format_by_webhook: BTreeMap<String, PayloadFormat>,
    pub proxy: Option<String>,
    /// What other 4xx answers do (see [`ClientErrors`]), and per webhook name.
    pub client_errors: ClientErrors,
    pub client_errors_by_webhook: BTreeMap<String, ClientErrors>,
    /// The retries of [`ClientErrors::Short`].
    pub client_error_schedule: Vec<Duration>,
    /// Requests per second, at most, per webhook name (per sidecar).
    pub rate_limit_by_webhook: BTreeMap<String, f64>,
}

impl DeliveryConfig {
    /// What other 4xx answers of this webhook do.
    pub fn client_errors_of(&self, webhook: &str) -> ClientErrors {
        self.client_errors_by_webhook
            .get(webhook)
            .copied()
            .unwrap_or(self.client_errors)
    }
}

/// What a 4xx answer other than 408, 410, 425 and 429 does to a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientErrors {
    /// Retried on `client_error_schedule`, then dead (the default).
    Short,
    /// Retried on `retry_schedule`, like a 5xx.
    Schedule,
}

#[derive(Debug, Clone)]
pub struct AssemblyConfig {
    pub poll_interval: Duration,
    pub chunk_size: usize,
    /// About how many captured changes one batch reads (whole transactions: one larger than
    /// this is read whole). Bounds the time a batch holds its snapshot and its memory, so the
    /// first webhooks of a long backlog go out within seconds.
    pub batch_changes: usize,
    /// LISTEN for the capture's notifications; off behind PgBouncer in transaction mode.
    pub listen: bool,
    /// How often events deferred for an unreadable model are tried again.
    pub deferred_retry_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct NetboxConfig {
    /// The NetBox release to render as, instead of the one its migrations say (`None`: detect).
    pub version: Option<String>,
    /// NetBox's BASE_PATH, prefixed to `url` and `display_url`.
    pub base_path: String,
    /// Environment variables templates may read with the `env` filter (JINJA_ENVIRONMENT_PARAMS).
    pub template_environment: Vec<String>,
    /// How much work one template may do (minijinja fuel: roughly one unit per instruction).
    pub template_fuel: u64,
    /// How long the sidecar waits for one request's templates before rejecting the delivery.
    pub template_timeout: Duration,
    /// The most bytes one template may render.
    pub template_max_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
    /// /readyz fails when the oldest unread change is older than this (changes are not read).
    pub stall_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

// ---- the file's shape ----------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    database_url: Option<String>,
    #[serde(default)]
    rules: RawRules,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    assembly: RawAssembly,
    #[serde(default)]
    netbox: RawNetbox,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    shutdown: RawShutdown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    deliver_netbox_webhook_rules: Option<bool>,
    refresh_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    concurrency: Option<usize>,
    per_webhook_concurrency: Option<usize>,
    claim_batch: Option<usize>,
    run_length: Option<usize>,
    poll_interval: Option<String>,
    default_timeout: Option<String>,
    lease_margin: Option<String>,
    retry_schedule: Option<Vec<String>>,
    retry_jitter: Option<f64>,
    max_retry_after: Option<String>,
    pause_after_failures: Option<u32>,
    pause_initial: Option<String>,
    pause_max: Option<String>,
    response_excerpt_bytes: Option<usize>,
    user_agent: Option<String>,
    delivery_id_header: Option<String>,
    payload_format: Option<PayloadFormat>,
    payload_format_by_webhook: Option<BTreeMap<String, PayloadFormat>>,
    proxy: Option<String>,
    client_errors: Option<ClientErrors>,
    client_errors_by_webhook: Option<BTreeMap<String, ClientErrors>>,
    client_error_schedule: Option<Vec<String>>,
    rate_limit_by_webhook: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAssembly {
    poll_interval: Option<String>,
    chunk_size: Option<usize>,
    batch_changes: Option<usize>,
    listen: Option<bool>,
    deferred_retry_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetbox {
    version: Option<String>,
    base_path: Option<String>,
    template_environment: Option<Vec<String>>,
    template_fuel: Option<usize>,
    template_timeout: Option<String>,
    template_max_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
    stall_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    grace_period: Option<String>,
}

/// The retry schedule of the Standard Webhooks specification: about three days in all.
pub const DEFAULT_RETRY_SCHEDULE: [&str; 9] =
    ["5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h"];

impl Config {
    /// Reads the file (if given), applies environment overrides from `vars`, and validates.
    pub fn load(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (text, origin) = match path {
            Some(path) => (
                std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
                    path: path.to_path_buf(),
                    cause,
                })?,
                path.display().to_string(),
            ),
            None => (String::new(), "configuration".to_string()),
        };
        Self::from_toml(&text, &origin, vars)
    }

    /// Parses a TOML document plus environment overrides.
    pub fn from_toml(
        text: &str,
        origin: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: origin.to_string(),
                    message: e.to_string(),
                })?;
        let origins = Origins {
            file: origin,
            text,
            environment: apply_environment(&mut table, vars)?,
        };
        check_keys(&table, &origins)?;
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                origins.locate(invalid(
                    &key,
                    format!(
                        "{}; `netbox-outbox config` prints every key with its default",
                        type_message(e.inner().message())
                    ),
                ))
            })?;
        Self::validate(raw).map_err(|e| origins.locate(e))
    }

    fn validate(raw: RawConfig) -> Result<Self, ConfigError> {
        let d = raw.delivery;
        let retry_schedule = match d.retry_schedule {
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, s)| duration(&format!("delivery.retry_schedule[{i}]"), s))
                .collect::<Result<Vec<_>, _>>()?,
            None => DEFAULT_RETRY_SCHEDULE
                .iter()
                .map(|s| duration("delivery.retry_schedule", s))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let client_error_schedule = match &d.client_error_schedule {
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, s)| duration(&format!("delivery.client_error_schedule[{i}]"), s))
                .collect::<Result<Vec<_>, _>>()?,
            None => ["10s", "1m", "10m"]
                .iter()
                .map(|s| duration("delivery.client_error_schedule", s))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let rate_limit_by_webhook = d.rate_limit_by_webhook.clone().unwrap_or_default();
        for (webhook, rate) in &rate_limit_by_webhook {
            if !(rate.is_finite() && *rate > 0.0) {
                return Err(invalid(
                    "delivery.rate_limit_by_webhook",
                    format!(
                        "{webhook:?} = {rate}: give requests per second above 0 (0.5 is one \
                         every two seconds), or remove the entry for no limit"
                    ),
                ));
            }
        }
        let retry_jitter = d.retry_jitter.unwrap_or(0.2);
        if !(0.0..=1.0).contains(&retry_jitter) {
            return Err(invalid(
                "delivery.retry_jitter",
                format!(
                    "{retry_jitter} is not a fraction between 0 and 1 (0 = exact schedule, 1 = full jitter)"
                ),
            ));
        }
        let concurrency = positive("delivery.concurrency", d.concurrency.unwrap_or(256))?;
        let per_webhook_concurrency = positive(
            "delivery.per_webhook_concurrency",
            d.per_webhook_concurrency.unwrap_or(concurrency.min(64)),
        )?;
        if per_webhook_concurrency > concurrency {
            return Err(invalid(
                "delivery.per_webhook_concurrency",
                format!(
                    "{per_webhook_concurrency} exceeds delivery.concurrency ({concurrency}); lower it or raise delivery.concurrency"
                ),
            ));
        }
        let default_timeout = duration_or("delivery.default_timeout", d.default_timeout, "60s")?;
        if default_timeout.is_zero() || default_timeout > Duration::from_secs(3600) {
            return Err(invalid(
                "delivery.default_timeout",
                "must be between 1s and 1h (NetBox's WEBHOOK_DEFAULT_TIMEOUT, 60s by default)",
            ));
        }
        let pause_initial = duration_or("delivery.pause_initial", d.pause_initial, "30s")?;
        let pause_max = duration_or("delivery.pause_max", d.pause_max, "1h")?;
        if pause_max < pause_initial {
            return Err(invalid(
                "delivery.pause_max",
                "must not be shorter than delivery.pause_initial",
            ));
        }
        let delivery_id_header = d
            .delivery_id_header
            .unwrap_or_else(|| "X-Netbox-Outbox-Delivery".to_string());
        if reqwest::header::HeaderName::from_bytes(delivery_id_header.as_bytes()).is_err() {
            return Err(invalid(
                "delivery.delivery_id_header",
                format!("{delivery_id_header:?} is not a valid HTTP header name"),
            ));
        }
        // Checked here rather than at the first send, so `check` and the start refuse them.
        let proxy = d.proxy.filter(|p| !p.is_empty());
        if let Some(proxy) = &proxy
            && let Err(e) = reqwest::Proxy::all(proxy.as_str())
        {
            return Err(invalid(
                "delivery.proxy",
                format!(
                    "{proxy:?} is not a proxy URL ({e}); write one such as http://proxy.example.net:3128, as NetBox's HTTP_PROXIES"
                ),
            ));
        }
        let user_agent = d
            .user_agent
            .unwrap_or_else(|| format!("netbox-outbox/{}", env!("CARGO_PKG_VERSION")));
        if reqwest::header::HeaderValue::from_str(&user_agent).is_err() {
            return Err(invalid(
                "delivery.user_agent",
                format!(
                    "{user_agent:?} cannot be an HTTP header value (control characters or non-ASCII)"
                ),
            ));
        }
        let metrics_listen = match raw.metrics.listen.as_deref() {
            None | Some("") => None,
            Some(addr) => Some(addr.parse().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("{addr:?} is not an address such as 127.0.0.1:9187"),
                )
            })?),
        };
        let version = match raw.netbox.version.as_deref() {
            None | Some("") => None,
            Some(v) => {
                crate::netbox::version::validate(v).map_err(|e| invalid("netbox.version", e))?;
                Some(v.to_string())
            }
        };
        let base_path = raw.netbox.base_path.unwrap_or_default();
        let base_path = base_path.trim_matches('/').to_string();
        Ok(Config {
            database_url: raw.database_url.map(DatabaseUrl::new),
            rules: RulesConfig {
                deliver_netbox_webhook_rules: raw
                    .rules
                    .deliver_netbox_webhook_rules
                    .unwrap_or(false),
                refresh_interval: duration_or(
                    "rules.refresh_interval",
                    raw.rules.refresh_interval,
                    "1s",
                )?,
            },
            delivery: DeliveryConfig {
                concurrency,
                per_webhook_concurrency,
                claim_batch: positive("delivery.claim_batch", d.claim_batch.unwrap_or(500))?,
                run_length: at_most(
                    "delivery.run_length",
                    positive("delivery.run_length", d.run_length.unwrap_or(32))?,
                    1000,
                )?,
                poll_interval: nonzero(
                    "delivery.poll_interval",
                    duration_or("delivery.poll_interval", d.poll_interval, "1s")?,
                )?,
                default_timeout,
                lease_margin: duration_or("delivery.lease_margin", d.lease_margin, "30s")?,
                retry_schedule,
                retry_jitter,
                max_retry_after: duration_or("delivery.max_retry_after", d.max_retry_after, "24h")?,
                // By default as many as may be in flight, so that pausing (which keeps no more requests
                // in flight than a webhook may still fail) never slows a healthy webhook.
                pause_after_failures: d
                    .pause_after_failures
                    .unwrap_or(u32::try_from(per_webhook_concurrency).unwrap_or(u32::MAX)),
                pause_initial,
                pause_max,
                response_excerpt_bytes: d.response_excerpt_bytes.unwrap_or(1024),
                user_agent,
                delivery_id_header,
                payload_format: d.payload_format.unwrap_or(PayloadFormat::Netbox47),
                payload_format_by_webhook: d.payload_format_by_webhook.unwrap_or_default(),
                proxy,
                client_errors: d.client_errors.unwrap_or(ClientErrors::Short),
                client_errors_by_webhook: d.client_errors_by_webhook.unwrap_or_default(),
                client_error_schedule,
                rate_limit_by_webhook,
            },
            assembly: AssemblyConfig {
                poll_interval: nonzero(
                    "assembly.poll_interval",
                    duration_or("assembly.poll_interval", raw.assembly.poll_interval, "1s")?,
                )?,
                chunk_size: positive(
                    "assembly.chunk_size",
                    raw.assembly.chunk_size.unwrap_or(500),
                )?,
                batch_changes: positive(
                    "assembly.batch_changes",
                    raw.assembly.batch_changes.unwrap_or(1_000),
                )?,
                listen: raw.assembly.listen.unwrap_or(true),
                deferred_retry_interval: nonzero(
                    "assembly.deferred_retry_interval",
                    duration_or(
                        "assembly.deferred_retry_interval",
                        raw.assembly.deferred_retry_interval,
                        "30s",
                    )?,
                )?,
            },
            netbox: NetboxConfig {
                version,
                base_path,
                template_environment: raw.netbox.template_environment.unwrap_or_default(),
                template_fuel: positive(
                    "netbox.template_fuel",
                    raw.netbox.template_fuel.unwrap_or(1_000_000),
                )? as u64,
                template_timeout: nonzero(
                    "netbox.template_timeout",
                    duration_or("netbox.template_timeout", raw.netbox.template_timeout, "2s")?,
                )?,
                template_max_bytes: positive(
                    "netbox.template_max_bytes",
                    raw.netbox.template_max_bytes.unwrap_or(1 << 20),
                )?,
            },
            metrics: MetricsConfig {
                listen: metrics_listen,
                stall_after: duration_or("metrics.stall_after", raw.metrics.stall_after, "2m")?,
            },
            log: LogConfig {
                format: raw.log.format.unwrap_or(LogFormat::Text),
                level: log_level(raw.log.level.as_deref().unwrap_or("info"))?,
            },
            shutdown_grace: duration_or("shutdown.grace_period", raw.shutdown.grace_period, "30s")?,
        })
    }

    /// The default configuration (no file, no environment).
    pub fn defaults() -> Self {
        Self::from_toml("", "defaults", std::iter::empty()).expect("the defaults are valid")
    }
}

fn positive(key: &str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be at least 1"))
    } else {
        Ok(value)
    }
}

/// A bound that keeps memory in check: say what the largest accepted value is.
fn at_most(key: &str, value: usize, max: usize) -> Result<usize, ConfigError> {
    if value > max {
        Err(invalid(key, format!("must be at most {max}")))
    } else {
        Ok(value)
    }
}

/// A poll interval of zero would spin a core on the database; say so instead.
fn nonzero(key: &str, value: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        Err(invalid(
            key,
            "must be more than zero (for example 100ms, or 1s, the default)",
        ))
    } else {
        Ok(value)
    }
}

fn duration_or(key: &str, value: Option<String>, default: &str) -> Result<Duration, ConfigError> {
    duration(key, value.as_deref().unwrap_or(default))
}

/// Parses durations such as `250ms`, `5s`, `2m`, `1h`, `3d`, or `1h30m` (humantime's syntax).
pub fn duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            key,
            format!(
                "{text:?} is not a duration ({e}); write a number and a unit, such as 500ms, 30s, \
                 5m, 2h or 1d"
            ),
        )
    })
}

/// Every key, by section ("" for the top level): what an unknown key is compared with. The
/// `Raw*` structs reject unknown keys too; this list only makes the message name the valid ones
/// (a unit test keeps the two in step).
const KEYS: [(&str, &[&str]); 11] = [
    (
        "",
        &[
            "database_url",
            "rules",
            "delivery",
            "assembly",
            "netbox",
            "metrics",
            "log",
            "shutdown",
        ],
    ),
    (
        "rules",
        &["deliver_netbox_webhook_rules", "refresh_interval"],
    ),
    (
        "delivery",
        &[
            "concurrency",
            "per_webhook_concurrency",
            "claim_batch",
            "run_length",
            "poll_interval",
            "default_timeout",
            "lease_margin",
            "retry_schedule",
            "retry_jitter",
            "max_retry_after",
            "pause_after_failures",
            "pause_initial",
            "pause_max",
            "response_excerpt_bytes",
            "user_agent",
            "delivery_id_header",
            "payload_format",
            "payload_format_by_webhook",
            "proxy",
            "client_errors",
            "client_errors_by_webhook",
            "client_error_schedule",
            "rate_limit_by_webhook",
        ],
    ),
    (
        "assembly",
        &[
            "poll_interval",
            "chunk_size",
            "batch_changes",
            "listen",
            "deferred_retry_interval",
        ],
    ),
    (
        "netbox",
        &[
            "version",
            "base_path",
            "template_environment",
            "template_fuel",
            "template_timeout",
            "template_max_bytes",
        ],
    ),
    ("metrics", &["listen", "stall_after"]),
    ("log", &["format", "level"]),
    ("shutdown", &["grace_period"]),
    // a table of webhook names: any key is valid
    ("delivery.payload_format_by_webhook", &[]),
    ("delivery.client_errors_by_webhook", &[]),
    ("delivery.rate_limit_by_webhook", &[]),
];

/// Settings that were removed, by section and key: what replaced each, for the error.
const REMOVED: [(&str, &str, &str); 1] = [(
    "delivery",
    "follow_redirects",
    "it was removed: a 307 or 308 redirect to the same origin is always followed (it keeps \
     the method and body), and no other redirect is (a 301/302/303 would turn the webhook \
     into a GET without its body, and another origin would receive the secret headers and \
     signature); such a redirect fails the attempt and says where it points. Delete the key, \
     and set the webhook's payload_url to where the receiver redirects",
)];

/// Rejects a key that is not a setting, naming where it was set, the closest valid one and all
/// of them, or what replaced a removed one.
fn check_keys(table: &toml::Table, origins: &Origins<'_>) -> Result<(), ConfigError> {
    fn valid(section: &str) -> Option<&'static [&'static str]> {
        KEYS.iter().find(|(s, _)| *s == section).map(|(_, k)| *k)
    }
    fn walk(section: &str, table: &toml::Table, origins: &Origins<'_>) -> Result<(), ConfigError> {
        let Some(keys) = valid(section) else {
            return Ok(());
        };
        if keys.is_empty() {
            return Ok(());
        }
        for (key, value) in table {
            let path = if section.is_empty() {
                key.clone()
            } else {
                format!("{section}.{key}")
            };
            if let Some((_, _, replaced)) =
                REMOVED.iter().find(|(s, k, _)| *s == section && k == key)
            {
                return Err(ConfigError::Parse {
                    origin: origins.of(&path),
                    message: format!("`{key}` in [{section}]: {replaced}"),
                });
            }
            if !keys.contains(&key.as_str()) {
                let place = if section.is_empty() {
                    "at the top level".to_string()
                } else {
                    format!("in [{section}]")
                };
                let closest = keys
                    .iter()
                    .map(|k| (strsim::levenshtein(k, key), *k))
                    .min()
                    .filter(|(d, _)| *d <= 3)
                    .map(|(_, k)| format!("did you mean `{k}`? "))
                    .unwrap_or_default();
                return Err(ConfigError::Parse {
                    origin: origins.of(&path),
                    message: format!(
                        "unknown key `{key}` {place}; {closest}valid keys: {}; `netbox-outbox config` \
                         prints every key with its default",
                        keys.join(", ")
                    ),
                });
            }
            if let toml::Value::Table(inner) = value {
                walk(&path, inner, origins)?;
            }
        }
        Ok(())
    }
    walk("", table, origins)
}

/// Applies `NETBOX_OUTBOX_<SECTION>__<KEY>` and `DATABASE_URL` overrides to the parsed file.
/// Returns which variable set which `section.key`, for messages.
fn apply_environment(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut origins = BTreeMap::new();
    // DATABASE_URL and NETBOX_OUTBOX_DATABASE_URL both name the database; when both are set
    // and differ, which one wins would depend on the environment's order: refuse instead.
    let vars: Vec<(String, String)> = vars.into_iter().collect();
    let plain = vars.iter().find(|(n, _)| n == "DATABASE_URL");
    let prefixed = vars.iter().find(|(n, _)| n == "NETBOX_OUTBOX_DATABASE_URL");
    if let (Some((_, a)), Some((_, b))) = (plain, prefixed)
        && a != b
    {
        return Err(invalid(
            "database_url",
            "DATABASE_URL and NETBOX_OUTBOX_DATABASE_URL are both set, to different databases; \
             set only one",
        ));
    }
    for (name, value) in vars {
        if name == "DATABASE_URL" {
            table.insert("database_url".into(), toml::Value::String(value));
            origins.insert("database_url".to_string(), name);
            continue;
        }
        let Some(path) = name.strip_prefix("NETBOX_OUTBOX_") else {
            continue;
        };
        if path == "CONFIG" {
            continue;
        }
        let parts: Vec<String> = path.split("__").map(str::to_lowercase).collect();
        let parsed = parse_env_value(&value);
        let mut target = &mut *table;
        for section in &parts[..parts.len() - 1] {
            let entry = target
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            target = entry.as_table_mut().ok_or_else(|| {
                invalid(
                    &name,
                    format!("{section} is not a section of the configuration"),
                )
            })?;
        }
        target.insert(parts[parts.len() - 1].clone(), parsed);
        origins.insert(parts.join("."), name);
    }
    Ok(origins)
}

/// An environment value as TOML: numbers, booleans and arrays as such, anything else a string.
fn parse_env_value(value: &str) -> toml::Value {
    match format!("v = {value}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(value.into())),
        Err(_) => toml::Value::String(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_valid_and_documented() {
        let config = Config::defaults();
        assert_eq!(config.delivery.default_timeout, Duration::from_secs(60));
        assert_eq!(config.delivery.retry_schedule.len(), 9);
        let span: Duration = config.delivery.retry_schedule.iter().sum();
        assert!(span > Duration::from_secs(3 * 86400) && span < Duration::from_secs(4 * 86400));
        // the shipped example parses and says the same as the defaults
        let example = load(DEFAULT_TOML, &[]).unwrap();
        assert_eq!(example.delivery.concurrency, config.delivery.concurrency);
        assert_eq!(
            example.delivery.pause_after_failures,
            config.delivery.pause_after_failures
        );
    }

    /// Pausing keeps no more requests in flight than a webhook may still fail, so its default
    /// follows the per-webhook concurrency: a healthy webhook is never slowed by it.
    #[test]
    fn the_pause_threshold_follows_the_per_webhook_concurrency() {
        assert_eq!(Config::defaults().delivery.pause_after_failures, 64);
        let config = load("[delivery]\nconcurrency = 16\n", &[]).unwrap();
        assert_eq!(config.delivery.per_webhook_concurrency, 16);
        assert_eq!(config.delivery.pause_after_failures, 16);
        let config = load("[delivery]\npause_after_failures = 3\n", &[]).unwrap();
        assert_eq!(config.delivery.pause_after_failures, 3);
    }

    /// A run holds its requests in memory: between one delivery per object and a thousand.
    #[test]
    fn the_run_length_is_bounded() {
        assert_eq!(Config::defaults().delivery.run_length, 32);
        assert_eq!(
            load("[delivery]\nrun_length = 1\n", &[])
                .unwrap()
                .delivery
                .run_length,
            1
        );
        for (value, says) in [("0", "at least 1"), ("1001", "at most 1000")] {
            let error = load(&format!("[delivery]\nrun_length = {value}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("delivery.run_length") && error.contains(says),
                "{error}"
            );
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = load(
            "[delivery]\nconcurrency = 10\n",
            &[
                ("NETBOX_OUTBOX_DELIVERY__CONCURRENCY", "20"),
                ("NETBOX_OUTBOX_DELIVERY__RETRY_SCHEDULE", "[\"1s\", \"2s\"]"),
                ("NETBOX_OUTBOX_LOG__FORMAT", "json"),
                ("DATABASE_URL", "postgres://x@y/z"),
                ("UNRELATED", "1"),
            ],
        )
        .unwrap();
        assert_eq!(config.delivery.concurrency, 20);
        assert_eq!(
            config.delivery.retry_schedule,
            [Duration::from_secs(1), Duration::from_secs(2)]
        );
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(
            config.database_url.as_ref().map(DatabaseUrl::expose),
            Some("postgres://x@y/z")
        );
    }

    /// The configuration is printed in debug output and errors: never with the password.
    #[test]
    fn debug_output_hides_the_database_password() {
        for url in [
            "postgres://alice:Pa55-w0rd@db:5432/netbox?sslmode=require",
            "host=db user=alice password='Pa55-w0rd' dbname=netbox",
        ] {
            let config = load("", &[("DATABASE_URL", url)]).unwrap();
            let debug = format!("{config:?}");
            assert!(!debug.contains("Pa55-w0rd"), "{debug}");
            assert!(debug.contains("alice") && debug.contains("db"), "{debug}");
        }
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let unknown = load("[delivery]\nconcurency = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            unknown.contains("unknown key `concurency` in [delivery]; did you mean `concurrency`?"),
            "{unknown}"
        );
        assert!(unknown.contains("netbox-outbox config"), "{unknown}");

        let bad = load("[delivery]\npoll_interval = \"soon\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            bad.starts_with("delivery.poll_interval: \"soon\" is not a duration"),
            "{bad}"
        );

        let conflict = load(
            "[delivery]\nconcurrency = 4\nper_webhook_concurrency = 8\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            conflict.contains("exceeds delivery.concurrency"),
            "{conflict}"
        );

        let jitter = load("[delivery]\nretry_jitter = 2.0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(jitter.starts_with("delivery.retry_jitter"), "{jitter}");

        let syntax = load("[delivery\n", &[]).unwrap_err().to_string();
        assert!(syntax.starts_with("test.toml:"), "{syntax}");

        let section = load("", &[("NETBOX_OUTBOX_NOPE__X", "1")])
            .unwrap_err()
            .to_string();
        assert!(
            section.contains("unknown key `nope` at the top level"),
            "{section}"
        );
    }

    /// Each error names where the value came from (file line or environment variable), the key,
    /// what was expected, and a near match.
    #[test]
    fn errors_name_their_source_key_expectation_and_near_match() {
        let env_typo = load(
            "[delivery]\nconcurrency = 10\n",
            &[("NETBOX_OUTBOX_DELIVERY__CONCURENCY", "10")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            env_typo.starts_with("environment variable NETBOX_OUTBOX_DELIVERY__CONCURENCY: unknown key `concurency` in [delivery]; did you mean `concurrency`?"),
            "{env_typo}"
        );
        let file_typo = load("# a comment\n[delivery]\nconcurency = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            file_typo.starts_with("test.toml line 3: unknown key `concurency`"),
            "{file_typo}"
        );

        let env_type = load("", &[("NETBOX_OUTBOX_DELIVERY__CONCURRENCY", "ten")])
            .unwrap_err()
            .to_string();
        assert!(
            env_type.starts_with(
                "delivery.concurrency: invalid type: string \"ten\", expected a whole number"
            ),
            "{env_type}"
        );
        assert!(
            env_type.contains("(set by environment variable NETBOX_OUTBOX_DELIVERY__CONCURRENCY)"),
            "{env_type}"
        );
        let file_type = load("[assembly]\n\nlisten = \"yes\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            file_type.starts_with(
                "assembly.listen: invalid type: string \"yes\", expected true or false"
            ),
            "{file_type}"
        );
        assert!(
            file_type.contains("(set by test.toml line 3)"),
            "{file_type}"
        );

        let choice = load("[log]\nformat = \"jsno\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            choice.starts_with("log.format: unknown variant `jsno`, expected `text` or `json`; did you mean `json`?"),
            "{choice}"
        );
        assert!(choice.contains("(set by test.toml line 2)"), "{choice}");

        let duration = load("", &[("NETBOX_OUTBOX_DELIVERY__POLL_INTERVAL", "soon")])
            .unwrap_err()
            .to_string();
        assert!(
            duration
                .contains("(set by environment variable NETBOX_OUTBOX_DELIVERY__POLL_INTERVAL)"),
            "{duration}"
        );
        let listed = load("[delivery]\nretry_schedule = [\"5s\", \"later\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            listed.starts_with("delivery.retry_schedule[1]: \"later\" is not a duration")
                && listed.contains("(set by test.toml line 2)"),
            "{listed}"
        );
    }

    /// What would fail only at the first send is refused with the configuration.
    #[test]
    fn proxy_and_user_agent_are_checked_up_front() {
        let proxy = load("[delivery]\nproxy = \"not a url\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            proxy.starts_with("delivery.proxy: \"not a url\" is not a proxy URL"),
            "{proxy}"
        );
        let agent = load("[delivery]\nuser_agent = \"a\\nb\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(agent.starts_with("delivery.user_agent:"), "{agent}");
        load(
            "[delivery]\nproxy = \"http://proxy.example.net:3128\"\n",
            &[],
        )
        .unwrap();
    }

    /// `verbose` would be read by tracing as a target name and silence every line of `run`:
    /// `check` (which loads the same configuration) refuses it.
    #[test]
    fn log_level_is_a_level_or_a_filter() {
        let verbose = load("[log]\nlevel = \"verbose\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            verbose.starts_with("log.level: \"verbose\" is not a level")
                && verbose.contains("error, warn, info, debug, trace")
                && verbose.contains("(set by test.toml line 2)"),
            "{verbose}"
        );
        let near = load("", &[("NETBOX_OUTBOX_LOG__LEVEL", "debgu")])
            .unwrap_err()
            .to_string();
        assert!(near.contains("did you mean `debug`?"), "{near}");
        for good in [
            "info",
            "WARN",
            "info,netbox_outbox=debug",
            "netbox_outbox=trace",
            "off",
        ] {
            load("", &[("NETBOX_OUTBOX_LOG__LEVEL", good)])
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let bad_target_level = load("", &[("NETBOX_OUTBOX_LOG__LEVEL", "netbox_outbox=loud")])
            .unwrap_err()
            .to_string();
        assert!(
            bad_target_level.contains("\"loud\" is not a level"),
            "{bad_target_level}"
        );
    }

    /// A missing file: its cause once, and how to write one.
    #[test]
    fn a_missing_file_says_its_cause_once() {
        let error =
            Config::load(Some(Path::new("/nonexistent/nbo.toml")), std::iter::empty()).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("netbox-outbox config > /nonexistent/nbo.toml"),
            "{text}"
        );
        assert!(
            std::error::Error::source(&error).is_none(),
            "the cause would print twice"
        );
    }

    #[test]
    fn the_key_list_matches_the_file_shape() {
        // the shipped example documents every listed key, and uses none that is not listed
        for (section, keys) in KEYS.iter().skip(1) {
            if section.contains('.') {
                continue;
            }
            assert!(DEFAULT_TOML.contains(&format!("[{section}]")), "{section}");
            for key in *keys {
                assert!(
                    DEFAULT_TOML.contains(&format!("{key} =")),
                    "{section}.{key}"
                );
            }
        }
        let example: toml::Table = DEFAULT_TOML.parse().unwrap();
        check_keys(
            &example,
            &Origins {
                file: "example",
                text: DEFAULT_TOML,
                environment: BTreeMap::new(),
            },
        )
        .unwrap();
        // and every listed key is one the file's shape accepts
        load(
            "[delivery]\nproxy = \"\"\npayload_format_by_webhook = { \"old\" = \"legacy\" }\n",
            &[],
        )
        .unwrap();
    }

    #[test]
    fn unknown_keys_are_named_with_the_valid_ones() {
        let e = load("[assembly]\npol_interval = \"1s\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown key `pol_interval` in [assembly]; did you mean `poll_interval`?"),
            "{e}"
        );
        assert!(
            e.contains("valid keys: poll_interval, chunk_size, batch_changes, listen"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration("k", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("k", "1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            duration("k", "1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(duration("k", "3d").unwrap(), Duration::from_secs(3 * 86400));
        assert_eq!(duration("k", "1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "5", "s", "5 parsecs", "-1s"] {
            assert!(duration("k", bad).is_err(), "{bad}");
        }
    }
}
