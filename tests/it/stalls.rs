//! What used to pass silently is visible: a stall shows in /metrics and /readyz and the alert
//! examples of docs/install.md fire and clear; backlog gauges return to 0; a TRUNCATE is logged
//! and counted; sidecars with different configurations do not share a database; numbers beyond
//! u64 and f64 are sent as NetBox sends them.
//!
//! Metrics tests run the real binary: the metrics recorder is process-wide, and the other tests
//! of this binary run sidecars in parallel.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use netbox_outbox::commands::receive::{Receiver, Reply};
use tokio_postgres::Client;

use crate::support::binary::SidecarBinary;
use crate::support::db::{TestDb, insert_site};
use crate::support::rules::{Rule, webhook};
use crate::support::sidecar::{Sidecar, test_config};
use crate::support::wait::eventually;

const WAIT: Duration = Duration::from_secs(30);

const FAST: &str = "[delivery]\npoll_interval = \"50ms\"\nretry_schedule = [\"200ms\", \"400ms\"]\n\
                    retry_jitter = 0.0\npause_after_failures = 0\n[assembly]\npoll_interval = \"50ms\"\n\
                    [rules]\nrefresh_interval = \"0s\"\n[metrics]\nlisten = \"\"\nstall_after = \"1s\"\n";

/// A config file: [`FAST`] with `extra` (TOML) laid over it, table by table.
fn config_file(extra: &str) -> PathBuf {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (key, value) in from {
            match (into.get_mut(&key), value) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, value) => {
                    into.insert(key, value);
                }
            }
        }
    }
    let mut table: toml::Table = FAST.parse().unwrap();
    merge(&mut table, extra.parse().expect("extra config is TOML"));
    let path = std::env::temp_dir().join(format!("nbo-stalls-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, table.to_string()).unwrap();
    path
}

// ---- the sidecar binary, its log and its endpoint ---------------------------------------------

/// The sidecar binary, with its log in a file and (unless `metrics` is false) its endpoint on a
/// free port.
struct Running {
    binary: SidecarBinary,
    base: String,
    http: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Running {
    fn start(db: &TestDb, toml: &str) -> Running {
        let port = free_port();
        let config = config_file(&format!(
            "{toml}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
        ));
        Running {
            binary: SidecarBinary::start(db, &config),
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    fn log(&self) -> String {
        self.binary.log()
    }

    /// One scrape of /metrics: `series -> value`, series as written (`name{labels}`).
    async fn scrape(&self) -> Option<Metrics> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(Metrics::parse(&text))
    }

    /// /readyz: its status and body.
    async fn readyz(&self) -> Option<(u16, String)> {
        let response = self
            .http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// The alerts of docs/install.md that fire now.
    async fn firing(&self, alerts: &[Alert], baseline: &Metrics) -> Option<Vec<String>> {
        let metrics = self.scrape().await?;
        let (status, _) = self.readyz().await?;
        Some(
            alerts
                .iter()
                .filter(|a| a.fires(&metrics, baseline, status == 200))
                .map(|a| a.name.clone())
                .collect(),
        )
    }
}

/// A scrape of the Prometheus text format.
#[derive(Debug, Default, Clone)]
struct Metrics(HashMap<String, f64>);

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut samples = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            samples.insert(series.to_string(), value.parse().expect("a number"));
        }
        Metrics(samples)
    }

    /// The value of one series (`name` or `name{label="value"}`), if present.
    fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// Every value of a metric, whatever its labels.
    fn all(&self, name: &str) -> Vec<f64> {
        self.0
            .iter()
            .filter(|(series, _)| series.split('{').next() == Some(name))
            .map(|(_, v)| *v)
            .collect()
    }
}

// ---- the alert examples of docs/install.md ----------------------------------------------------

/// One documented alert: `- alert: NAME` then `expr: EXPR`.
#[derive(Debug, Clone)]
struct Alert {
    name: String,
    expr: String,
}

/// The alert examples, read from the docs so that an example that no longer fires or clears
/// fails this test.
fn documented_alerts() -> Vec<Alert> {
    let docs = include_str!("../../docs/install.md");
    let mut alerts = Vec::new();
    let mut lines = docs.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.trim().strip_prefix("- alert:") {
            let name = rest.split('#').next().unwrap().trim().to_string();
            let expr = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("expr:"))
                .unwrap_or_else(|| panic!("alert {name} has no expr line"))
                .trim()
                .to_string();
            alerts.push(Alert { name, expr });
        }
    }
    assert!(
        alerts.len() >= 5,
        "the docs lost their alert examples: {alerts:?}"
    );
    alerts
}

/// Production thresholds are minutes; the test's stalls last seconds. Each threshold is scaled
/// to the test's timescale, the rest of the expression evaluated as written.
fn scaled(threshold: f64) -> f64 {
    match threshold {
        t if t >= 60.0 => 0.5,
        t => t,
    }
}

impl Alert {
    /// Evaluates the forms the examples use: `max(m) OP N`, `m OP N`, `increase(m[w]) OP N`
    /// (against the scrape at the test's start) and `probe_success{...} == 0` (a blackbox probe
    /// of /readyz).
    fn fires(&self, now: &Metrics, baseline: &Metrics, ready: bool) -> bool {
        let expr = self.expr.as_str();
        if expr.starts_with("probe_success") {
            assert!(expr.ends_with("== 0"), "unknown probe form: {expr}");
            return !ready;
        }
        let (lhs, op, rhs) = [">=", ">", "=="]
            .iter()
            .find_map(|op| expr.split_once(op).map(|(l, r)| (l.trim(), *op, r.trim())))
            .unwrap_or_else(|| panic!("unknown alert form: {expr}"));
        let threshold = scaled(
            rhs.parse()
                .unwrap_or_else(|_| panic!("threshold in {expr}")),
        );
        let values: Vec<f64> = if let Some(metric) = lhs
            .strip_prefix("increase(")
            .and_then(|r| r.split('[').next())
        {
            let sum = |m: &Metrics| m.all(metric).iter().sum::<f64>();
            vec![sum(now) - sum(baseline)]
        } else if let Some(metric) = lhs.strip_prefix("max(").and_then(|r| r.strip_suffix(')')) {
            now.all(metric)
                .into_iter()
                .reduce(f64::max)
                .into_iter()
                .collect()
        } else {
            now.all(lhs)
        };
        values.iter().any(|v| match op {
            ">=" => *v >= threshold,
            ">" => *v > threshold,
            _ => *v == threshold,
        })
    }
}

async fn site_rule(client: &Client, name: &str, url: &str) -> i64 {
    Rule::new(name, url).create(client).await.webhook
}

/// Waits until the receiver got a request on `path` for the site `name`.
async fn delivered(receiver: &Receiver, path: &str, name: &str) {
    eventually(&format!("{path} to get site {name}"), WAIT, || async {
        receiver
            .received()
            .iter()
            .any(|r| r.path == path && r.json()["data"]["name"] == name)
            .then_some(())
    })
    .await
}

// ---- stalls -----------------------------------------------------------------------------------

/// A lock held on the read position stalls the assembler: the unread-changes gauge and the
/// oldest unread change's age rise, /readyz says 503 and why, the documented alerts for it fire;
/// deliveries already made keep going out meanwhile. Released, everything is read, the gauges
/// return to 0, /readyz to 200 and the alerts clear.
#[tokio::test]
async fn a_stall_shows_in_gauges_readyz_and_alerts_then_clears() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    site_rule(&client, "crm", &receiver.url("/crm")).await;
    // the unrelated delivery: its first attempt fails, its retry comes during the stall
    receiver.script_path("/crm", [Reply::Status(503), Reply::Status(503)]);
    let sidecar = Running::start(
        &db,
        "[delivery]\nretry_schedule = [\"1s\", \"1s\", \"1s\"]\n",
    );
    let alerts = documented_alerts();
    let baseline = eventually("the first scrape", WAIT, || sidecar.scrape()).await;
    insert_site(&client, "before").await;
    first_attempt_failed(&client).await;

    let mut holder = db.client().await;
    let stall = holder.transaction().await.unwrap();
    stall
        .execute("select * from netbox_outbox.cursor for update", &[])
        .await
        .unwrap();
    for name in ["s1", "s2", "s3"] {
        insert_site(&client, name).await;
    }
    let stalled = eventually("the stall to show in the gauges", WAIT, || async {
        let m = sidecar.scrape().await?;
        (m.get("netbox_outbox_unread_changes")? >= 3.0
            && m.get("netbox_outbox_oldest_unread_seconds")? > 1.0)
            .then_some(m)
    })
    .await;
    assert_eq!(
        stalled.get("netbox_outbox_failing_batches").unwrap_or(0.0),
        0.0,
        "a waiting batch has not failed"
    );
    let (status, body) = sidecar.readyz().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("changes are not being read: 3 unread"),
        "{body}"
    );
    let firing = eventually("the stall alerts to fire", WAIT, || async {
        let firing = sidecar.firing(&alerts, &baseline).await?;
        (firing.contains(&"NetboxOutboxChangesUnread".to_string())
            && firing.contains(&"NetboxOutboxNotReady".to_string()))
        .then_some(firing)
    })
    .await;
    assert!(
        !firing.contains(&"NetboxOutboxBatchesFailing".to_string()),
        "{firing:?}"
    );
    // the dispatcher is not the assembler: the retry goes out during the stall
    delivered(&receiver, "/crm", "before").await;
    assert!(
        !receiver
            .received()
            .iter()
            .any(|r| r.json()["data"]["name"] == "s1"),
        "nothing read during the stall"
    );

    stall.rollback().await.unwrap();
    for name in ["s1", "s2", "s3"] {
        delivered(&receiver, "/crm", name).await;
    }
    let m = eventually("the gauges to return to 0", WAIT, || async {
        let m = sidecar.scrape().await?;
        (m.get("netbox_outbox_unread_changes")? == 0.0
            && m.get("netbox_outbox_oldest_unread_seconds")? == 0.0
            && m.get("netbox_outbox_backlog{webhook=\"crm\"}")? == 0.0)
            .then_some(m)
    })
    .await;
    assert_eq!(
        m.get("netbox_outbox_oldest_pending_seconds{webhook=\"crm\"}"),
        Some(0.0)
    );
    eventually("readyz to answer 200 again", WAIT, || async {
        (sidecar.readyz().await?.0 == 200).then_some(())
    })
    .await;
    eventually("every alert to clear", WAIT, || async {
        sidecar
            .firing(&alerts, &baseline)
            .await?
            .is_empty()
            .then_some(())
    })
    .await;
}

/// Batches that fail again and again (here: the read position's table is missing) show in
/// netbox_outbox_failing_batches and /readyz, and the documented alert fires, while deliveries
/// made before keep going out; once the cause is fixed the batch goes through, and all of it
/// clears.
#[tokio::test]
async fn failing_batches_show_in_metrics_and_readyz_then_clear() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    site_rule(&client, "crm", &receiver.url("/crm")).await;
    receiver.script_path("/crm", [Reply::Status(503), Reply::Status(503)]);
    let sidecar = Running::start(
        &db,
        "[delivery]\nretry_schedule = [\"1s\", \"1s\", \"1s\"]\n",
    );
    let alerts = documented_alerts();
    let baseline = eventually("the first scrape", WAIT, || sidecar.scrape()).await;
    insert_site(&client, "before").await;
    first_attempt_failed(&client).await;
    client
        .batch_execute("alter table netbox_outbox.cursor rename to cursor_away")
        .await
        .unwrap();
    insert_site(&client, "x").await;
    let m = eventually("failing batches in the metrics", WAIT, || async {
        let m = sidecar.scrape().await?;
        (m.get("netbox_outbox_failing_batches")? >= 3.0).then_some(m)
    })
    .await;
    assert!(m.get("netbox_outbox_batch_failures_total").unwrap() >= 3.0);
    let (status, body) = sidecar.readyz().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("batches of changes failed"), "{body}");
    assert!(
        sidecar
            .log()
            .contains("processing a batch of changes failed")
    );
    let firing = sidecar.firing(&alerts, &baseline).await.unwrap();
    assert!(
        firing.contains(&"NetboxOutboxBatchesFailing".to_string()),
        "{firing:?}"
    );
    delivered(&receiver, "/crm", "before").await;

    client
        .batch_execute("alter table netbox_outbox.cursor_away rename to cursor")
        .await
        .unwrap();
    delivered(&receiver, "/crm", "x").await;
    eventually("every alert to clear", WAIT, || async {
        let m = sidecar.scrape().await?;
        let firing = sidecar.firing(&alerts, &baseline).await?;
        (m.get("netbox_outbox_failing_batches")? == 0.0 && firing.is_empty()).then_some(())
    })
    .await;
}

/// A batch whose delivery meets a queue head changed under its REPEATABLE READ snapshot (the
/// recorder moved the head while the batch's insert waited for it: a serialization failure) is
/// run again at once: counted in netbox_outbox_batch_conflicts_total, not as a failing batch,
/// nothing logged at warn level or above, and its delivery is stored.
#[tokio::test]
async fn a_batch_that_meets_a_moved_queue_head_runs_again_at_once() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    site_rule(&client, "crm", &receiver.url("/crm")).await;
    let sidecar = Running::start(&db, "");
    let site = insert_site(&client, "s").await;
    delivered(&receiver, "/crm", "s").await;
    // A delivery of the site due in an hour gives its queue a head that stays.
    client
        .execute(
            "insert into netbox_outbox.delivery (event_id, event_rule_id, event_rule_name, webhook_id,
                 webhook_name, content_type_id, object_id, seq, timeout_ms, ssl_verification,
                 next_attempt_at)
             select event_id, event_rule_id, event_rule_name, webhook_id, webhook_name,
                    content_type_id, object_id, seq + 1000, timeout_ms, ssl_verification,
                    now() + interval '1 hour'
             from netbox_outbox.delivery where object_id = $1",
            &[&site],
        )
        .await
        .unwrap();
    // The recorder's part: the head locked, as refresh_queue_head() locks it.
    let mut recorder = db.client().await;
    let recording = recorder.transaction().await.unwrap();
    recording
        .execute(
            "select 1 from netbox_outbox.queue_head where object_id = $1 for update",
            &[&site],
        )
        .await
        .unwrap();
    client
        .execute(
            "update dcim_site set description = 'moved', last_updated = now() where id = $1",
            &[&site],
        )
        .await
        .unwrap();
    eventually("the batch's insert to wait for the head", WAIT, || async {
        let waiting: i64 = client
            .query_one(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and application_name = 'netbox-outbox'
                   and wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (waiting > 0).then_some(())
    })
    .await;
    recording
        .execute(
            "update netbox_outbox.queue_head set next_attempt_at = next_attempt_at + interval '1 second'
             where object_id = $1",
            &[&site],
        )
        .await
        .unwrap();
    recording.commit().await.unwrap();

    eventually("the update's delivery to be stored", WAIT, || async {
        let n: i64 = client
            .query_one(
                "select count(*) from netbox_outbox.delivery d join netbox_outbox.event e on e.id = d.event_id
                 where d.object_id = $1 and e.event = 'updated'",
                &[&site],
            )
            .await
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    let m = eventually("the conflict in the metrics", WAIT, || async {
        let m = sidecar.scrape().await?;
        (m.get("netbox_outbox_batch_conflicts_total")? >= 1.0).then_some(m)
    })
    .await;
    assert_eq!(
        m.get("netbox_outbox_batch_failures_total").unwrap_or(0.0),
        0.0
    );
    assert_eq!(m.get("netbox_outbox_failing_batches").unwrap_or(0.0), 0.0);
    let log = sidecar.log();
    assert!(!log.contains("ERROR") && !log.contains("WARN"), "{log}");
}

async fn first_attempt_failed(client: &Client) {
    eventually("a first attempt to fail", WAIT, || async {
        let n: i64 = client
            .query_one("select count(*) from netbox_outbox.attempt", &[])
            .await
            .unwrap()
            .get(0);
        (n >= 1).then_some(())
    })
    .await
}

/// A webhook whose receiver fails builds a backlog: its gauges rise and the backlog alert
/// fires while another webhook delivers. When it drains, its gauges drop to 0 (they used to
/// keep their last value, so alerts never cleared). A deleted webhook's gauges drop to 0 too
/// once its last delivery is finished.
#[tokio::test]
async fn backlog_gauges_drop_to_zero_when_a_webhook_drains_and_when_it_is_deleted() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    site_rule(&client, "good", &receiver.url("/good")).await;
    site_rule(&client, "slow", &receiver.url("/slow")).await;
    // a rejected delivery is counted by its reason (and never sits in a backlog)
    site_rule(&client, "bad", "ftp://{{ data.name }}/").await;
    let gone = site_rule(&client, "gone", &receiver.url("/gone")).await;
    receiver.script_path("/slow", (0..3).map(|_| Reply::Status(503)));
    receiver.script_path("/gone", (0..100).map(|_| Reply::Status(503)));
    let sidecar = Running::start(
        &db,
        "[delivery]\nretry_schedule = [\"700ms\", \"700ms\", \"700ms\", \"700ms\", \"700ms\"]\n",
    );
    let alerts = documented_alerts();
    let baseline = eventually("the first scrape", WAIT, || sidecar.scrape()).await;
    insert_site(&client, "alpha").await;
    let m = eventually("the backlogs to show", WAIT, || async {
        let m = sidecar.scrape().await?;
        (m.get("netbox_outbox_backlog{webhook=\"slow\"}")? == 1.0
            && m.get("netbox_outbox_backlog{webhook=\"gone\"}")? == 1.0
            && m.get("netbox_outbox_oldest_pending_seconds{webhook=\"slow\"}")? > 0.5)
            .then_some(m)
    })
    .await;
    assert!(
        m.get("netbox_outbox_oldest_pending_seconds{webhook=\"gone\"}")
            .unwrap()
            > 0.5
    );
    assert_eq!(
        m.get("netbox_outbox_deliveries_rejected_total{reason=\"payload_url\"}"),
        Some(1.0)
    );
    let firing = sidecar.firing(&alerts, &baseline).await.unwrap();
    assert!(
        firing.contains(&"NetboxOutboxBacklogOld".to_string()),
        "{firing:?}"
    );
    delivered(&receiver, "/good", "alpha").await;

    // slow drains: its gauges are 0, not the last value seen
    delivered(&receiver, "/slow", "alpha").await;
    eventually("slow's gauges to drop to 0", WAIT, || async {
        let m = sidecar.scrape().await?;
        (m.get("netbox_outbox_backlog{webhook=\"slow\"}")? == 0.0
            && m.get("netbox_outbox_oldest_pending_seconds{webhook=\"slow\"}")? == 0.0)
            .then_some(())
    })
    .await;

    // gone is deleted: its pending delivery still runs out its attempts, then its gauges are 0
    client
        .execute("delete from extras_eventrule where name = 'gone'", &[])
        .await
        .unwrap();
    client
        .execute("delete from extras_webhook where id = $1", &[&gone])
        .await
        .unwrap();
    let m = eventually("gone's gauges to drop to 0", WAIT, || async {
        let m = sidecar.scrape().await?;
        (m.get("netbox_outbox_backlog{webhook=\"gone\"}")? == 0.0
            && m.get("netbox_outbox_oldest_pending_seconds{webhook=\"gone\"}")? == 0.0)
            .then_some(m)
    })
    .await;
    assert_eq!(m.get("netbox_outbox_dead_deliveries"), Some(1.0));
    let (state, error): (String, String) = {
        let row = client
            .query_one(
                "select state, coalesce(last_error, '') from netbox_outbox.delivery where webhook_name = 'gone'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(state, "dead", "{error}");
    // what still fires is the dead delivery, which asks for a replay; the backlog alert cleared
    let firing = sidecar.firing(&alerts, &baseline).await.unwrap();
    assert_eq!(firing, vec!["NetboxOutboxDeadDeliveries".to_string()]);
    insert_site(&client, "beta").await;
    delivered(&receiver, "/good", "beta").await;
}

// ---- TRUNCATE ----------------------------------------------------------------------------------

/// A TRUNCATE of a watched table sends nothing (NetBox sends nothing for it), but it is logged
/// as a warning naming the table and counted, while another webhook keeps delivering. sync()
/// restores a missing TRUNCATE trigger.
#[tokio::test]
async fn truncate_is_logged_and_counted_while_others_deliver() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    site_rule(&client, "crm", &receiver.url("/crm")).await;
    // an install from before V7 lacks the trigger: sync() adds it
    client
        .batch_execute("drop trigger netbox_outbox_capture_truncate on dcim_site")
        .await
        .unwrap();
    let synced: Vec<(String, String)> = client
        .query("select action, table_name from netbox_outbox.sync()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        synced,
        vec![("refreshed".to_string(), "dcim_site".to_string())]
    );

    let sidecar = Running::start(&db, "");
    for name in ["a", "b", "c"] {
        insert_site(&client, name).await;
    }
    for name in ["a", "b", "c"] {
        delivered(&receiver, "/crm", name).await;
    }
    client.batch_execute("truncate dcim_site").await.unwrap();
    insert_site(&client, "after").await;
    delivered(&receiver, "/crm", "after").await;
    let m = eventually("the truncation to be counted", WAIT, || async {
        let m = sidecar.scrape().await?;
        (m.get("netbox_outbox_truncations_total{table=\"dcim_site\"}")? == 1.0).then_some(m)
    })
    .await;
    assert!(m.get("netbox_outbox_changes_read_total").is_some());
    let log = sidecar.log();
    assert!(
        log.lines()
            .any(|l| l.contains("a watched table was truncated") && l.contains("dcim_site")),
        "{log}"
    );
    let reported: i64 = client
        .query_one(
            "select count(*) from netbox_outbox.truncation where table_name = 'dcim_site' and reported_at is not null",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reported, 1);
    // nothing was sent for the truncated rows: a, b, c created, then "after"
    assert_eq!(receiver.received().len(), 4);
}

/// The TRUNCATE trigger runs in the truncating transaction: when it cannot record, the TRUNCATE
/// still succeeds (with a warning) and nothing else stops.
#[tokio::test]
async fn a_truncate_that_cannot_be_recorded_still_succeeds() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    insert_site(&client, "x").await;
    client
        .batch_execute("alter table netbox_outbox.truncation rename to truncation_away")
        .await
        .unwrap();
    client
        .batch_execute("truncate dcim_site")
        .await
        .expect("the TRUNCATE succeeds although it cannot be recorded");
    let left: i64 = client
        .query_one("select count(*) from dcim_site", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

// ---- one configuration per database ------------------------------------------------------------

async fn run_binary(db: &TestDb, toml: &str) -> std::process::Output {
    let config = config_file(toml);
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_netbox-outbox"));
    command
        .args(["run", "--config"])
        .arg(&config)
        .env("DATABASE_URL", db.url())
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(10), command.output())
        .await
        .expect("the sidecar refuses at once")
        .expect("run netbox-outbox")
}

async fn registered(client: &Client) -> i64 {
    client
        .query_one(
            "select count(*) from netbox_outbox.sidecar where fingerprint is not null",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// A second sidecar whose payload format differs from the running one's refuses to start
/// (exit 3), naming the key and both values; it registers nothing, and the running one keeps
/// delivering.
#[tokio::test]
async fn a_sidecar_with_another_payload_format_refuses_to_start() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    site_rule(&client, "crm", &receiver.url("/crm")).await;
    let running = Sidecar::start(&db, test_config(""));
    eventually("the first sidecar to register", WAIT, || async {
        (registered(&client).await == 1).then_some(())
    })
    .await;

    let refused = run_binary(&db, "[delivery]\npayload_format = \"legacy\"").await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("delivery.payload_format is \"legacy\" here and \"netbox-4.7\" there"),
        "{stderr}"
    );
    assert_eq!(
        registered(&client).await,
        1,
        "the refused sidecar left no row"
    );

    insert_site(&client, "alpha").await;
    delivered(&receiver, "/crm", "alpha").await;
    let bodies = receiver.received();
    assert!(
        bodies.iter().all(|r| r.json().get("object_type").is_some()),
        "only 4.7 payloads"
    );
    running.stop().await;
}

/// Sidecars that stopped, or whose heartbeat is stale (killed, or cut off from the database),
/// do not count: a sidecar with another configuration starts and delivers.
#[tokio::test]
async fn a_stale_or_stopped_sidecar_does_not_block_another_configuration() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    site_rule(&client, "crm", &receiver.url("/crm")).await;
    client
        .batch_execute(
            "insert into netbox_outbox.sidecar (id, hostname, pid, version, last_seen_at, stopped_at, fingerprint)
             values (gen_random_uuid(), 'old-host', 1, '0', now() - interval '1 hour', null,
                     '{\"delivery.payload_format\": \"\\\"netbox-4.7\\\"\"}'),
                    (gen_random_uuid(), 'stopped-host', 2, '0', now(), now(),
                     '{\"delivery.payload_format\": \"\\\"netbox-4.7\\\"\"}')",
        )
        .await
        .unwrap();
    let sidecar = Running::start(&db, "[delivery]\npayload_format = \"legacy\"\n");
    eventually("the sidecar to register", WAIT, || async {
        (registered(&client).await == 3).then_some(())
    })
    .await;
    insert_site(&client, "alpha").await;
    delivered_legacy(&receiver, "alpha").await;
    assert!(!sidecar.log().contains("differs"), "{}", sidecar.log());
}

async fn delivered_legacy(receiver: &Receiver, name: &str) {
    eventually("a legacy payload", WAIT, || async {
        receiver
            .received()
            .iter()
            .any(|r| r.json()["data"]["name"] == name && r.json().get("model").is_some())
            .then_some(())
    })
    .await
}

// ---- numbers ----------------------------------------------------------------------------------

/// Custom field values as NetBox sends them: an integer above 2^64 keeps its digits, `1e400`
/// (which a jsonb stores as 1 and 400 zeros, an int to Python) is sent whole instead of the
/// event being dropped as "row was gone", `1.50` is the float `1.5`; in `data`, snapshots and
/// templates. A NaN cannot be stored in a custom field (PostgreSQL refuses the write), so
/// nothing is lost: the write fails where NetBox sees it.
#[tokio::test]
async fn custom_field_numbers_are_sent_as_netbox_sends_them() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    site_rule(&client, "crm", &receiver.url("/crm")).await;
    let templated = webhook(
        &client,
        "templated",
        &receiver.url("/templated"),
        &[("body_template", "'{{ data.custom_fields.n }}'")], // a SQL literal
    )
    .await;
    Rule::to_webhook("templated", templated)
        .create(&client)
        .await;
    let cf: i64 = client
        .query_one(
            "insert into extras_customfield (type, name, status) values ('integer', 'n', 'active') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let site_ct = crate::support::db::content_type(&client, "dcim.site").await;
    client
        .execute(
            "insert into extras_customfield_object_types (customfield_id, contenttype_id) values ($1, $2)",
            &[&cf, &site_ct],
        )
        .await
        .unwrap();
    let _sidecar = Sidecar::start(&db, test_config(""));

    let big = "18446744073709551617";
    let huge = format!("1{}", "0".repeat(400));
    for (name, value) in [("big", big), ("huge", "1e400"), ("decimal", "1.50")] {
        client
            .execute(
                &format!(
                    "insert into dcim_site (created, last_updated, name, slug, custom_field_data)
                     values (now(), now(), $1, $1, '{{\"n\": {value}}}')"
                ),
                &[&name],
            )
            .await
            .unwrap();
    }
    // an update too: the before-image takes the captured path
    client
        .execute(
            "update dcim_site set description = 'changed', last_updated = now() where name = 'big'",
            &[],
        )
        .await
        .unwrap();
    let nan = client
        .execute(
            "insert into dcim_site (created, last_updated, name, slug, custom_field_data)
             values (now(), now(), 'nan', 'nan', '{\"n\": NaN}')",
            &[],
        )
        .await
        .expect_err("PostgreSQL refuses a NaN in JSON");
    assert!(
        nan.as_db_error()
            .is_some_and(|e| e.message().contains("invalid input syntax for type json")),
        "{nan}"
    );

    let requests = eventually("every webhook", WAIT, || async {
        let got = receiver.received();
        (got.len() >= 8).then_some(got)
    })
    .await;
    let body = |path: &str, name: &str, event: &str| -> String {
        requests
            .iter()
            .find(|r| {
                r.path == path
                    && String::from_utf8_lossy(&r.body).contains(&format!("\"name\": \"{name}\""))
                    && r.json()["event"] == event
            })
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .unwrap_or_else(|| panic!("no {event} for {name} on {path}"))
    };
    let created = body("/crm", "big", "created");
    assert!(
        created.contains(&format!("\"custom_fields\": {{\"n\": {big}}}")),
        "{created}"
    );
    let updated = body("/crm", "big", "updated");
    assert_eq!(
        updated
            .matches(&format!("\"custom_fields\": {{\"n\": {big}}}"))
            .count(),
        3,
        "data, prechange and postchange keep the digits: {updated}"
    );
    let huge_body = body("/crm", "huge", "created");
    assert!(
        huge_body.contains(&format!("\"custom_fields\": {{\"n\": {huge}}}")),
        "{huge_body}"
    );
    let decimal = body("/crm", "decimal", "created");
    assert!(
        decimal.contains("\"custom_fields\": {\"n\": 1.5}"),
        "{decimal}"
    );
    let bodies: Vec<String> = requests
        .iter()
        .filter(|r| r.path == "/templated")
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    for want in [big.to_string(), huge.clone(), "1.5".to_string()] {
        assert!(bodies.contains(&want), "{want} in {bodies:?}");
    }
    let vanished: i64 = client
        .query_one(
            "select count(*) from netbox_outbox.event where object_type = 'dcim.site'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(vanished, 4, "no event dropped");
}

/// Numeric columns as NetBox sends them: `data` holds `float(Decimal)` (`12.3456`, and the bare
/// token `NaN` for a NaN, which PostgreSQL's JSON can only carry as a string), the snapshots
/// `str(Decimal)` with the column's scale (`"12.345600"`, `"NaN"`), and a body template prints
/// the Decimal itself (`12.345600`).
#[tokio::test]
async fn numeric_columns_are_sent_as_netbox_sends_them() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    site_rule(&client, "crm", &receiver.url("/crm")).await;
    let templated = webhook(
        &client,
        "templated",
        &receiver.url("/templated"),
        &[(
            "body_template",
            "'{{ data.latitude }}|{{ data.longitude }}'",
        )], // a SQL literal
    )
    .await;
    Rule::to_webhook("templated", templated)
        .create(&client)
        .await;
    let _sidecar = Sidecar::start(&db, test_config(""));
    client
        .execute(
            "insert into dcim_site (created, last_updated, name, slug, custom_field_data, latitude, longitude)
             values (now(), now(), 'decimals', 'decimals', '{}', 12.3456, 'NaN')",
            &[],
        )
        .await
        .unwrap();
    let requests = eventually("both webhooks", WAIT, || async {
        let got = receiver.received();
        (got.len() >= 2).then_some(got)
    })
    .await;
    let body = |path: &str| -> String {
        requests
            .iter()
            .find(|r| r.path == path)
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .unwrap_or_else(|| panic!("nothing on {path}"))
    };
    let crm = body("/crm");
    assert!(
        crm.contains("\"latitude\": 12.3456, \"longitude\": NaN"),
        "data: {crm}"
    );
    assert!(
        crm.contains("\"latitude\": \"12.345600\", \"longitude\": \"NaN\""),
        "postchange snapshot: {crm}"
    );
    assert_eq!(body("/templated"), "12.345600|NaN");
}
