//! `netbox-outbox check`: everything that can be verified before going live: configuration,
//! database, migrations, capture triggers, NetBox's schema, and each rule's and webhook's
//! settings (templates, URL, TLS), optionally by connecting to the receivers.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio_postgres::Client;

use crate::assemble::build::Builder;
use crate::cli::{Failure, exit};
use crate::config::Config;
use crate::deliver::http::Sender;
use crate::netbox::catalogue::catalogue;
use crate::request::EventContext;
use crate::rules::RuleSet;
use crate::template::Templates;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Ok(String),
    /// Worth knowing, not wrong.
    Warning(String),
    /// Will lose or break webhooks: `check` exits with code 5.
    Problem(String),
}

impl Finding {
    pub fn is_problem(&self) -> bool {
        matches!(self, Finding::Problem(_))
    }

    pub fn line(&self) -> String {
        match self {
            Finding::Ok(m) => format!("ok       {m}"),
            Finding::Warning(m) => format!("warning  {m}"),
            Finding::Problem(m) => format!("PROBLEM  {m}"),
        }
    }
}

/// Runs every check against a connected database.
pub async fn run(client: &Client, config: &Config, network: bool) -> Vec<Finding> {
    let mut findings = Vec::new();
    match crate::migrations::pending(client).await {
        Ok(pending) if pending.is_empty() => {
            findings.push(Finding::Ok("migrations are current".into()))
        }
        Ok(pending) => {
            findings.push(Finding::Problem(format!(
                "migrations pending: {}; apply them: netbox-outbox migrate (or --print-sql for a DBA)",
                pending.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )));
            return findings;
        }
        Err(e) => {
            findings.push(Finding::Problem(format!(
                "cannot read the migration history: {}",
                crate::error_chain(&e)
            )));
            return findings;
        }
    }
    release(client, config, &mut findings).await;
    if let Err(e) = capture(client, &mut findings).await {
        findings.push(Finding::Problem(format!(
            "cannot inspect the capture: {}",
            crate::error_chain(&e)
        )));
    }
    if let Err(e) = schema(client, &mut findings).await {
        findings.push(Finding::Problem(format!(
            "cannot inspect NetBox's schema: {}",
            crate::error_chain(&e)
        )));
    }
    if let Err(e) = webhooks(client, config, network, &mut findings).await {
        findings.push(Finding::Problem(format!(
            "cannot read event rules and webhooks: {}",
            crate::error_chain(&e)
        )));
    }
    findings
}

/// Which NetBox release the database holds, and so which catalogue renders its webhooks: an
/// unknown release is a problem (the sidecar refuses to start) unless `[netbox] version` names one.
async fn release(client: &Client, config: &Config, findings: &mut Vec<Finding>) {
    use crate::netbox::version::{SelectError, select};
    match select(client, config.netbox.version.as_deref()).await {
        Ok(choice) if choice.assumed() || (choice.overridden && choice.contradicted()) => {
            findings.push(Finding::Warning(choice.describe()))
        }
        Ok(choice) => findings.push(Finding::Ok(choice.describe())),
        Err(e @ SelectError::Unknown(_)) => findings.push(Finding::Problem(e.to_string())),
        Err(e) => findings.push(Finding::Problem(crate::error_chain(&e))),
    }
}

async fn capture(
    client: &Client,
    findings: &mut Vec<Finding>,
) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_one(
            "select (select count(*) from netbox_outbox.watched_tables where watched),
                    (select coalesce(string_agg(table_name, ', ' order by table_name), '')
                       from netbox_outbox.watched_tables where watched and not trigger_installed
                        and to_regclass(format('public.%I', table_name)) is not null),
                    (select coalesce(string_agg(e.table_name, ', ' order by e.table_name), '')
                       from netbox_outbox.event_model e
                      where not exists (select 1 from netbox_outbox.watch w where w.table_name = e.table_name)
                        and to_regclass(format('public.%I', e.table_name)) is not null),
                    exists (select 1 from pg_trigger where tgname = 'netbox_outbox_capture_tag'),
                    exists (select 1 from pg_trigger where tgname = 'netbox_outbox_capture_changelog'),
                    (select value from netbox_outbox.setting where name = 'capture_mode')",
            &[],
        )
        .await?;
    let (watched, untriggered, unwatched, tags, changelog, mode): (
        i64,
        String,
        String,
        bool,
        bool,
        Option<String>,
    ) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    findings.push(Finding::Ok(format!(
        "{watched} NetBox tables are watched (capture mode {})",
        mode.as_deref().unwrap_or("?")
    )));
    if !untriggered.is_empty() {
        findings.push(Finding::Problem(format!(
            "watched tables without a capture trigger (changes to them are missed): {untriggered}; \
             fix: select * from netbox_outbox.sync();"
        )));
    }
    if !unwatched.is_empty() {
        findings.push(Finding::Warning(format!(
            "models that support event rules but are not watched: {unwatched}; \
             select netbox_outbox.watch('<table>') to watch one, or netbox_outbox.sync()"
        )));
    }
    if !tags || !changelog {
        findings.push(Finding::Problem(
            "the triggers on extras_taggeditem or core_objectchange are missing; fix: select * from netbox_outbox.sync();".into(),
        ));
    }
    if !matches!(mode.as_deref(), Some("all") | Some("netbox")) {
        findings.push(Finding::Problem(format!(
            "netbox_outbox.setting capture_mode is {mode:?}; set it to 'all' or 'netbox'"
        )));
    }
    Ok(())
}

/// Compares NetBox's tables with the catalogue: a different NetBox version shows as drift.
async fn schema(client: &Client, findings: &mut Vec<Finding>) -> Result<(), tokio_postgres::Error> {
    let rows = client
        .query(
            "select table_name::text, array_agg(column_name::text) from information_schema.columns
             where table_schema = 'public' group by table_name",
            &[],
        )
        .await?;
    let tables: std::collections::HashMap<String, Vec<String>> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut drift = Vec::new();
    let mut checked = 0;
    for (name, model) in &catalogue().models {
        if !model.event_rules {
            continue;
        }
        let Some(columns) = tables.get(&model.table) else {
            continue;
        };
        checked += 1;
        let missing: Vec<&String> = model
            .columns
            .keys()
            .filter(|c| !columns.contains(c))
            .collect();
        if !missing.is_empty() {
            drift.push(format!(
                "{name} lacks {}",
                missing
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    for (table, needed) in [
        (
            "extras_eventrule",
            &[
                "enabled",
                "event_types",
                "action_type",
                "action_object_id",
                "conditions",
                "action_data",
            ][..],
        ),
        (
            "extras_webhook",
            &[
                "payload_url",
                "http_method",
                "additional_headers",
                "body_template",
                "secret",
                "ssl_verification",
                "ca_file_path",
            ][..],
        ),
        (
            "core_objectchange",
            &[
                "request_id",
                "user_name",
                "prechange_data",
                "postchange_data",
            ][..],
        ),
    ] {
        match tables.get(table) {
            None => findings.push(Finding::Problem(format!(
                "NetBox table {table} is missing: is this NetBox's database?"
            ))),
            Some(columns) => {
                let missing: Vec<&&str> = needed
                    .iter()
                    .filter(|c| !columns.iter().any(|x| x == **c))
                    .collect();
                if !missing.is_empty() {
                    findings.push(Finding::Problem(format!(
                        "{table} lacks {missing:?}: this NetBox is not one netbox-outbox understands (it targets {})",
                        catalogue().netbox_version
                    )));
                }
            }
        }
    }
    if drift.is_empty() {
        findings.push(Finding::Ok(format!(
            "NetBox's schema matches the {} catalogue ({checked} model tables)",
            catalogue().netbox_version
        )));
    } else {
        findings.push(Finding::Warning(format!(
            "NetBox's schema differs from the {} catalogue (payload fields from missing columns will be null): {}",
            catalogue().netbox_version,
            drift.join("; ")
        )));
    }
    Ok(())
}

/// The variables a webhook's templates can read (both payload formats).
const CONTEXT_KEYS: [&str; 9] = [
    "event",
    "timestamp",
    "object_type",
    "data",
    "request",
    "snapshots",
    "model",
    "username",
    "request_id",
];

/// A made-up event to render templates with.
fn sample_context() -> Value {
    let mut data = Map::new();
    data.insert("id".into(), json!(1));
    data.insert("url".into(), json!("/api/dcim/sites/1/"));
    data.insert("display".into(), json!("check"));
    data.insert("name".into(), json!("check"));
    EventContext {
        event: "created".into(),
        timestamp: crate::netbox::format::timestamp_now(),
        object_type: "dcim.site".into(),
        data,
        netbox_request: json!({"id": "00000000-0000-0000-0000-000000000000", "path": "/api/dcim/sites/",
                        "path_info": "/api/dcim/sites/", "method": "POST", "GET": {}, "user": "check"})
        .as_object()
        .cloned()
        .unwrap_or_default(),
        snapshots: json!({"prechange": null, "postchange": {"name": "check"}}),
    }
    .into_value(config_format())
}

fn config_format() -> crate::config::PayloadFormat {
    crate::config::PayloadFormat::Netbox47
}

async fn webhooks(
    client: &Client,
    config: &Config,
    network: bool,
    findings: &mut Vec<Finding>,
) -> Result<(), tokio_postgres::Error> {
    let rules = RuleSet::load(client, config.rules.deliver_netbox_webhook_rules, None)
        .await?
        .unwrap_or_default();
    if rules.is_empty() && rules.skipped.is_empty() {
        findings.push(Finding::Warning(format!(
            "no enabled event rule of type {} delivers to a webhook: nothing will be sent{}",
            crate::rules::OUTBOX_ACTION,
            if config.rules.deliver_netbox_webhook_rules {
                " (nor of type webhook)"
            } else {
                ""
            }
        )));
        return Ok(());
    }
    for skipped in &rules.skipped {
        findings.push(Finding::Problem(format!(
            "event rule {:?} (id {}) is skipped: {}",
            skipped.name, skipped.id, skipped.reason
        )));
    }
    let templates = Templates::from_config(&config.netbox);
    let sender = Sender::new(config.delivery.clone());
    // The sidecar's own builder, so the sample renders under the same limits.
    let builder = Builder::new(config);
    let context = sample_context();
    let mut seen = std::collections::HashSet::new();
    for rule in &rules.rules {
        if let Err(e) = &rule.conditions {
            findings.push(Finding::Problem(format!(
                "event rule {:?}: {e}; fix the rule's conditions in NetBox",
                rule.name
            )));
        }
        if rule.object_types.is_empty() {
            findings.push(Finding::Warning(format!(
                "event rule {:?} has no object types: it never fires",
                rule.name
            )));
        }
        let Some(webhook) = &rule.webhook else {
            findings.push(Finding::Problem(format!(
                "event rule {:?} points at webhook {}, which does not exist; point it at a \
                 webhook or disable it in NetBox",
                rule.name, rule.webhook_id
            )));
            continue;
        };
        if !seen.insert(webhook.id) {
            continue;
        }
        let label = format!("webhook {:?}", webhook.name);
        for (field, source) in [
            ("body_template", &webhook.body_template),
            ("additional_headers", &webhook.additional_headers),
            ("payload_url", &webhook.payload_url),
        ] {
            if let Err(e) = templates.check(source) {
                findings.push(Finding::Problem(format!(
                    "{label}: {field} does not parse: {e}; fix the webhook in NetBox"
                )));
            }
            // Reading a field of a variable the context does not have fails for every event
            // (a field missing from the sample event may exist in real ones: that is a warning
            // below, from rendering).
            for path in templates.variables(source) {
                if let Some((root, _)) = path.split_once('.')
                    && !CONTEXT_KEYS.contains(&root)
                {
                    findings.push(Finding::Problem(format!(
                        "{label}: {field} reads `{path}`, but a webhook's context has no `{root}` \
                         (it has {}), so rendering always fails; fix the webhook in NetBox",
                        CONTEXT_KEYS.join(", ")
                    )));
                }
            }
        }
        if !webhook.ssl_verification && webhook.ca_file_path.is_some() {
            findings.push(Finding::Warning(format!(
                "{label}: ssl_verification is off but ca_file_path is set; the CA file wins and verification is on (NetBox forbids this combination)"
            )));
        }
        if let Some(timeout) = webhook.timeout_seconds
            && !(1..=3600).contains(&timeout)
        {
            findings.push(Finding::Problem(format!(
                "{label}: timeout {timeout} is outside 1..3600 seconds"
            )));
        }
        // NetBox skips such a line silently, and so does delivery (same request); it is
        // almost always a typo that drops a header the receiver needs. The line's text may
        // hold a token, so only its number is shown.
        for (number, line) in webhook.additional_headers.lines().enumerate() {
            let template_only = line.contains("{%") || line.contains("{#");
            if !line.trim().is_empty() && !line.contains(':') && !template_only {
                findings.push(Finding::Problem(format!(
                    "{label}: additional_headers line {} has no colon, so it is not sent; \
                     write it as Name: value",
                    number + 1
                )));
            }
        }
        match builder.build(webhook.clone(), context.clone()).await {
            Err(e) => {
                // A literal that fails always fails; a template may only fail for the sample.
                let source = match e.field {
                    "payload_url" => webhook.payload_url.as_str(),
                    "body_template" => webhook.body_template.as_str(),
                    "additional_headers" => webhook.additional_headers.as_str(),
                    _ => "",
                };
                let templated = source.contains("{{") || source.contains("{%");
                let message = format!(
                    "{label}: {e}{}",
                    if templated {
                        " (rendered for a sample dcim.site event)"
                    } else {
                        ""
                    }
                );
                findings.push(if templated {
                    Finding::Warning(message)
                } else {
                    Finding::Problem(message)
                });
            }
            Ok(built) => {
                if let Some(path) = &built.transport.ca_file_path {
                    match std::fs::read(path) {
                        Err(e) => findings.push(Finding::Problem(format!(
                            "{label}: ca_file_path {path}: cannot read it ({e}); fix the path in the webhook"
                        ))),
                        Ok(pem) => match reqwest::Certificate::from_pem_bundle(&pem) {
                            Ok(certs) if !certs.is_empty() => {}
                            _ => findings.push(Finding::Problem(format!(
                                "{label}: ca_file_path {path}: not a PEM certificate bundle (holds no PEM certificate); point it at the CA certificates that sign the receiver's"
                            ))),
                        },
                    }
                }
                if network {
                    // A probe, not the webhook: no headers or body, a short timeout.
                    let mut probe = built.without_payload();
                    probe.method = "HEAD".into();
                    probe.transport.timeout = Duration::from_secs(5);
                    let result = sender
                        .send(&probe, 0, &config.delivery.delivery_id_header, None)
                        .await;
                    match (result.status, result.error) {
                        (Some(status), _) => findings.push(Finding::Ok(format!(
                            "{label}: {} answers (HTTP {status} to HEAD)",
                            built.url
                        ))),
                        (None, Some(error)) => findings
                            .push(Finding::Problem(format!("{label}: {}: {error}", built.url))),
                        (None, None) => {}
                    }
                } else {
                    findings.push(Finding::Ok(format!("{label}: settings are valid")));
                }
            }
        }
    }
    Ok(())
}

/// `netbox-outbox check`: the configuration, the database, then every finding; exit 5 when any
/// is a problem.
pub(crate) async fn command(
    config: &Config,
    config_path: Option<&std::path::Path>,
    database: crate::db::Database,
    offline: bool,
) -> Result<u8, Failure> {
    println!(
        "ok       configuration is valid ({})",
        config_path.map_or("defaults and environment".to_string(), |p| p
            .display()
            .to_string())
    );
    // `run` refuses to start when it cannot serve its endpoints; a running sidecar on this host
    // holds the address too, so this is a warning, not a problem.
    if let Some(addr) = config.metrics.listen {
        match crate::health::bind(addr).await {
            Ok(_) => println!("ok       [metrics] listen {addr} is free"),
            Err(e) => println!(
                "{}",
                Finding::Warning(format!(
                    "[metrics] listen {addr} is taken ({e}): fine if this host's running \
                     sidecar holds it, but another sidecar started here would refuse to start; \
                     give each its own address"
                ))
                .line()
            ),
        }
    }
    let client = database.connect().await?;
    println!("ok       database {database} answers");
    // Not installed, pending migrations or no rights: one problem that says what to run.
    if let Err(failure) = super::installed::require(&client, &database).await {
        println!("PROBLEM  {}", failure.error);
        return Ok(exit::PROBLEMS);
    }
    let findings = run(&client, config, !offline).await;
    for finding in &findings {
        println!("{}", finding.line());
    }
    Ok(if findings.iter().any(|f| f.is_problem()) {
        exit::PROBLEMS
    } else {
        exit::OK
    })
}
