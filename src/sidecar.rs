//! `netbox-outbox run`: the assembler, the dispatcher and the housekeeping, until shutdown; and
//! the sidecar's registration: its heartbeat, and the configuration fingerprint that keeps the
//! sidecars of one database sending the same output.
//!
//! Every task owns its database connection and reconnects on its own ([`crate::reconnect`]), so
//! a database restart or failover only delays work; nothing is lost because the database is the
//! only state.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::counter;
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::assemble::{Assembler, Batch};
use crate::config::{Config, PayloadFormat};
use crate::db::{Database, Sessions};
use crate::deliver::Dispatcher;
use crate::health::Health;
use crate::metrics as m;
use crate::migrations;
use crate::reconnect::{Connect, Reconnecting, pause, reconnect_delay};
use crate::wakeup::{WakeUp, WakeUpError, Woken};

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Connect(#[from] crate::db::ConnectError),
    #[error(transparent)]
    Migrations(#[from] migrations::MigrationError),
    #[error(
        "the database lacks netbox-outbox migrations {pending}; apply them first: netbox-outbox migrate \
         (or netbox-outbox migrate --print-sql for a DBA)"
    )]
    NotMigrated { pending: String },
    #[error(
        "cannot serve /metrics, /healthz and /readyz on {addr}: {cause}; another process (a \
         second sidecar on this host?) holds it: give each sidecar its own [metrics] listen \
         (NETBOX_OUTBOX_METRICS__LISTEN=127.0.0.1:9188), or \"\" for none"
    )]
    Metrics {
        addr: std::net::SocketAddr,
        cause: std::io::Error,
    },
    #[error("database query failed while starting")]
    Query(#[from] tokio_postgres::Error),
    #[error(transparent)]
    NetboxRelease(#[from] crate::netbox::version::SelectError),
    #[error(
        "this sidecar's configuration differs from the running sidecar {other} ({host}, pid {pid}, \
         seen {seen_s:.0}s ago): {differences}. Sidecars on one database must agree on what shapes \
         the webhooks they send; make the configurations the same, or stop the other sidecar first"
    )]
    ConfigDiffers {
        other: Uuid,
        host: String,
        pid: i32,
        seen_s: f64,
        /// `key is "value" here and "value" there`, for each key that differs
        differences: String,
    },
}

/// This sidecar's identity, registered in netbox_outbox.sidecar.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub id: Uuid,
}

/// Runs until `shutdown` completes, then stops gracefully.
pub async fn run(
    config: Config,
    database: Database,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let client = database.connect().await?;
    let pending = migrations::pending(&client).await?;
    if !pending.is_empty() {
        return Err(StartError::NotMigrated {
            pending: pending
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    // Before anything renders: which NetBox release's catalogue (an unknown one stops here).
    let release = crate::netbox::version::select(&client, config.netbox.version.as_deref()).await?;
    // assumed (4.7.3 among 4.7.1-4.7.3) is the common case: `check` warns about it, the log informs
    if release.overridden && release.contradicted() {
        warn!(netbox = %release.describe(), "NetBox release overridden");
    } else {
        info!(netbox = %release.describe(), "NetBox release");
    }
    let listener = match config.metrics.listen {
        Some(addr) => Some(
            crate::health::bind(addr)
                .await
                .map_err(|cause| StartError::Metrics { addr, cause })?,
        ),
        None => None,
    };
    let identity = Identity { id: Uuid::new_v4() };
    register(&client, identity, &fingerprint(&config)).await?;
    match client
        .query("select action, table_name from netbox_outbox.sync()", &[])
        .await
    {
        Ok(rows) => {
            for row in rows {
                let (action, table): (String, String) = (row.get(0), row.get(1));
                info!(action, table, "capture trigger synchronised");
            }
        }
        Err(error) => {
            warn!(error = %crate::error_chain(&error), "could not check the capture triggers (netbox_outbox.sync)")
        }
    }
    drop(client);
    info!(sidecar = %identity.id, database = %database, "netbox-outbox running");

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let deliveries_due = Arc::new(Notify::new());
    let health = Health::new(config.metrics.stall_after);

    tracker.spawn(assemble_loop(
        config.clone(),
        database.clone(),
        health.clone(),
        cancel.clone(),
        deliveries_due.clone(),
    ));
    let dispatcher = Dispatcher::new(
        database.clone(),
        config.delivery.clone(),
        identity.id,
        deliveries_due.clone(),
    );
    tracker.spawn(dispatcher.run(cancel.clone(), config.shutdown_grace));
    tracker.spawn(housekeeping(
        database.clone(),
        identity,
        health.clone(),
        cancel.clone(),
    ));
    // Recording metrics needs the recorder even when nothing serves them.
    let _ = m::recorder();
    if let Some(listener) = listener {
        let (database, health, cancel) = (database.clone(), health.clone(), cancel.clone());
        tracker.spawn(async move {
            if let Err(error) = crate::health::serve(listener, database, health, cancel).await {
                error!(error = %crate::error_chain(&error), "serving metrics failed");
            }
        });
    }
    tracker.close();

    shutdown.await;
    info!(
        grace_s = config.shutdown_grace.as_secs_f64(),
        "shutting down: no new work; finishing requests in flight"
    );
    cancel.cancel();
    let grace = config.shutdown_grace + Duration::from_secs(2);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!("tasks did not stop within the grace period; exiting anyway");
    }
    if let Ok(client) = database.connect().await {
        let _ = client
            .execute("update netbox_outbox.sidecar set stopped_at = now(), last_seen_at = now() where id = $1", &[&identity.id])
            .await;
    }
    info!("stopped");
    Ok(())
}

/// A sidecar whose heartbeat is older than this is not live: it crashed or lost the database,
/// and its configuration no longer counts. Three missed heartbeats (see [`HEARTBEAT`]).
pub const LIVE_WITHIN: Duration = Duration::from_secs(30);

/// How often housekeeping runs, and so how often each sidecar records that it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Serialises the fingerprint check and registration of sidecars starting at the same moment.
const REGISTER_LOCK: i64 = 7418734260116239619;

/// The settings that change what is sent, as `key -> value`: the payload format (default and
/// per webhook), which rules are delivered, what templates may read, the URLs' base path.
/// Sidecars on one database must agree on them, or a webhook's payloads depend on which sidecar
/// happened to read the change. Timing, concurrency and logging may differ freely.
pub fn fingerprint(config: &Config) -> Map<String, Value> {
    // each value as it is written in the config file, so the refusal reads like the file
    let text = |v: &dyn std::fmt::Debug| Value::String(format!("{v:?}"));
    let format = |f: &PayloadFormat| match f {
        PayloadFormat::Netbox47 => "\"netbox-4.7\"",
        PayloadFormat::Legacy => "\"legacy\"",
    };
    let by_webhook: Vec<String> = config
        .delivery
        .payload_format_by_webhook
        .iter()
        .map(|(name, f)| format!("{name:?} = {}", format(f)))
        .collect();
    let mut keys = Map::new();
    keys.insert(
        "delivery.payload_format".into(),
        Value::String(format(&config.delivery.payload_format).into()),
    );
    keys.insert(
        "delivery.payload_format_by_webhook".into(),
        Value::String(if by_webhook.is_empty() {
            "{}".into()
        } else {
            format!("{{ {} }}", by_webhook.join(", "))
        }),
    );
    keys.insert(
        "rules.deliver_netbox_webhook_rules".into(),
        text(&config.rules.deliver_netbox_webhook_rules),
    );
    keys.insert(
        "netbox.template_environment".into(),
        text(&config.netbox.template_environment),
    );
    keys.insert("netbox.base_path".into(), text(&config.netbox.base_path));
    // only when set: sidecars from before the key existed detect the release, as one without
    // it does, and must not look different
    if let Some(version) = &config.netbox.version {
        keys.insert("netbox.version".into(), text(version));
    }
    keys
}

/// The keys whose values differ, as `key is X here and Y there`.
pub fn differences(here: &Map<String, Value>, there: &Map<String, Value>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = here.keys().chain(there.keys()).collect();
    keys.into_iter()
        .filter(|k| here.get(*k) != there.get(*k))
        .map(|k| {
            let show = |v: Option<&Value>| {
                v.and_then(Value::as_str)
                    .map_or("(not set)".to_string(), str::to_string)
            };
            format!(
                "{k} is {} here and {} there",
                show(here.get(k)),
                show(there.get(k))
            )
        })
        .collect()
}

/// Registers this sidecar with its fingerprint, unless a live sidecar's differs.
async fn register(
    client: &tokio_postgres::Client,
    identity: Identity,
    fingerprint: &Map<String, Value>,
) -> Result<(), StartError> {
    client.batch_execute("begin").await?;
    let result = async {
        client
            .execute("select pg_advisory_xact_lock($1)", &[&REGISTER_LOCK])
            .await?;
        let live = client
            .query(
                "select id, hostname, pid, fingerprint, extract(epoch from now() - last_seen_at)::float8
                 from netbox_outbox.sidecar
                 where stopped_at is null and fingerprint is not null
                   and last_seen_at > now() - make_interval(secs => $1)
                 order by last_seen_at desc",
                &[&LIVE_WITHIN.as_secs_f64()],
            )
            .await?;
        for row in live {
            let there: Value = row.get(3);
            let there = there.as_object().cloned().unwrap_or_default();
            let differ = differences(fingerprint, &there);
            if !differ.is_empty() {
                return Err(StartError::ConfigDiffers {
                    other: row.get(0),
                    host: row.get(1),
                    pid: row.get(2),
                    seen_s: row.get(4),
                    differences: differ.join("; "),
                });
            }
        }
        client
            .execute(
                "insert into netbox_outbox.sidecar (id, hostname, pid, version, fingerprint)
                 values ($1, $2, $3, $4, $5)",
                &[
                    &identity.id,
                    &hostname(),
                    &(std::process::id() as i32),
                    &env!("CARGO_PKG_VERSION"),
                    &Value::Object(fingerprint.clone()),
                ],
            )
            .await?;
        Ok(())
    }
    .await;
    client
        .batch_execute(if result.is_ok() { "commit" } else { "rollback" })
        .await?;
    result
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Reads batches of changes while there are any, sleeps (see [`crate::wakeup`]) when there are
/// none, and reconnects when the database goes away.
async fn assemble_loop(
    config: Config,
    database: Database,
    health: Arc<Health>,
    cancel: CancellationToken,
    deliveries_due: Arc<Notify>,
) {
    let mut assembler = Assembler::new(config.clone());
    let mut connection = Reconnecting::new("assembler", Sessions(database.clone()));
    let mut listening = Reconnecting::new("wake-up", Listen(database));
    let mut summarized = Instant::now();
    let mut truncations_checked: Option<Instant> = None;
    loop {
        let Some(db) = connection.connected(&cancel).await else {
            break;
        };
        // Shutdown does not wait for a batch (its templates may take up to their time limit):
        // dropped, its transaction rolls back, and the next start reads the batch again.
        let batch = tokio::select! {
            () = cancel.cancelled() => break,
            batch = assembler.run_batch(db) => batch,
        };
        // The backoff is reset by a batch that succeeds, not by the connection: a batch that
        // fails every time must back off further each time.
        if batch.is_ok() && connection.failures() > 0 {
            connection.succeeded();
            health.set_failing_batches(0);
        }
        let Some(db) = connection.current() else {
            continue;
        };
        match batch {
            Ok(Batch::Done(report))
                if report.changes > 0 || report.deliveries > 0 || report.more =>
            {
                if report.deliveries > 0 {
                    deliveries_due.notify_one();
                }
                if summarized.elapsed() >= SUMMARIZE_EVERY {
                    summarize_capture(&db.client).await;
                    summarized = Instant::now();
                }
                continue;
            }
            Ok(Batch::Done(_)) => {
                // Idle: the moment to look for truncations (their trigger wakes us, and the
                // poll interval bounds how often we look).
                if truncations_checked.is_none_or(|t| t.elapsed() >= config.assembly.poll_interval)
                {
                    report_truncations(&db.client).await;
                    truncations_checked = Some(Instant::now());
                }
            }
            Ok(Batch::Busy) => {
                // Another sidecar reads changes; be ready to take over within a poll interval.
                pause(&cancel, config.assembly.poll_interval).await;
                continue;
            }
            Ok(Batch::Conflicted) => continue,
            Err(e) => {
                batch_failed(&mut connection, &health, &cancel, &e).await;
                listening.disconnect();
                continue;
            }
        }

        // Nothing to read: sleep until a writer commits, with a poll as the backstop.
        if !config.assembly.listen {
            pause(&cancel, config.assembly.poll_interval).await;
            continue;
        }
        // Without a wake-up connection (the failure is logged), poll.
        let Some(w) = listening.try_connect().await else {
            pause(&cancel, config.assembly.poll_interval).await;
            continue;
        };
        match w.begin_sleep().await {
            Ok(true) => listening.succeeded(),
            Ok(false) => {
                // Writers that saw us busy are still committing: look again shortly.
                pause(&cancel, Duration::from_millis(5)).await;
                continue;
            }
            Err(e) => {
                listening.failed(&cancel, "going to sleep", &e).await;
                continue;
            }
        }
        let Some(w) = listening.current() else {
            continue;
        };
        // Asleep: one more look for changes committed by writers that saw us awake.
        let Some(db) = connection.current() else {
            continue;
        };
        let batch = tokio::select! {
            () = cancel.cancelled() => break,
            batch = assembler.run_batch(db) => batch,
        };
        match batch {
            Ok(Batch::Done(report)) if report.changes > 0 || report.more => {
                if report.deliveries > 0 {
                    deliveries_due.notify_one();
                }
                if let Err(e) = w.wake().await {
                    listening.failed(&cancel, "waking up", &e).await;
                }
                continue;
            }
            Ok(Batch::Conflicted) => {
                // Its changes are still unread: awake, and at them again.
                if let Err(e) = w.wake().await {
                    listening.failed(&cancel, "waking up", &e).await;
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                batch_failed(&mut connection, &health, &cancel, &e).await;
                continue;
            }
        }
        tokio::select! {
            () = cancel.cancelled() => {}
            woken = w.wait(config.assembly.poll_interval) => match woken {
                Ok(Woken::Notified) | Ok(Woken::Timeout) => {
                    // a notification about new deliveries (from another sidecar) concerns the dispatcher too
                    deliveries_due.notify_one();
                }
                Err(e) => listening.failed(&cancel, "waiting for notifications", &e).await,
            },
        }
    }
}

/// A batch of changes failed: counted, shown in readiness, logged in the words `/readyz` points
/// to, and retried on a new connection after the backoff.
async fn batch_failed(
    connection: &mut Reconnecting<Sessions>,
    health: &Health,
    cancel: &CancellationToken,
    error: &(dyn std::error::Error + Send + Sync + 'static),
) {
    let failures = connection.failures() + 1;
    counter!(m::BATCH_FAILURES).increment(1);
    health.set_failing_batches(failures);
    error!(error = %crate::error_chain(error), retry_in_ms = reconnect_delay(failures).as_millis() as u64,
           "processing a batch of changes failed; it will be retried");
    connection.back_off(cancel).await;
}

/// Makes the wake-up connection (LISTEN, and the sleep lock) for [`Reconnecting`].
struct Listen(Database);

impl Connect for Listen {
    type Connection = WakeUp;
    type Error = WakeUpError;
    fn connect(&self) -> impl Future<Output = Result<WakeUp, WakeUpError>> + Send {
        WakeUp::connect(&self.0)
    }
}

/// How often, while changes arrive, the capture's BRIN indexes are summarized (see
/// [`summarize_capture`]).
const SUMMARIZE_EVERY: Duration = Duration::from_secs(1);

/// Summarizes the full block ranges of the capture's BRIN indexes (`netbox_outbox.summarize_capture`,
/// V4). Ranges that are not summarized match every batch's lookup, and autovacuum summarizes them
/// only on its next round: under a steady stream of changes every batch would read up to a minute
/// of changes again. A failure only costs speed, so it is logged, not raised.
async fn summarize_capture(db: &tokio_postgres::Client) {
    // never wait behind autovacuum, which holds the same lock while it works on a partition
    let result = db
        .batch_execute(
            "begin; set local lock_timeout = '20ms'; select netbox_outbox.summarize_capture(); commit",
        )
        .await;
    if let Err(error) = result {
        let _ = db.batch_execute("rollback").await;
        debug!(error = %crate::error_chain(&error), "summarizing the capture's indexes skipped");
    }
}

/// Logs and counts the TRUNCATEs of watched tables recorded since the last look (V7's
/// `netbox_outbox.truncation`). NetBox sends no webhook for a TRUNCATE, and neither do we: the
/// rows are gone without a trace of what they were, so this warning is all there is. A failure
/// leaves the rows for the next look.
async fn report_truncations(db: &tokio_postgres::Client) {
    match db
        .query(
            "select table_name, truncated_at::text, db_user, application_name
             from netbox_outbox.report_truncations()",
            &[],
        )
        .await
    {
        Ok(rows) => {
            for row in rows {
                let (table, at, db_user, application): (String, String, String, String) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                warn!(
                    table,
                    truncated_at = at,
                    db_user,
                    application_name = application,
                    "a watched table was truncated: its rows are gone and no webhooks were sent \
                       for them (NetBox sends none for a TRUNCATE either)"
                );
                counter!(m::TRUNCATIONS, "table" => table).increment(1);
            }
        }
        Err(error) => {
            warn!(error = %crate::error_chain(&error), "could not read the recorded truncations; retrying later")
        }
    }
}

/// One batch of retention of finished deliveries, and its size (see `netbox_outbox.prune_deliveries`).
pub const PRUNE_DELIVERIES: &str = "select netbox_outbox.prune_deliveries($1)";
pub const PRUNE_BATCH: i32 = 2000;

/// Heartbeat, capture self-healing, retention and sampled gauges.
async fn housekeeping(
    database: Database,
    identity: Identity,
    health: Arc<Health>,
    cancel: CancellationToken,
) {
    let mut ticks: u64 = 0;
    let mut connection = Reconnecting::new("housekeeping", database);
    while !cancel.is_cancelled() {
        // One attempt per heartbeat: nothing here is urgent enough to wait for the database.
        if let Some(db) = connection.try_connect().await {
            let result: Result<(), tokio_postgres::Error> = async {
                db.execute(
                    "update netbox_outbox.sidecar set last_seen_at = now() where id = $1",
                    &[&identity.id],
                )
                .await?;
                health.sample_gauges(db).await?;
                if ticks.is_multiple_of(6) {
                    for row in db
                        .query("select action, table_name from netbox_outbox.sync()", &[])
                        .await?
                    {
                        let (action, table): (String, String) = (row.get(0), row.get(1));
                        info!(action, table, "capture trigger synchronised");
                    }
                }
                if ticks.is_multiple_of(30) {
                    // Finished deliveries first, one bounded batch per transaction (see
                    // netbox_outbox.prune_deliveries), then the day slots and the rest.
                    let mut pruned = 0i64;
                    loop {
                        let started = Instant::now();
                        let n: i64 = db
                            .query_one(PRUNE_DELIVERIES, &[&PRUNE_BATCH])
                            .await?
                            .get(0);
                        pruned += n;
                        if n == 0 || cancel.is_cancelled() {
                            break;
                        }
                        // Rest as long as the batch took: retention is never urgent, and
                        // back-to-back deletes made claims wait behind their WAL (claim p99
                        // x42 measured, see docs/benchmarks.md).
                        pause(&cancel, started.elapsed()).await;
                    }
                    if pruned > 0 {
                        info!(deliveries = pruned, "retention: finished deliveries pruned");
                    }
                    for row in db
                        .query(
                            "select table_name, slot, truncated from netbox_outbox.prune()",
                            &[],
                        )
                        .await?
                    {
                        let (table, slot, truncated): (String, Option<i16>, bool) =
                            (row.get(0), row.get(1), row.get(2));
                        if slot.is_some() {
                            info!(table, slot, truncated, "retention: day slot pruned");
                        }
                    }
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => connection.succeeded(),
                Err(e) => {
                    connection
                        .failed(&cancel, "heartbeat, retention or sampling", &e)
                        .await
                }
            }
        }
        ticks += 1;
        pause(&cancel, HEARTBEAT).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        Config::from_toml(toml, "test", std::iter::empty()).unwrap()
    }

    #[test]
    fn only_what_shapes_the_output_is_compared_and_each_difference_is_named() {
        let here = fingerprint(&config(
            "[delivery]\npayload_format = \"legacy\"\nconcurrency = 4\n[delivery.payload_format_by_webhook]\ncrm = \"netbox-4.7\"\n",
        ));
        let there = fingerprint(&config("[delivery]\nconcurrency = 64\n"));
        assert_eq!(
            differences(&here, &there),
            vec![
                "delivery.payload_format is \"legacy\" here and \"netbox-4.7\" there".to_string(),
                "delivery.payload_format_by_webhook is { \"crm\" = \"netbox-4.7\" } here and {} there"
                    .to_string(),
            ]
        );
        // timing and concurrency may differ freely
        assert!(
            differences(
                &there,
                &fingerprint(&config("[delivery]\nconcurrency = 2\n"))
            )
            .is_empty()
        );
    }
}
