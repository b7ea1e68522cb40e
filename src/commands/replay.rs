//! `netbox-outbox replay`: send deliveries again, selected by delivery, event, object, webhook or
//! time range. Which deliveries a selection names is defined once, here ([`Selection::ids`]),
//! for a plain replay (netbox_outbox.replay() copies each one's frozen request) and for
//! `--rerender` (each rejected one is built again by the assembler's builder).

use std::time::Duration;

use tokio_postgres::Client;

use crate::cli::{Failure, exit};

/// Which deliveries to replay; the filters combine with AND.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Selection {
    /// One delivery, by id.
    #[arg(long)]
    pub delivery: Option<i64>,
    /// The deliveries of one event, by id.
    #[arg(long)]
    pub event: Option<i64>,
    /// The deliveries about one object: app_label.model:id (for example dcim.device:12), or
    /// app_label.model for every object of that type.
    #[arg(long, value_name = "TYPE[:ID]")]
    pub object: Option<String>,
    /// The deliveries to one webhook, by name or id.
    #[arg(long)]
    pub webhook: Option<String>,
    /// Deliveries created at or after this time: a timestamp (2026-11-24 10:00, UTC unless an
    /// offset is given) or an age (30m, 2h, 1d ago).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Deliveries created before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Which states to replay (repeat or comma-separate): dead, delivered, pending, skipped. A
    /// replayed delivery is never replayed again (replay its copy).
    #[arg(long = "state", value_delimiter = ',', default_value = "dead")]
    pub states: Vec<String>,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Invalid(String),
    #[error("replay failed")]
    Query(#[from] tokio_postgres::Error),
}

/// A time argument as an SQL expression over parameter `$n` (pushed onto `texts`): an age
/// becomes now() minus it, anything else is read as a timestamp by PostgreSQL.
fn time_sql(value: &str, texts: &mut Vec<String>) -> String {
    match crate::config::duration("", value.trim_end_matches(" ago")) {
        Ok(age) => {
            texts.push(age.as_secs_f64().to_string());
            format!(
                "now() - make_interval(secs => ${}::text::float8)",
                texts.len()
            )
        }
        Err(_) => {
            texts.push(value.to_string());
            format!("${}::text::timestamptz", texts.len())
        }
    }
}

impl Selection {
    fn is_empty(&self) -> bool {
        self.delivery.is_none()
            && self.event.is_none()
            && self.object.is_none()
            && self.webhook.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    /// The ids of the selected deliveries in one of `states`, in queue order (seq, id). The
    /// object type and webhook are resolved as netbox_outbox.replay() resolves them, with its
    /// errors (an unknown webhook or model is a usage error, not an empty selection).
    async fn ids(
        &self,
        client: &Client,
        verb: &str,
        states: &[&str],
    ) -> Result<Vec<i64>, ReplayError> {
        if self.is_empty() {
            return Err(ReplayError::Invalid(format!(
                "say what to {verb}: --delivery, --event, --object, --webhook, --since or --until"
            )));
        }
        // The selection itself is SQL's (netbox_outbox.replay_selection, V10), so that
        // replay() in psql and this command select the same deliveries for the same words.
        let mut texts = vec![states.join(",")];
        let mut args = vec!["states => string_to_array($1::text, ',')".to_string()];
        let mut arg = |name: &str, cast: &str, value: String, texts: &mut Vec<String>| {
            texts.push(value);
            args.push(format!("{name} => ${}::text{cast}", texts.len()));
        };
        if let Some(id) = self.delivery {
            arg("delivery_id", "::bigint", id.to_string(), &mut texts);
        }
        if let Some(id) = self.event {
            arg("event_id", "::bigint", id.to_string(), &mut texts);
        }
        if let Some(object) = &self.object {
            let (model, id) = object_selector(object)?;
            arg("object_type", "", model.to_string(), &mut texts);
            if let Some(id) = id {
                arg("object_id", "::bigint", id.to_string(), &mut texts);
            }
        }
        if let Some(webhook) = &self.webhook {
            arg("webhook", "", webhook.clone(), &mut texts);
        }
        if let Some(since) = &self.since {
            let expr = time_sql(since, &mut texts);
            args.push(format!("since => {expr}"));
        }
        if let Some(until) = &self.until {
            let expr = time_sql(until, &mut texts);
            args.push(format!("until => {expr}"));
        }
        let sql = format!(
            "select s.id from netbox_outbox.replay_selection({}) with ordinality as s(id, n) order by s.n",
            args.join(", ")
        );
        match client.query(&sql, &text_params(&texts)).await {
            Ok(rows) => Ok(rows.iter().map(|r| r.get(0)).collect()),
            Err(e) => Err(usage_or_failure(e)),
        }
    }
}

/// A database error as the operator's to fix (its message and hint), or a failure.
fn usage_or_failure(e: tokio_postgres::Error) -> ReplayError {
    match e.as_db_error() {
        Some(db) => ReplayError::Invalid(match db.hint() {
            Some(hint) => format!("{} ({hint})", db.message()),
            None => db.message().to_string(),
        }),
        None => ReplayError::Query(e),
    }
}

/// `--object app_label.model[:id]`: the model and the id, if any.
fn object_selector(object: &str) -> Result<(&str, Option<i64>), ReplayError> {
    match object.split_once(':') {
        Some((model, id)) => match id.parse::<i64>() {
            Ok(id) => Ok((model, Some(id))),
            Err(_) => Err(ReplayError::Invalid(format!(
                "--object {object:?}: the id after ':' must be a number"
            ))),
        },
        None => Ok((object, None)),
    }
}

/// The text parameters of a statement built by [`Selection`], as tokio-postgres takes them.
fn text_params(texts: &[String]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    texts
        .iter()
        .map(|t| t as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

/// Replays (or counts, with `dry_run`) the selected deliveries; returns how many.
pub async fn replay(
    client: &Client,
    selection: &Selection,
    dry_run: bool,
    progress: bool,
) -> Result<i64, ReplayError> {
    for state in &selection.states {
        if !["dead", "delivered", "pending", "skipped"].contains(&state.as_str()) {
            return Err(ReplayError::Invalid(format!(
                "--state {state:?}: use dead, delivered, pending or skipped"
            )));
        }
    }
    let states: Vec<&str> = selection.states.iter().map(String::as_str).collect();
    let ids = selection.ids(client, "replay", &states).await?;
    if dry_run {
        return Ok(ids.len() as i64);
    }
    let spinner = progress.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message("replaying deliveries");
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    // One statement, in queue order: each copy draws its place in its object's queue in turn.
    // The states are checked again by replay(), so a delivery that moved on since (replayed by
    // someone else meanwhile, say) is left out.
    let result = client
        .query_one(
            "select count(r.delivery)
             from unnest($1::bigint[]) with ordinality as s(id, n)
             cross join lateral netbox_outbox.replay(delivery_id => s.id,
                                                     states => string_to_array($2::text, ',')) r",
            &[&ids, &states.join(",")],
        )
        .await;
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    result.map(|row| row.get(0)).map_err(usage_or_failure)
}

/// What `replay --rerender` did.
#[derive(Debug, Default)]
pub struct Rerendered {
    /// New deliveries, one per rejected delivery that renders now.
    pub created: i64,
    /// Rejected deliveries that still cannot be built, with the reason.
    pub still_failing: Vec<(i64, String)>,
}

/// Renders rejected deliveries again with their webhook and rule as they are now (after a
/// fix), and queues each as a new delivery (`replay_of` the rejected one, with its message
/// id); the rejected one becomes `replayed`.
///
/// A rejected delivery has no frozen request, and the object's state at the original commit is
/// not kept, so `data` shows the object as it stands now; for a delete, as the capture saw it
/// last. The rejected delivery stays in the log.
pub async fn rerender(
    client: &mut Client,
    config: &crate::config::Config,
    selection: &Selection,
    dry_run: bool,
) -> Result<Rerendered, ReplayError> {
    use crate::assemble::build::{Builder, Event};
    use crate::change::Action;
    use crate::commands::test_webhook::{NO_REQUEST, current_row, parse_webhook, render_standing};

    // The states filter does not apply: only rejected deliveries lack a request to copy.
    let ids = selection.ids(client, "re-render", &["rejected"]).await?;
    let mut report = Rerendered::default();
    if ids.is_empty() {
        return Ok(report);
    }
    let mut netbox = crate::netbox::Netbox::new(config.netbox.clone());
    netbox.refresh(&*client).await?;
    let rules = crate::rules::RuleSet::load(&*client, true, None)
        .await?
        .unwrap_or_default();
    let builder = Builder::new(config);
    for id in ids {
        let row = client
            .query_one(
                "select d.event_rule_id, d.webhook_id, d.content_type_id, d.object_id, e.event,
                        (select row_to_json(w)::text from extras_webhook w where w.id = d.webhook_id)
                 from netbox_outbox.delivery d join netbox_outbox.event e on e.id = d.event_id
                 where d.id = $1",
                &[&id],
            )
            .await?;
        let (rule_id, webhook_id, ct, object_id, event): (i64, i64, i32, i64, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let rule = rules.rules.iter().find(|r| r.id == rule_id);
        // The rule's webhook as it is now (the fix may have pointed the rule at another one),
        // else the delivery's own.
        let webhook = match rule.and_then(|r| r.webhook.clone()) {
            Some(webhook) => webhook,
            None => match row.get::<_, Option<String>>(5) {
                Some(json) => std::sync::Arc::new(
                    parse_webhook(&json).map_err(|e| ReplayError::Invalid(e.to_string()))?,
                ),
                None => {
                    report.still_failing.push((
                        id,
                        format!(
                            "webhook {webhook_id} no longer exists; point the rule at a webhook \
                             in NetBox first"
                        ),
                    ));
                    continue;
                }
            },
        };
        let action = match event.as_str() {
            "created" => Action::Created,
            "deleted" => Action::Deleted,
            _ => Action::Updated,
        };
        let object = if action == Action::Deleted {
            // the object is gone: its last captured image, while the capture keeps it
            client
                .query_opt(
                    "select before::text from netbox_outbox.change
                     where content_type_id = $1 and object_id = $2 and kind = 'D'
                     order by id desc limit 1",
                    &[&ct, &object_id],
                )
                .await?
                .and_then(|r| crate::change::parse_row(r.get::<_, Option<String>>(0).as_deref()))
        } else {
            current_row(client, &netbox, ct, object_id).await?
        };
        let Some(object) = object else {
            report.still_failing.push((
                id,
                format!(
                    "{}:{object_id} no longer exists (and no captured image of it is left)",
                    netbox.object_type(ct).unwrap_or_default()
                ),
            ));
            continue;
        };
        let (change, rendered) =
            render_standing(client, &netbox, (ct, object_id, object), action).await?;
        let object_type = netbox.object_type(ct).unwrap_or_default();
        let event = Event::new(
            &change,
            &rendered,
            &object_type,
            (NO_REQUEST, "netbox-outbox replay"),
            &netbox,
        );
        let built = match builder.request(rule, Some(webhook.clone()), &event).await {
            Some(Ok(built)) => built,
            Some(Err(rejection)) => {
                report.still_failing.push((id, rejection.detail));
                continue;
            }
            None => {
                let rule = rule.map(|r| r.name.as_str()).unwrap_or_default();
                report.still_failing.push((
                    id,
                    format!("event rule {rule:?}'s conditions are now false for this object"),
                ));
                continue;
            }
        };
        if dry_run {
            report.created += 1;
            continue;
        }
        let headers = built.headers_json();
        let timeout_ms = built.transport.timeout_ms();
        let tx = client.transaction().await?;
        // The original leaves 'rejected' first, locked: a second re-render at the same time
        // finds nothing to copy.
        let taken = tx
            .execute(
                "update netbox_outbox.delivery set state = 'replayed'
                 where id = $1 and state = 'rejected'",
                &[&id],
            )
            .await?;
        if taken == 0 {
            continue;
        }
        tx.execute(
            "with copy as (
                 insert into netbox_outbox.delivery
                     (event_id, event_rule_id, event_rule_name, webhook_id, webhook_name,
                      content_type_id, object_id, seq, timeout_ms, ssl_verification, ca_file_path,
                      replay_of, message_id)
                 select d.event_id, d.event_rule_id, d.event_rule_name, $10, $2,
                        d.content_type_id, d.object_id, nextval('netbox_outbox.change_id_seq'),
                        $3, $4, $5, d.id, coalesce(d.message_id, d.id)
                 from netbox_outbox.delivery d where d.id = $1
                 returning id
             )
             insert into netbox_outbox.request (delivery_id, method, url, headers, body)
             select copy.id, $6, $7, $8::text::jsonb, $9 from copy",
            &[
                &id,
                &webhook.name,
                &timeout_ms,
                &built.transport.ssl_verification,
                &built.transport.ca_file_path,
                &built.method,
                &built.url,
                &headers,
                &built.body,
                &webhook.id,
            ],
        )
        .await?;
        tx.execute("select pg_notify('netbox_outbox', 'deliveries')", &[])
            .await?;
        tx.commit().await?;
        report.created += 1;
    }
    Ok(report)
}

/// `netbox-outbox replay [--rerender]`: sends (or re-renders) the selected deliveries and prints
/// how many; a bad selection is a usage error, a rerender that still fails exits 1.
pub(crate) async fn command(
    config: &crate::config::Config,
    database: crate::db::Database,
    selection: &Selection,
    dry_run: bool,
    rerender: bool,
) -> Result<u8, Failure> {
    let failure = |e: ReplayError| match e {
        ReplayError::Invalid(_) => Failure::new(exit::USAGE, e),
        other => Failure::new(exit::FAILURE, other),
    };
    if rerender {
        let mut client = database.connect().await?;
        super::installed::require(&client, &database).await?;
        // re-rendered with the catalogue of the release the database holds, as `run` would
        crate::netbox::version::select(&client, config.netbox.version.as_deref())
            .await
            .map_err(|e| match e {
                crate::netbox::version::SelectError::Unknown(_) => Failure::new(exit::PROBLEMS, e),
                other => Failure::new(exit::FAILURE, other),
            })?;
        let report = self::rerender(&mut client, config, selection, dry_run)
            .await
            .map_err(failure)?;
        for (id, reason) in &report.still_failing {
            eprintln!("delivery {id} still fails: {reason}");
        }
        let done = if dry_run {
            "would be re-rendered"
        } else {
            "re-rendered"
        };
        println!("{} deliveries {done}", report.created);
        return Ok(if report.still_failing.is_empty() {
            exit::OK
        } else {
            exit::FAILURE
        });
    }
    use std::io::IsTerminal;
    let client = database.connect().await?;
    super::installed::require(&client, &database).await?;
    let n = replay(&client, selection, dry_run, std::io::stderr().is_terminal())
        .await
        .map_err(failure)?;
    let done = if dry_run {
        "would be replayed"
    } else {
        "replayed"
    };
    println!("{n} deliveries {done}");
    Ok(exit::OK)
}

/// What `skip` selects: one pending delivery, or the failing heads of the matching queues.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SkipSelection {
    /// One pending delivery, by id (a head or not).
    #[arg(long)]
    pub delivery: Option<i64>,
    /// The failing heads of this webhook's queues, by name or id.
    #[arg(long)]
    pub webhook: Option<String>,
    /// The failing heads of the queues of this object: app_label.model:id, or app_label.model.
    #[arg(long, value_name = "TYPE[:ID]")]
    pub object: Option<String>,
    /// Why, kept as the skipped delivery's last_error.
    #[arg(long, default_value = "skipped by an operator")]
    pub reason: String,
}

/// `netbox-outbox skip`: releases blocked queues through netbox_outbox.skip() (V11) and prints
/// one line per skipped delivery; nothing matched exits 1.
pub(crate) async fn skip_command(
    database: crate::db::Database,
    selection: &SkipSelection,
) -> Result<u8, Failure> {
    let failure = |e: ReplayError| match e {
        ReplayError::Invalid(_) => Failure::new(exit::USAGE, e),
        other => Failure::new(exit::FAILURE, other),
    };
    let (model, object_id) = match &selection.object {
        Some(object) => {
            let (model, id) = object_selector(object).map_err(failure)?;
            (Some(model.to_string()), id)
        }
        None => (None, None),
    };
    let client = database.connect().await?;
    let rows = client
        .query(
            "select delivery, webhook_name, object, attempts, last_status, waiting_behind
             from netbox_outbox.skip(delivery_id => $1, webhook => $2, object_type => $3,
                                     object_id => $4, reason => $5)",
            &[
                &selection.delivery,
                &selection.webhook,
                &model,
                &object_id,
                &selection.reason,
            ],
        )
        .await
        .map_err(|e| failure(usage_or_failure(e)))?;
    for row in &rows {
        let status: Option<i32> = row.get(4);
        println!(
            "skipped delivery {} ({} {}, {} attempts, last status {}); {} waiting behind it go on",
            row.get::<_, i64>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, i32>(3),
            status.map_or("none".to_string(), |s| s.to_string()),
            row.get::<_, i64>(5),
        );
    }
    if rows.is_empty() {
        eprintln!(
            "nothing skipped: no pending delivery or failing queue head matches \
             (select * from netbox_outbox.blocked_heads lists them)"
        );
        return Ok(exit::FAILURE);
    }
    Ok(exit::OK)
}
