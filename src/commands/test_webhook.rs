//! `netbox-outbox test-webhook`: renders the request one webhook would get for a real object,
//! exactly as the sidecar renders it, shows it, sends it, and shows the answer.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tokio_postgres::Client;

use crate::assemble::build::{Builder, Event, standing_change};
use crate::change::{Action, TxChange};
use crate::cli::{Failure, exit};
use crate::config::Config;
use crate::deliver::http::{AttemptResult, Sender};
use crate::netbox::{self, Netbox};
use crate::request::Request;
use crate::rules::{RuleSet, Webhook};

/// What to render.
#[derive(Debug, Clone, clap::Args)]
pub struct TestWebhook {
    /// The NetBox webhook, by name or id.
    pub webhook: String,
    /// The object to render: app_label.model:id. Default: the newest object of the first type a
    /// rule of this webhook covers.
    #[arg(long, value_name = "TYPE:ID")]
    pub object: Option<String>,
    /// The event to render: created, updated or deleted.
    #[arg(long, default_value = "updated")]
    pub event: String,
    /// Show the request without sending it.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("{0}")]
    Invalid(String),
    #[error("database query failed")]
    Query(#[from] tokio_postgres::Error),
}

/// The rendered request and, unless a dry run, the attempt's result.
pub struct Tested {
    pub request: Request,
    pub result: Option<AttemptResult>,
    pub object: String,
}

pub async fn run(
    client: &Client,
    config: &Config,
    args: &TestWebhook,
) -> Result<Tested, TestError> {
    let row = client
        .query_opt(
            "select row_to_json(w)::text from extras_webhook w where w.name = $1 or w.id::text = $1",
            &[&args.webhook],
        )
        .await?
        .ok_or_else(|| TestError::Invalid(format!(
            "no webhook {:?}; list them with: select id, name from extras_webhook;", args.webhook
        )))?;
    let webhook = parse_webhook(&row.get::<_, String>(0))?;
    let rules = RuleSet::load(client, true, None).await?.unwrap_or_default();
    let rule = rules.rules.iter().find(|r| r.webhook_id == webhook.id);

    let mut netbox = Netbox::new(config.netbox.clone());
    netbox.refresh(client).await?;
    let (ct, id) = match &args.object {
        Some(object) => {
            let (model, id) = object.split_once(':').ok_or_else(|| {
                TestError::Invalid(format!(
                    "--object {object:?}: write app_label.model:id, for example dcim.site:1"
                ))
            })?;
            let ct = netbox
                .content_type_id(model)
                .ok_or_else(|| TestError::Invalid(format!("{model} is not a NetBox model")))?;
            let id: i64 = id.parse().map_err(|_| {
                TestError::Invalid(format!("--object {object:?}: the id must be a number"))
            })?;
            (ct, id)
        }
        None => {
            let ct = rule
                .and_then(|r| r.object_types.iter().next().copied())
                .ok_or_else(|| TestError::Invalid(
                    "no event rule points at this webhook; choose an object with --object app_label.model:id".into(),
                ))?;
            let table = netbox.table(ct).unwrap_or_default();
            let id: Option<i64> = client
                .query_one(
                    &format!(
                        "select max(id)::bigint from public.{}",
                        crate::change::quote_ident(&table)
                    ),
                    &[],
                )
                .await?
                .get(0);
            let id = id.ok_or_else(|| {
                TestError::Invalid(format!(
                    "there is no {} yet; choose an object with --object",
                    netbox.object_type(ct).unwrap_or_default()
                ))
            })?;
            (ct, id)
        }
    };
    let action = match args.event.as_str() {
        "created" => Action::Created,
        "updated" => Action::Updated,
        "deleted" => Action::Deleted,
        other => {
            return Err(TestError::Invalid(format!(
                "--event {other:?}: use created, updated or deleted"
            )));
        }
    };
    let object_type = netbox.object_type(ct).unwrap_or_default();
    let row = current_row(client, &netbox, ct, id)
        .await?
        .ok_or_else(|| TestError::Invalid(format!("{object_type}:{id} does not exist")))?;
    let (change, rendered) = render_standing(client, &netbox, (ct, id, row), action).await?;
    let event = Event::new(
        &change,
        &rendered,
        &object_type,
        (NO_REQUEST, "netbox-outbox test-webhook"),
        &netbox,
    );
    let action_data = rule.map(|r| r.action_data.clone()).unwrap_or_default();
    let standard = crate::standard_webhooks::is_standard(&webhook.secret)
        .then(|| crate::standard_webhooks::Secrets::parse(&webhook.secret));
    let built = Builder::new(config)
        .render(&action_data, Arc::new(webhook), &event)
        .await
        .map_err(|rejection| TestError::Invalid(rejection.detail))?;
    let result = if args.dry_run {
        None
    } else {
        let sender = Sender::new(config.delivery.clone());
        // no delivery row: id 0
        Some(
            sender
                .send(
                    &built,
                    0,
                    &config.delivery.delivery_id_header,
                    standard.as_ref(),
                )
                .await,
        )
    };
    Ok(Tested {
        request: built,
        result,
        object: format!("{object_type}:{id}"),
    })
}

/// An object's row as it stands now, or None if it is gone.
pub async fn current_row(
    client: &Client,
    netbox: &Netbox,
    ct: i32,
    id: i64,
) -> Result<Option<Map<String, Value>>, tokio_postgres::Error> {
    let table = netbox.table(ct).unwrap_or_default();
    let exists: bool = client
        .query_one(
            "select to_regclass(format('public.%I', $1::text)) is not null",
            &[&table],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(crate::change::parse_row(
        client
            .query_opt(
                &format!(
                    "select row_to_json(t)::text from public.{} t where t.id = $1",
                    crate::change::quote_ident(&table)
                ),
                &[&id],
            )
            .await?
            .map(|r| r.get::<_, String>(0))
            .as_deref(),
    ))
}

/// The request id of NetBox's request context in a render no NetBox request made.
pub const NO_REQUEST: &str = "00000000-0000-0000-0000-000000000000";

/// `action` on an object (content type, id, row) as it stands now, as a change, and that
/// change rendered exactly as the sidecar renders it.
pub async fn render_standing(
    client: &Client,
    netbox: &Netbox,
    (ct, id, row): (i32, i64, Map<String, Value>),
    action: Action,
) -> Result<(TxChange, netbox::Rendered), tokio_postgres::Error> {
    let tags: BTreeSet<i64> = client
        .query(
            "select tag_id from extras_taggeditem where content_type_id = $1 and object_id = $2::bigint::int",
            &[&ct, &id],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let change = standing_change(
        ct,
        id,
        action,
        row,
        tags,
        0,
        SystemTime::now(),
        "netbox-outbox".into(),
    );
    let rendered = netbox::render(client, netbox, 0, std::iter::once(&change))
        .await?
        .into_iter()
        .next()
        .expect("one rendered change");
    Ok((change, rendered))
}

pub fn parse_webhook(json: &str) -> Result<Webhook, TestError> {
    let v: Value = serde_json::from_str(json).map_err(|e| TestError::Invalid(e.to_string()))?;
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Ok(Webhook {
        id: v.get("id").and_then(Value::as_i64).unwrap_or_default(),
        name: s("name"),
        payload_url: s("payload_url"),
        http_method: s("http_method"),
        http_content_type: s("http_content_type"),
        additional_headers: s("additional_headers"),
        body_template: s("body_template"),
        secret: s("secret"),
        ssl_verification: v
            .get("ssl_verification")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        ca_file_path: v
            .get("ca_file_path")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(str::to_string),
        timeout_seconds: v.get("timeout").and_then(Value::as_i64).map(|t| t as i16),
    })
}

/// The request and answer, for people.
pub fn render(tested: &Tested) -> String {
    let r = &tested.request;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# rendered for {} ({} timeout, TLS verification {})",
        tested.object,
        humanize(r.transport.timeout),
        if r.transport.ssl_verification {
            "on"
        } else {
            "off"
        }
    );
    let _ = writeln!(out, "{} {}", r.method, r.url);
    for (name, value) in &r.headers {
        let _ = writeln!(out, "{name}: {value}");
    }
    let _ = writeln!(out, "Content-Length: {}", r.body.len());
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", String::from_utf8_lossy(&r.body));
    match &tested.result {
        None => {
            let _ = writeln!(out, "\n# not sent (--dry-run)");
        }
        Some(result) => {
            let _ = writeln!(out, "\n# answer after {}", humanize(result.duration));
            match result.status {
                Some(status) => {
                    let _ = writeln!(
                        out,
                        "HTTP {status}{}",
                        if result.succeeded() {
                            " (success)"
                        } else {
                            " (a failure: the sidecar would retry)"
                        }
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "no answer: {}",
                        result.error.as_deref().unwrap_or("unknown error")
                    );
                }
            }
            if let Some(excerpt) = &result.response_excerpt {
                let _ = writeln!(out, "{excerpt}");
            }
        }
    }
    out
}

fn humanize(d: std::time::Duration) -> String {
    if d.as_secs() >= 1 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `netbox-outbox test-webhook`: renders (and unless --dry-run sends) one webhook for a real
/// object and prints it; exit 1 when the receiver does not answer 2xx.
pub(crate) async fn command(
    config: &Config,
    database: crate::db::Database,
    args: &TestWebhook,
) -> Result<u8, Failure> {
    let client = database.connect().await?;
    super::installed::require(&client, &database).await?;
    let tested = run(&client, config, args).await.map_err(|e| match e {
        TestError::Invalid(_) => Failure::new(exit::USAGE, e),
        other => Failure::new(exit::FAILURE, other),
    })?;
    print!("{}", render(&tested));
    Ok(match &tested.result {
        Some(r) if !r.succeeded() => exit::FAILURE,
        _ => exit::OK,
    })
}
