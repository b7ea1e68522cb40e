//! The chaos suite: a stream of changes while sidecars are SIGKILLed, run two and four at a
//! time, PostgreSQL restarts and receivers fail in every way; then it proves from the
//! receivers' logs and the database that nothing was lost, nothing rolled back was sent, one
//! object's changes arrived in commit order, and every duplicate was in flight at a crash.
//!
//! `cargo test --test chaos` runs the short profile (CI); `CHAOS=full cargo test --test chaos`
//! the long one. See docs/chaos.md.

mod checker;
mod cluster;
mod faults;
mod fleet;
mod receiver;
mod report;
mod workload;

use std::collections::HashMap;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use crate::checker::Evidence;
use crate::cluster::Cluster;
use crate::faults::Profile;
use crate::fleet::Fleet;
use crate::receiver::{Mode, Receiver};
use crate::workload::Writer;

const FIXTURE: &str = include_str!("../fixtures/netbox_schema.sql");

/// The webhooks: one whose receiver suffers every fault but comes back, and one whose receiver
/// is down for good until the end (its deliveries go dead and are replayed).
const STEADY: &str = "steady";
const DOOMED: &str = "doomed";
const ALL_EVENTS: [&str; 3] = ["created", "updated", "deleted"];
/// Only creations, so that the doomed receiver's deliveries do not queue behind each other
/// (each object's wait for its dead letters would add up).
const DOOMED_EVENTS: [&str; 1] = ["created"];

fn main() -> ExitCode {
    // Like a libtest binary: `--list` names the test, a filter that does not match skips it.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("chaos: test");
        return ExitCode::SUCCESS;
    }
    if let Some(filter) = args.iter().find(|a| !a.starts_with('-'))
        && !"chaos".contains(filter.as_str())
    {
        return ExitCode::SUCCESS;
    }

    checker::self_test();
    println!(
        "checker self-test: an injected loss, phantom, wrong event, reordering, duplicate without \
         a crash, duplicate its sender recorded and 2xx the receiver never gave are each caught"
    );
    let profile = Profile::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if runtime.block_on(run(profile)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The receivers and sidecars of one run, on its own cluster.
struct Stage {
    clock: Instant,
    cluster: Arc<Cluster>,
    url: String,
    steady: Receiver,
    doomed: Receiver,
    fleet: Arc<Mutex<Fleet>>,
    /// The sidecars' logs and configuration; kept if the run fails.
    logs: std::path::PathBuf,
}

/// What the stream left behind.
struct Streamed {
    writers: Vec<workload::WriterReport>,
    restarts: Vec<faults::Restart>,
}

async fn run(profile: Profile) -> bool {
    let stage = set_up(&profile).await;
    let profile = Arc::new(profile);
    let streamed = stream(&profile, &stage).await;
    let drained = drain(&profile, &stage).await;
    judge(&profile, &stage, streamed, drained).await
}

/// A cluster, the database, both receivers (the doomed one down), the webhooks and rules, and
/// the first sidecars.
async fn set_up(profile: &Profile) -> Stage {
    let clock = Instant::now();
    println!(
        "chaos ({}): starting a PostgreSQL cluster of its own",
        profile.name
    );
    let cluster = Arc::new(
        tokio::task::spawn_blocking(Cluster::create)
            .await
            .expect("cluster"),
    );
    let logs =
        std::env::temp_dir().join(format!("netbox-outbox-chaos-{}-logs", std::process::id()));
    std::fs::create_dir_all(&logs).expect("a directory for the sidecars' logs");
    let url = cluster.url("netbox");
    let client = prepare_database(&cluster).await;

    let steady = Receiver::start(STEADY, clock);
    let doomed = Receiver::start(DOOMED, clock);
    doomed.set_mode(Mode::Down).await;
    add_webhook(&client, &steady, &ALL_EVENTS).await;
    add_webhook(&client, &doomed, &DOOMED_EVENTS).await;

    let config = logs.join("netbox-outbox.toml");
    std::fs::write(&config, profile.sidecar_config()).expect("write the sidecars' config");
    let fleet = Arc::new(Mutex::new(Fleet::new(
        config,
        url.clone(),
        logs.clone(),
        clock,
    )));
    fleet.lock().unwrap().resize(profile.fleet[0].1);
    Stage {
        clock,
        cluster,
        url,
        steady,
        doomed,
        fleet,
        logs,
    }
}

/// The writers for the profile's time, with the faults striking alongside.
async fn stream(profile: &Arc<Profile>, stage: &Stage) -> Streamed {
    println!(
        "chaos ({}): {} writers for {}s while the faults strike",
        profile.name,
        profile.writers,
        profile.stream.as_secs()
    );
    let stop = CancellationToken::new();
    // Held around a database restart: no sidecar is killed or started meanwhile.
    let calm = Arc::new(tokio::sync::Mutex::new(()));
    let mut writers = Vec::new();
    for id in 1..=profile.writers {
        let writer = Writer::new(id, &stage.url).await;
        writers.push(tokio::spawn(writer.run(stop.clone(), profile.pace)));
    }
    let mut probe = Writer::new(0xfff, &stage.url).await;
    let probe_object = probe.create_one().await;
    let killer = tokio::spawn({
        let (p, f, c, s) = (
            profile.clone(),
            stage.fleet.clone(),
            calm.clone(),
            stop.clone(),
        );
        let clock = stage.clock;
        async move { faults::kill_sidecars(&p, f, c, clock, s).await }
    });
    let receiver_faults = tokio::spawn(faults::play_receiver(
        stage.steady.clone(),
        profile.receiver.clone(),
        stop.clone(),
    ));
    let restarts = tokio::spawn({
        let (p, cl, c, f, r, s) = (
            profile.clone(),
            stage.cluster.clone(),
            calm.clone(),
            stage.fleet.clone(),
            stage.steady.clone(),
            stop.clone(),
        );
        let clock = stage.clock;
        async move { faults::restart_database(&p, cl, c, f, probe, probe_object, r, clock, s).await }
    });
    tokio::time::sleep(profile.stream).await;
    stop.cancel();
    let mut reports = Vec::new();
    for w in writers {
        reports.push(w.await.expect("a writer"));
    }
    killer.await.expect("the sidecar killer");
    receiver_faults.await.expect("the receiver's faults");
    Streamed {
        writers: reports,
        restarts: restarts.await.expect("the database restarts"),
    }
}

/// What the drain found.
struct Drained {
    /// Deliveries to the doomed receiver that went dead, and how many were replayed.
    dead: i64,
    replayed: i64,
    /// What did not finish in time.
    unfinished: Vec<String>,
}

/// Faults over: two sidecars finish everything; the doomed receiver's dead deliveries are
/// replayed once it is back.
async fn drain(profile: &Profile, stage: &Stage) -> Drained {
    println!("chaos ({}): faults over; draining", profile.name);
    let client = connect(&stage.url).await;
    stage.fleet.lock().unwrap().resize(2);
    let deadline = tokio::time::Instant::now() + profile.drain;
    let mut unfinished = Vec::new();
    if !settled(&client, deadline).await {
        unfinished.push("the sidecars did not finish within the drain time".to_string());
    }
    let dead: i64 = scalar(
        &client,
        &format!(
            "select count(*) from netbox_outbox.delivery where webhook_name = '{DOOMED}' and state = 'dead'"
        ),
    )
    .await;
    stage.doomed.set_mode(Mode::Up).await;
    let replayed: i64 = scalar(
        &client,
        &format!("select count(*) from netbox_outbox.replay(webhook => '{DOOMED}')"),
    )
    .await;
    if !settled(&client, deadline).await {
        unfinished.push("the replayed deliveries did not finish within the drain time".to_string());
    }
    stage.fleet.lock().unwrap().kill_all();
    Drained {
        dead,
        replayed,
        unfinished,
    }
}

/// Gathers the evidence, runs the checker and the database's checks, prints the report.
async fn judge(profile: &Profile, stage: &Stage, streamed: Streamed, drained: Drained) -> bool {
    let client = connect(&stage.url).await;
    let mut arrivals = stage.steady.arrivals();
    arrivals.extend(stage.doomed.arrivals());
    let (kills, fleet_sizes, unexpected_exits) = {
        let f = stage.fleet.lock().unwrap();
        (f.kills.clone(), f.sizes.clone(), f.unexpected_exits.clone())
    };
    let evidence = Evidence {
        committed: workload::ledger(&client).await,
        webhooks: vec![
            (STEADY.into(), ALL_EVENTS.map(String::from).to_vec()),
            (DOOMED.into(), DOOMED_EVENTS.map(String::from).to_vec()),
        ],
        arrivals,
        kills: kills.clone(),
        outages: streamed.restarts.iter().map(|r| (r.down, r.up)).collect(),
        recorded: recorded_successes(&client).await,
    };
    let verdict = checker::check(&evidence);
    let mut database = drained.unfinished;
    database.extend(database_findings(&client, drained.replayed).await);
    let coverage = coverage(
        profile,
        &verdict,
        &kills,
        &fleet_sizes,
        &streamed.restarts,
        drained.dead,
        drained.replayed,
    );
    let run = report::Run {
        profile: profile.name,
        duration: stage.clock.elapsed(),
        writers: streamed.writers,
        changes: evidence.committed.len(),
        kills: kills.len(),
        fleet_sizes,
        unexpected_exits,
        restarts: streamed.restarts,
        dead: drained.dead,
        replayed: drained.replayed,
        database,
        coverage,
    };
    report::print(&run, &verdict);
    let passed = run.passed(&verdict);
    if passed {
        let _ = std::fs::remove_dir_all(&stage.logs);
    } else {
        explain_losses(&client, &verdict.lost).await;
        println!("sidecar logs and config kept in {}", stage.logs.display());
        stage.cluster.keep();
    }
    passed
}

/// The NetBox-shaped schema (as the integration tests have it), netbox-outbox's migrations
/// applied by the binary, and the workload's ledger and tags.
async fn prepare_database(cluster: &Cluster) -> Client {
    connect(&cluster.url("postgres"))
        .await
        .batch_execute("create database netbox")
        .await
        .expect("create the chaos database");
    let client = connect(&cluster.url("netbox")).await;
    client
        .batch_execute(FIXTURE)
        .await
        .expect("load the NetBox fixture schema");
    let migrate = Command::new(env!("CARGO_BIN_EXE_netbox-outbox"))
        .arg("migrate")
        .env("DATABASE_URL", cluster.url("netbox"))
        .output()
        .expect("run netbox-outbox migrate");
    assert!(
        migrate.status.success(),
        "netbox-outbox migrate failed: {}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    client
        .batch_execute(workload::SETUP_SQL)
        .await
        .expect("the ledger and tags");
    client
}

/// A NetBox webhook to `receiver` with a 2 s timeout, and a netbox-outbox event rule sending it
/// `events` of sites.
async fn add_webhook(client: &Client, receiver: &Receiver, events: &[&str]) {
    let webhook: i64 = client
        .query_one(
            "insert into extras_webhook (name, payload_url, timeout) values ($1, $2, 2) returning id",
            &[&receiver.name(), &receiver.url()],
        )
        .await
        .expect("insert the webhook")
        .get(0);
    let events: Vec<String> = events.iter().map(|e| format!("object_{e}")).collect();
    client
        .execute(
            "with rule as (
                 insert into extras_eventrule (name, action_type, action_object_type_id, action_object_id, event_types)
                 select $1, 'netbox_outbox.webhook', ct.id, $2, $3
                 from django_content_type ct where ct.app_label = 'extras' and ct.model = 'webhook'
                 returning id)
             insert into extras_eventrule_object_types (eventrule_id, contenttype_id)
             select rule.id, ct.id from rule, django_content_type ct
             where ct.app_label = 'dcim' and ct.model = 'site'",
            &[&receiver.name(), &webhook, &events],
        )
        .await
        .expect("insert the event rule");
}

/// Waits until every committed change has its events and no delivery is pending, or the
/// deadline passes (then the checker names what is missing).
async fn settled(client: &Client, deadline: tokio::time::Instant) -> bool {
    loop {
        let unsettled: i64 = scalar(
            client,
            "select (select count(*) from chaos_ledger l where not exists (
                        select 1 from netbox_outbox.event e
                        where e.request_id = l.marker::uuid and e.object_id = l.object_id))
                  + (select count(*) from netbox_outbox.delivery where state = 'pending')",
        )
        .await;
        if unsettled == 0 {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the database itself shows against the ledger: events without a committed change,
/// deliveries marked delivered without a 2xx attempt, dead deliveries that should not be.
async fn database_findings(client: &Client, replayed: i64) -> Vec<String> {
    let mut findings = Vec::new();
    let checks = [
        (
            "events whose change never committed",
            "select count(*) from netbox_outbox.event e where e.object_type = 'dcim.site' and not exists (
                 select 1 from chaos_ledger l where l.marker::uuid = e.request_id and l.object_id = e.object_id)",
        ),
        (
            "changes turned into more than one event (a batch assembled twice)",
            "select count(*) from (select 1 from netbox_outbox.event where object_type = 'dcim.site'
                 group by request_id, object_id having count(*) > 1) twice",
        ),
        (
            "deliveries marked delivered without a 2xx attempt",
            "select count(*) from netbox_outbox.delivery d where d.state = 'delivered' and not exists (
                 select 1 from netbox_outbox.attempt a where a.delivery_id = d.id and a.status between 200 and 299)",
        ),
        (
            "deliveries still pending",
            "select count(*) from netbox_outbox.delivery where state = 'pending'",
        ),
        (
            "dead deliveries to the receiver that always came back",
            "select count(*) from netbox_outbox.delivery where webhook_name = 'steady' and state = 'dead'",
        ),
        (
            "rejected deliveries",
            "select count(*) from netbox_outbox.delivery where state = 'rejected'",
        ),
    ];
    for (what, sql) in checks {
        let n: i64 = scalar(client, sql).await;
        if n > 0 {
            findings.push(format!("{n} {what}"));
        }
    }
    let delivered_replays: i64 = scalar(
        client,
        "select count(*) from netbox_outbox.delivery where replay_of is not null and state = 'delivered'",
    )
    .await;
    if delivered_replays != replayed {
        findings.push(format!(
            "{replayed} deliveries replayed, {delivered_replays} of them delivered"
        ));
    }
    findings
}

/// The faults the profile promised, checked as having happened: a run that skipped them proves
/// nothing.
fn coverage(
    profile: &Profile,
    verdict: &checker::Verdict,
    kills: &[Duration],
    fleet_sizes: &[usize],
    restarts: &[faults::Restart],
    dead: i64,
    replayed: i64,
) -> Vec<String> {
    let mut missing = Vec::new();
    if kills.len() < 20 {
        missing.push(format!("only {} SIGKILLs (at least 20)", kills.len()));
    }
    for n in [2, 4] {
        if !fleet_sizes.contains(&n) {
            missing.push(format!("never {n} sidecars at once"));
        }
    }
    if restarts.len() < profile.restarts.len() {
        missing.push("a PostgreSQL restart did not happen".to_string());
    }
    for r in restarts {
        match r.resumed_after {
            Some(d) if d <= profile.resume_limit => {}
            other => missing.push(format!(
                "after the restart at {:.0}s, a new change reached the receiver {} (limit {}s)",
                r.down.as_secs_f64(),
                other.map_or("never".to_string(), |d| format!(
                    "after {:.1}s",
                    d.as_secs_f64()
                )),
                profile.resume_limit.as_secs()
            )),
        }
    }
    for outcome in receiver::Outcome::ALL {
        if !verdict
            .outcomes
            .contains_key(&(STEADY.to_string(), outcome))
        {
            missing.push(format!("the receiver never answered {outcome:?}"));
        }
    }
    if dead == 0 || replayed != dead {
        missing.push(format!("{dead} dead deliveries, {replayed} replayed"));
    }
    if verdict.expected == 0 {
        missing.push("no changes".to_string());
    }
    missing
}

/// What the database knows of each lost change: its event, and every delivery of it.
async fn explain_losses(client: &Client, lost: &[(String, String, i64)]) {
    for (webhook, marker, object) in lost.iter().take(20) {
        let rows = client
            .query(
                "select e.id, e.event, e.deliveries, e.created_at::text,
                        coalesce(string_agg(format('%s#%s %s after %s attempts (%s)', d.webhook_name, d.id,
                                 d.state, d.attempts, coalesce(d.last_error, d.last_status::text)), '; '), 'none')
                 from netbox_outbox.event e left join netbox_outbox.delivery d on d.event_id = e.id
                 where e.request_id = $1::text::uuid and e.object_id = $2
                 group by e.id",
                &[marker, object],
            )
            .await
            .unwrap_or_else(|e| {
                println!("  could not look up the lost change {marker}: {e}");
                Vec::new()
            });
        if rows.is_empty() {
            println!("  lost to {webhook}: {marker} object {object}: no event");
        }
        for r in rows {
            println!(
                "  lost to {webhook}: {marker} object {object}: event #{} {} at {} with {} deliveries: {}",
                r.get::<_, i64>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(3),
                r.get::<_, i32>(2),
                r.get::<_, String>(4)
            );
        }
    }
}

/// The delivery log's 2xx attempts, per webhook and delivery id as the receivers see it (a
/// replay carries its original's id: the message id).
async fn recorded_successes(client: &Client) -> HashMap<(String, String), usize> {
    client
        .query(
            "select d.webhook_name, coalesce(d.message_id, d.id)::text, count(*)
             from netbox_outbox.attempt a join netbox_outbox.delivery d on d.id = a.delivery_id
             where a.status between 200 and 299
             group by d.webhook_name, coalesce(d.message_id, d.id)",
            &[],
        )
        .await
        .expect("read the delivery log")
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get::<_, i64>(2) as usize))
        .collect()
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to the chaos cluster ({url}): {e}"));
    tokio::spawn(connection);
    client
}

async fn scalar(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}
