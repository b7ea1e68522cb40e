//! The sidecar's speed, each figure beside a baseline measured in the same run:
//!
//! * `throughput`: deliveries per second from a pre-filled outbox to a local receiver (in its
//!   own process), with 1 KB and 8 KB payloads, signed, built from real rows with related
//!   objects; beside two ceilings: the receiver driven by a plain HTTP client (no database), and
//!   the claim-and-acknowledge loop with no HTTP.
//! * `latency`: changes committed at a steady rate; commit to receipt, p50/p95/p99/max.
//! * `drain`: a backlog of pending changes (a receiver outage, a stopped sidecar): drain rate and
//!   the sidecar's peak memory. Its million changes are sites from ten statements.
//! * `netbox-drain`: the same, shaped as NetBox commits: one transaction per object change, each
//!   with its `core_objectchange` row; devices with their interfaces and IP addresses, some
//!   changed several times. Time to the first delivery, rate first to last, peak RSS, and the
//!   longest transaction the sidecar held open.
//! * `claim`: claim latency on an empty queue and with millions of finished deliveries kept.
//! * `deep`: deep queues (issue 12): 20,000 pending deliveries over 50 objects (400 each, in
//!   commit order per object) and the same count over 20,000 objects, first to last, beside the
//!   HTTP ceiling (the same receiver driven by a plain client loop) measured in the same run.
//! * `ab`: delivery throughput of several builds (or SQL variants) interleaved A B A B, with the
//!   CPU per 1,000 deliveries of the sidecar, its PostgreSQL backends and the receiver, which
//!   load on a shared machine barely moves (docs/benchmarks.md §1b).
//!
//! ```text
//! cargo bench --bench pipeline                    # all, default sizes
//! BENCH=latency BENCH_RATE=500 BENCH_SECONDS=20 cargo bench --bench pipeline
//! BENCH=drain BENCH_BACKLOG=1000000 cargo bench --bench pipeline
//! BENCH=netbox-drain BENCH_BACKLOG=1000000 cargo bench --bench pipeline
//! BENCH=netbox-drain BENCH_BINARY="main=/tmp/main;bounded=/tmp/bounded" cargo bench --bench pipeline
//! BENCH=deep BENCH_DEEP_OBJECTS=50,20000 cargo bench --bench pipeline
//! ```
//!
//! Needs PostgreSQL (TEST_DATABASE_URL, default 127.0.0.1:5432, trust auth) and builds the
//! release binary (the sidecar and the receiver run as their own processes).
//!
//! `latency` and `netbox-drain` run the sidecar binary (or binaries) in `BENCH_BINARY`: a path,
//! or `name=path;name=path` to run several in one sitting, each database migrated by its own
//! binary, with ratios to the first (default: this tree's release binary).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use netbox_outbox::db::Database;
use netbox_outbox::deliver::http::AttemptResult;
use netbox_outbox::deliver::queue;
use tokio_postgres::Client;

const FIXTURE: &str = include_str!("../tests/fixtures/netbox_schema.sql");

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: a benchmark takes
    // minutes and measures nothing on a test machine, so it only has to compile there.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("benchmark skipped (run it with cargo bench)");
        return;
    }
    let which = std::env::var("BENCH")
        .unwrap_or_else(|_| "throughput,latency,netbox-drain,claim,deep".into());
    let status = Command::new("cargo")
        .args(["build", "--release", "--quiet", "--bin", "netbox-outbox"])
        .status()
        .expect("cargo");
    assert!(status.success(), "building the release binary failed");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "netbox-outbox pipeline benchmarks on {} cores (figures beside same-run baselines)\n",
        cores()
    );
    runtime.block_on(async {
        for bench in which.split(',') {
            match bench.trim() {
                "throughput" => throughput().await,
                "latency" => latency().await,
                "drain" => drain().await,
                "netbox-drain" => netbox_drain().await,
                "claim" => claim().await,
                "deep" => deep().await,
                "ab" => ab().await,
                other => eprintln!("unknown benchmark {other:?}"),
            }
        }
    });
}

fn binary() -> String {
    format!(
        "{}/target/release/netbox-outbox",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The sidecar binaries `latency` and `netbox-drain` measure (`BENCH_BINARY`): one path, or
/// `name=path;name=path` (ratios to the first); default, this tree's release binary.
fn bench_binaries() -> Vec<(String, String)> {
    let spec = std::env::var("BENCH_BINARY").unwrap_or_default();
    let list: Vec<(String, String)> = spec
        .split(';')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| match v.split_once('=') {
            Some((name, path)) => (name.trim().to_string(), path.trim().to_string()),
            None => (v.to_string(), v.to_string()),
        })
        .collect();
    if list.is_empty() {
        vec![("this tree".to_string(), binary())]
    } else {
        list
    }
}

/// Applies the migrations of `sidecar_binary` (`migrate`), so a binary with newer migrations
/// than this tree's runs against its own schema.
fn migrate_with(database: &Database, sidecar_binary: &str) {
    let status = Command::new(sidecar_binary)
        .arg("migrate")
        .env("DATABASE_URL", database_url(database))
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("running {sidecar_binary}: {e}"));
    assert!(status.success(), "{sidecar_binary} migrate failed");
}

/// A fresh NetBox-shaped database, not migrated yet.
async fn fixture_database(name: &str) -> (Database, Client) {
    let server = admin().connect().await.expect("PostgreSQL is reachable");
    for sql in [
        format!("drop database if exists {name} with (force)"),
        format!("create database {name}"),
    ] {
        server.batch_execute(&sql).await.unwrap();
    }
    let database = admin().with_dbname(name);
    let client = database.connect().await.unwrap();
    client.batch_execute(FIXTURE).await.unwrap();
    (database, client)
}

/// A fresh NetBox-shaped database migrated by `sidecar_binary`.
async fn scratch_by(name: &str, sidecar_binary: &str) -> (Database, Client) {
    let (database, client) = fixture_database(name).await;
    migrate_with(&database, sidecar_binary);
    (database, client)
}

fn admin() -> Database {
    Database::parse(
        &std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
    )
    .unwrap()
}

/// A fresh NetBox-shaped, migrated database.
async fn scratch(name: &str) -> (Database, Client) {
    let (database, mut client) = fixture_database(name).await;
    netbox_outbox::migrations::run(&mut client).await.unwrap();
    (database, client)
}

/// A webhook with a secret and a rule for devices and sites.
async fn hook(client: &Client, url: &str) {
    client
        .batch_execute(&format!(
            "insert into extras_webhook (name, payload_url, secret) values ('bench', '{url}', 'bench-secret');
             insert into extras_eventrule (name, action_type, action_object_type_id, action_object_id, event_types)
               values ('bench', 'netbox_outbox.webhook', (select id from django_content_type where model = 'webhook'), 1,
                       '{{object_created,object_updated,object_deleted}}');
             insert into extras_eventrule_object_types (eventrule_id, contenttype_id)
               select 1, id from django_content_type where model in ('device', 'site');
             insert into dcim_manufacturer (name, slug) values ('Acme', 'acme');
             insert into dcim_devicetype (model, slug, manufacturer_id) values ('R1', 'r1', 1);
             insert into dcim_devicerole (name, slug) values ('Router', 'router');
             insert into dcim_site (name, slug) values ('Home', 'home');
             insert into tenancy_tenant (name, slug) values ('Tenant', 'tenant');
             insert into extras_tag (name, slug) values ('gold', 'gold'), ('edge', 'edge');"
        ))
        .await
        .unwrap();
}

/// Inserts `n` objects whose webhook bodies are about `size` bytes: sites with their tenant up
/// to 2 KB (a site's body is about 1.2 KB), else devices with their type, role, site and tenant,
/// padded in local_context_data (which a body carries twice: in data and in the snapshot).
async fn objects(client: &Client, n: i64, size: usize) {
    if size <= 2048 {
        client
            .execute(
                "insert into dcim_site (name, slug, tenant_id, description)
                 select 'site-' || g, 'site-' || g, 1, 'bench site ' || g
                 from generate_series(1, $1::bigint) g",
                &[&n],
            )
            .await
            .unwrap();
        return;
    }
    let padding = "x".repeat((size.saturating_sub(3100) / 2).max(1));
    client
        .execute(
            "insert into dcim_device (created, last_updated, name, device_type_id, role_id, site_id, tenant_id,
                                      serial, custom_field_data, local_context_data)
             select now(), now(), 'device-' || g, 1, 1, 1, 1, 'SN' || g, '{}', jsonb_build_object('notes', $2::text)
             from generate_series(1, $1::bigint) g",
            &[&n, &padding],
        )
        .await
        .unwrap();
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The receiver, in its own process, counting requests.
fn receiver(port: u16) -> (Process, std::path::PathBuf) {
    let log = std::env::temp_dir().join(format!("nbo-bench-receiver-{port}.log"));
    let child = Command::new(binary())
        .args([
            "receive",
            "--quiet",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Process(child), log)
}

fn received(log: &std::path::Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn sidecar(database: &Database, extra_env: &[(&str, &str)]) -> Process {
    sidecar_of(&binary(), database, extra_env)
}

fn sidecar_of(sidecar_binary: &str, database: &Database, extra_env: &[(&str, &str)]) -> Process {
    let mut command = Command::new(sidecar_binary);
    command
        .arg("run")
        .env("DATABASE_URL", database_url(database))
        .env("NETBOX_OUTBOX_METRICS__LISTEN", "\"\"")
        // BENCH_SIDECAR_LOG=debug shows each batch's size and time (on stderr)
        .env(
            "NETBOX_OUTBOX_LOG__LEVEL",
            std::env::var("BENCH_SIDECAR_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in extra_env {
        command.env(k, v);
    }
    Process(command.spawn().unwrap())
}

fn database_url(database: &Database) -> String {
    database.libpq_url()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn count_f64(client: &Client, sql: &str) -> f64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- throughput -------------------------------------------------------------------------------

async fn throughput() {
    let n: i64 = env("BENCH_DELIVERIES", 100_000);
    println!("== delivery throughput: {n} deliveries per run ==");
    for size in [1024usize, 8192] {
        let (database, client) = scratch("nbo_bench_throughput").await;
        let port = free_port();
        let (_receiver, log) = receiver(port);
        hook(&client, &format!("http://127.0.0.1:{port}/hook")).await;
        // Assemble with the webhook paused, so the deliveries are all pending before the clock starts.
        client
            .batch_execute("select netbox_outbox.pause_webhook('bench')")
            .await
            .unwrap();
        objects(&client, n, size).await;
        let assembling = Instant::now();
        let side = sidecar(&database, &[]);
        wait_until("assembly", Duration::from_secs(600), async || {
            count(&client, "select count(*) from netbox_outbox.delivery").await >= n
        })
        .await;
        let assembly = assembling.elapsed();
        let body_size: i64 = count(
            &client,
            "select avg(length(body))::bigint from netbox_outbox.request",
        )
        .await;
        drop(side);

        // Ceiling 1: the receiver driven by a plain HTTP client, same bodies, same concurrency.
        let body: Vec<u8> = client
            .query_one("select body from netbox_outbox.request limit 1", &[])
            .await
            .unwrap()
            .get(0);
        let http_ceiling = http_ceiling(port, body, 256, Duration::from_secs(5)).await;

        // Ceiling 2: claim and acknowledge with no HTTP, on a vacuumed table like the real run.
        client
            .batch_execute("vacuum analyze netbox_outbox.delivery")
            .await
            .unwrap();
        let queue_ceiling = queue_ceiling(&database, n).await;
        client
            .batch_execute(
                "delete from netbox_outbox.attempt;
                 update netbox_outbox.delivery set state = 'pending', attempts = 0, finished_at = null,
                        leased_until = '-infinity', leased_by = null, next_attempt_at = now();
                 delete from netbox_outbox.webhook_state;",
            )
            .await
            .unwrap();
        client
            .batch_execute("vacuum analyze netbox_outbox.delivery")
            .await
            .unwrap();

        // The real thing.
        let before = received(&log);
        let start = Instant::now();
        let side = sidecar(&database, &[]);
        wait_until("delivery", Duration::from_secs(600), async || {
            received(&log) >= before + n as u64
        })
        .await;
        let real = n as f64 / start.elapsed().as_secs_f64();
        drop(side);
        let lower = http_ceiling.min(queue_ceiling);
        println!(
            "  {size:>5} B target ({body_size} B bodies): assembly {:>7.0} events/s | delivery {real:>7.0}/s | \
             ceilings: HTTP alone {http_ceiling:>7.0}/s, queue alone {queue_ceiling:>7.0}/s | ratio to the lower {:.2}",
            n as f64 / assembly.as_secs_f64(),
            real / lower
        );
    }
    println!();
}

/// Requests per second a plain keep-alive HTTP client gets from the receiver.
async fn http_ceiling(port: u16, body: Vec<u8>, concurrency: usize, duration: Duration) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/ceiling");
    let stop = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                if client.post(&url).body(body.clone()).send().await.is_ok() {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / duration.as_secs_f64()
}

/// Deliveries per second the claim-and-record loop manages with instant, successful "sends":
/// claims on one connection, outcomes recorded on another, overlapping, as the sidecar does.
async fn queue_ceiling(database: &Database, n: i64) -> f64 {
    let sidecar = uuid::Uuid::new_v4();
    let claimer = database.connect().await.unwrap();
    let recorder = database.connect().await.unwrap();
    claimer
        .batch_execute("select netbox_outbox.resume_webhook('bench')")
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<queue::Outcome>>(4);
    let start = Instant::now();
    let recording = tokio::spawn(async move {
        let mut done = 0i64;
        while let Some(outcomes) = rx.recv().await {
            queue::record(&recorder, &outcomes, Duration::ZERO, sidecar)
                .await
                .unwrap();
            done += outcomes.len() as i64;
        }
        done
    });
    let mut claimed_total = 0;
    let mut empty_claims = 0;
    while claimed_total < n && empty_claims < 10_000 {
        let quota = queue::Quota {
            webhook_id: 1,
            heads: 500,
            run_length: 1,
        };
        let claimed: Vec<_> =
            queue::claim(&claimer, &[quota], 500, Duration::from_secs(30), sidecar)
                .await
                .unwrap()
                .into_iter()
                .flatten()
                .collect();
        if claimed.is_empty() {
            // nothing due (all leased, or fewer than n deliveries): give the recorder a turn
            empty_claims += 1;
            tokio::task::yield_now().await;
            continue;
        }
        claimed_total += claimed.len() as i64;
        let outcomes: Vec<queue::Outcome> = claimed
            .iter()
            .map(|c| queue::Outcome {
                delivery_id: c.delivery_id,
                webhook_id: c.webhook_id,
                attempt: c.attempt,
                result: AttemptResult {
                    started: std::time::Instant::now(),
                    duration: Duration::from_millis(1),
                    status: Some(200),
                    error: None,
                    response_excerpt: Some("ok".into()),
                    retry_after: None,
                    retry_after_date: None,
                },
                retry_in: None,
            })
            .collect();
        tx.send(outcomes).await.unwrap();
    }
    drop(tx);
    let done = recording.await.unwrap();
    done as f64 / start.elapsed().as_secs_f64()
}

// ---- latency ----------------------------------------------------------------------------------

/// Commit-to-receipt latency at a steady commit rate, for each binary of `BENCH_BINARY`.
async fn latency() {
    let rate: u64 = env("BENCH_RATE", 500);
    let seconds: u64 = env("BENCH_SECONDS", 20);
    // One connection commits a single-row update in about 1-2 ms with synchronous_commit on,
    // so 2,000/s needs many writers; each gets its share of the rate.
    let writers: u64 = env("BENCH_WRITERS", (rate / 125).clamp(4, 32));
    println!(
        "== commit to receipt latency: {rate} commits/s for {seconds} s, {writers} writers =="
    );
    let mut results = Vec::new();
    for (name, sidecar_binary) in bench_binaries() {
        let r = latency_of(&sidecar_binary, rate, seconds, writers).await;
        println!(
            "  {name}: {} webhooks, {:.0} commits/s achieved: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
             (goal: p50 <= 5, p99 <= 50) | load average {}",
            r.webhooks,
            r.achieved,
            r.p50,
            r.p95,
            r.p99,
            r.max,
            load_average()
        );
        results.push((name, r));
    }
    if results.len() > 1 {
        let (base_name, base) = &results[0];
        for (name, r) in &results[1..] {
            println!(
                "  {name} / {base_name}: p50 x{:.2}, p95 x{:.2}, p99 x{:.2}, max x{:.2}",
                r.p50 / base.p50,
                r.p95 / base.p95,
                r.p99 / base.p99,
                r.max / base.max
            );
        }
    }
    println!();
}

struct Latency {
    webhooks: usize,
    achieved: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

async fn latency_of(sidecar_binary: &str, rate: u64, seconds: u64, writers: u64) -> Latency {
    let (database, client) = scratch_by("nbo_bench_latency", sidecar_binary).await;
    let receiver = netbox_outbox::commands::receive::Receiver::start()
        .await
        .unwrap();
    hook(&client, &receiver.url("/hook")).await;
    client
        .batch_execute("insert into dcim_site (name, slug) select 'site-' || g, 'site-' || g from generate_series(1, 1000) g")
        .await
        .unwrap();
    let side = sidecar_of(sidecar_binary, &database, &[]);
    wait_until("the initial sites", Duration::from_secs(120), async || {
        receiver.count() >= 1001
    })
    .await;
    let already = receiver.count();
    let total = rate * seconds;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let database = database.clone();
        tasks.push(tokio::spawn(async move {
            let client = database.connect().await.unwrap();
            let statement = client
                .prepare(
                    "update dcim_site set description = $1, last_updated = now() where id = $2",
                )
                .await
                .unwrap();
            let interval = Duration::from_secs_f64(writers as f64 / rate as f64);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut commits = Vec::new();
            for i in 0..total / writers {
                tick.tick().await;
                let tag = format!("w{w}-{i}");
                let id = ((i * writers + w) % 1000 + 1) as i64;
                client.execute(&statement, &[&tag, &id]).await.unwrap();
                commits.push((tag, SystemTime::now()));
            }
            commits
        }));
    }
    let mut committed = std::collections::HashMap::new();
    let (mut first, mut last) = (None::<SystemTime>, None::<SystemTime>);
    for t in tasks {
        for (tag, at) in t.await.unwrap() {
            first = Some(first.map_or(at, |f| f.min(at)));
            last = Some(last.map_or(at, |l| l.max(at)));
            committed.insert(tag, at);
        }
    }
    let made = committed.len();
    // The commits/s the writers reached, first commit to last: below the rate, the writers were
    // the bound, and the latency was measured at that lower rate.
    let achieved = match (first, last) {
        (Some(f), Some(l)) => {
            made as f64
                / l.duration_since(f)
                    .unwrap_or_default()
                    .as_secs_f64()
                    .max(0.001)
        }
        _ => 0.0,
    };
    wait_until("every update", Duration::from_secs(300), async || {
        receiver.count() >= already + made
    })
    .await;
    drop(side);
    let mut latencies: Vec<f64> = receiver.received()[already..]
        .iter()
        .filter_map(|r| {
            let tag = r.json()["data"]["description"].as_str()?.to_string();
            Some(
                r.at.duration_since(*committed.get(&tag)?)
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1000.0,
            )
        })
        .collect();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    Latency {
        webhooks: latencies.len(),
        achieved,
        p50: pct(0.50),
        p95: pct(0.95),
        p99: pct(0.99),
        max: latencies.last().copied().unwrap_or_default(),
    }
}

// ---- drain ------------------------------------------------------------------------------------

async fn drain() {
    let backlog: i64 = env("BENCH_BACKLOG", 200_000);
    println!("== backlog drain: {backlog} pending changes (sidecar stopped meanwhile) ==");
    let (database, client) = scratch("nbo_bench_drain").await;
    let port = free_port();
    let (_receiver, log) = receiver(port);
    hook(&client, &format!("http://127.0.0.1:{port}/hook")).await;
    let mut made = 0;
    while made < backlog {
        let chunk = (backlog - made).min(100_000);
        client
            .execute(
                "insert into dcim_site (name, slug) select 'site-' || g, 'site-' || g from generate_series($1::bigint, $2::bigint) g",
                &[&(made + 1), &(made + chunk)],
            )
            .await
            .unwrap();
        made += chunk;
    }
    let start = Instant::now();
    let side = sidecar(&database, &[]);
    let pid = side.0.id();
    let mut peak_kib = 0u64;
    wait_until(
        "the backlog to drain",
        Duration::from_secs(3600),
        async || {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                && let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:"))
            {
                peak_kib = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(peak_kib);
            }
            received(&log) >= backlog as u64
        },
    )
    .await;
    let elapsed = start.elapsed();
    drop(side);
    println!(
        "  drained {backlog} in {:.1} s: {:.0}/s (goal >= 10,000/s); sidecar peak RSS {:.1} MiB (goal <= 64 MiB)\n",
        elapsed.as_secs_f64(),
        backlog as f64 / elapsed.as_secs_f64(),
        peak_kib as f64 / 1024.0
    );
}

// ---- NetBox-shaped drain ----------------------------------------------------------------------

/// Commits changes as NetBox does: one transaction per object change, each with its
/// `core_objectchange` row. Per device, ten transactions: the device created, four interfaces
/// created, two IP addresses on them created, then the device updated twice and its first
/// interface once (objects changed several times). COMMIT per iteration, so every change is its
/// own transaction, as NetBox's requests are.
const NETBOX_CHANGES: &str = r#"
create procedure bench_netbox_changes(first_device bigint, last_device bigint)
language plpgsql as $$
declare
    ct_device int := (select id from django_content_type where app_label = 'dcim' and model = 'device');
    ct_interface int := (select id from django_content_type where app_label = 'dcim' and model = 'interface');
    ct_ip int := (select id from django_content_type where app_label = 'ipam' and model = 'ipaddress');
    d bigint;
    k int;
    dev dcim_device;
    pre_dev dcim_device;
    ifc dcim_interface;
    pre_ifc dcim_interface;
    first_ifc bigint;
    ip ipam_ipaddress;
begin
    for d in first_device..last_device loop
        insert into dcim_device (created, last_updated, name, device_type_id, role_id, site_id, tenant_id,
                                 serial, custom_field_data)
            values (now(), now(), 'device-' || d, 1, 1, 1, 1, 'SN' || d, '{}') returning * into dev;
        insert into core_objectchange (time, user_name, request_id, action, changed_object_id, object_repr,
                                       postchange_data, changed_object_type_id, user_id)
            values (now(), 'admin', gen_random_uuid(), 'create', dev.id, dev.name, to_jsonb(dev), ct_device, 1);
        commit;
        for k in 1..4 loop
            insert into dcim_interface (created, last_updated, name, device_id, type)
                values (now(), now(), 'eth' || k, dev.id, '1000base-t') returning * into ifc;
            insert into core_objectchange (time, user_name, request_id, action, changed_object_id, object_repr,
                                           postchange_data, changed_object_type_id, user_id,
                                           related_object_id, related_object_type_id)
                values (now(), 'admin', gen_random_uuid(), 'create', ifc.id, ifc.name, to_jsonb(ifc),
                        ct_interface, 1, dev.id, ct_device);
            commit;
            if k = 1 then
                first_ifc := ifc.id;
            end if;
        end loop;
        for k in 1..2 loop
            insert into ipam_ipaddress (created, last_updated, address, assigned_object_type_id, assigned_object_id)
                values (now(), now(), '10.0.0.0'::inet + (d * 2 + k), ct_interface, first_ifc + k - 1)
                returning * into ip;
            insert into core_objectchange (time, user_name, request_id, action, changed_object_id, object_repr,
                                           postchange_data, changed_object_type_id, user_id)
                values (now(), 'admin', gen_random_uuid(), 'create', ip.id, host(ip.address), to_jsonb(ip), ct_ip, 1);
            commit;
        end loop;
        for k in 1..2 loop
            select * into pre_dev from dcim_device where id = dev.id;
            update dcim_device set status = case k when 1 then 'planned' else 'active' end,
                                   description = 'change ' || k, last_updated = now()
             where id = dev.id returning * into dev;
            insert into core_objectchange (time, user_name, request_id, action, changed_object_id, object_repr,
                                           prechange_data, postchange_data, changed_object_type_id, user_id)
                values (now(), 'admin', gen_random_uuid(), 'update', dev.id, dev.name, to_jsonb(pre_dev),
                        to_jsonb(dev), ct_device, 1);
            commit;
        end loop;
        select * into pre_ifc from dcim_interface where id = first_ifc;
        update dcim_interface set description = 'uplink', mtu = 9000, last_updated = now()
         where id = first_ifc returning * into ifc;
        insert into core_objectchange (time, user_name, request_id, action, changed_object_id, object_repr,
                                       prechange_data, postchange_data, changed_object_type_id, user_id,
                                       related_object_id, related_object_type_id)
            values (now(), 'admin', gen_random_uuid(), 'update', ifc.id, ifc.name, to_jsonb(pre_ifc),
                    to_jsonb(ifc), ct_interface, 1, dev.id, ct_device);
        commit;
    end loop;
end
$$;
"#;

/// Transactions per device in `NETBOX_CHANGES`.
const CHANGES_PER_DEVICE: i64 = 10;

/// What one NetBox-shaped drain measured.
struct Drain {
    deliveries: i64,
    first_s: f64,
    span_s: f64,
    wall_s: f64,
    peak_mib: f64,
    longest_tx_s: f64,
    /// What the longest transaction was running when it was seen at its oldest.
    longest_tx_query: String,
    /// CPU seconds of the sidecar, and of the PostgreSQL backends serving it, over the run.
    sidecar_cpu_s: f64,
    postgres_cpu_s: f64,
    /// The share of the machine's CPU time that was busy over the run (all processes).
    machine_busy: f64,
}

/// `BENCH=netbox-drain`: `BENCH_BACKLOG` changes committed as NetBox commits them (see
/// `NETBOX_CHANGES`) while no sidecar runs, then one sidecar of each `BENCH_BINARY` drains them.
/// The backlog is made once, in a template migrated by the first binary; each binary's run gets a
/// copy of it, migrated again by that binary (a no-op for the first; list an older binary first).
async fn netbox_drain() {
    let backlog: i64 = env("BENCH_BACKLOG", 1_000_000);
    let writers: i64 = env("BENCH_WRITERS", 2);
    let rounds: usize = env("BENCH_ROUNDS", 1);
    let devices = (backlog / CHANGES_PER_DEVICE).max(1);
    let changes = devices * CHANGES_PER_DEVICE;
    let binaries = bench_binaries();
    println!(
        "== NetBox-shaped drain: {changes} changes ({devices} devices, each created with 4 interfaces and \
         2 IP addresses, then updated 3 times), one transaction each with its change-log row =="
    );
    let template = "nbo_bench_ndrain_tpl";
    let (tpl_db, client) = scratch_by(template, &binaries[0].1).await;
    // The receiver's port is fixed in the template's webhook; each run starts its own receiver on it.
    let port = free_port();
    client
        .batch_execute(&format!(
            "insert into extras_webhook (name, payload_url, secret) values ('bench', 'http://127.0.0.1:{port}/hook', 'bench-secret');
             insert into extras_eventrule (name, action_type, action_object_type_id, action_object_id, event_types)
               values ('bench', 'netbox_outbox.webhook', (select id from django_content_type where model = 'webhook'), 1,
                       '{{object_created,object_updated,object_deleted}}');
             insert into extras_eventrule_object_types (eventrule_id, contenttype_id)
               select 1, id from django_content_type where model in ('device', 'interface', 'ipaddress');
             insert into dcim_manufacturer (name, slug) values ('Acme', 'acme');
             insert into dcim_devicetype (model, slug, manufacturer_id) values ('R1', 'r1', 1);
             insert into dcim_devicerole (name, slug) values ('Router', 'router');
             insert into dcim_site (name, slug) values ('Home', 'home');
             insert into tenancy_tenant (name, slug) values ('Tenant', 'tenant');
             {NETBOX_CHANGES}"
        ))
        .await
        .unwrap();
    // Several connections, each its range of devices (a CALL that commits must be a statement of
    // its own, not part of a multi-statement query). synchronous_commit off for these sessions
    // only: the backlog's commits need not wait for the disk, and the sidecar runs with the
    // server's default.
    let before = count(&client, "select count(*) from netbox_outbox.change").await;
    let generating = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (from, to) = (devices * w / writers + 1, devices * (w + 1) / writers);
        if from > to {
            continue;
        }
        let database = tpl_db.clone();
        tasks.push(tokio::spawn(async move {
            let writer = database.connect().await.unwrap();
            writer
                .batch_execute("set synchronous_commit = off")
                .await
                .unwrap();
            writer
                .batch_execute(&format!("call bench_netbox_changes({from}, {to})"))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let generated = generating.elapsed().as_secs_f64();
    let captured = count(&client, "select count(*) from netbox_outbox.change").await - before;
    let logged = count(&client, "select count(*) from netbox_outbox.changelog").await;
    println!(
        "  backlog committed in {generated:.0} s ({:.0} transactions/s, {writers} connections): {captured} captured \
         changes, {logged} change-log rows",
        changes as f64 / generated
    );
    assert_eq!(captured, changes, "one captured change per transaction");
    // As autovacuum would have left a backlog of hours: the written tables vacuumed and analyzed.
    // Only those: the sidecar's own tables analyzed empty would mislead the planner of the first
    // claims (measured: about 10 deliveries/s until autoanalyze caught up).
    for sql in [
        "vacuum analyze dcim_device, dcim_interface, ipam_ipaddress, core_objectchange, \
         netbox_outbox.change, netbox_outbox.changelog",
        "checkpoint",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    drop(client);
    // A template may have no connections when it is copied: wait for ours to close.
    let server = admin().connect().await.unwrap();
    wait_until(
        "the template's connections to close",
        Duration::from_secs(30),
        async || {
            count(
                &server,
                &format!("select count(*) from pg_stat_activity where datname = '{template}'"),
            )
            .await
                == 0
        },
    )
    .await;

    let mut results: Vec<Vec<Drain>> = binaries.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (i, (name, sidecar_binary)) in binaries.iter().enumerate() {
            let r = netbox_drain_run(template, sidecar_binary, port, changes).await;
            println!(
                "  {round} {name}: first delivery {:.2} s after the start (goal <= 2) | {} delivered, first to last \
                 {:.1} s = {:.0}/s (start to last {:.1} s = {:.0}/s; goal >= 10,000) | peak RSS {:.1} MiB (goal <= 64) | \
                 longest transaction open {:.1} s (goal <= 5) | load average {}",
                r.first_s,
                r.deliveries,
                r.span_s,
                r.deliveries as f64 / r.span_s,
                r.wall_s,
                r.deliveries as f64 / r.wall_s,
                r.peak_mib,
                r.longest_tx_s,
                load_average()
            );
            let per_change = |cpu_s: f64| cpu_s * 1000.0 / r.deliveries as f64;
            println!(
                "    CPU per change: sidecar {:.3} ms, its PostgreSQL backends {:.3} ms; the machine \
                 {:.0} % busy; at this CPU per change {} cores deliver at most {:.0}/s",
                per_change(r.sidecar_cpu_s),
                per_change(r.postgres_cpu_s),
                r.machine_busy * 100.0,
                cores(),
                cores() as f64 * r.deliveries as f64 / (r.sidecar_cpu_s + r.postgres_cpu_s)
            );
            println!(
                "    longest transaction, last seen running: {}",
                r.longest_tx_query
            );
            results[i].push(r);
        }
    }
    if binaries.len() > 1 {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let stats = |runs: &[Drain]| {
            [
                median(runs.iter().map(|r| r.first_s).collect()),
                median(
                    runs.iter()
                        .map(|r| r.deliveries as f64 / r.span_s)
                        .collect(),
                ),
                median(runs.iter().map(|r| r.peak_mib).collect()),
                median(runs.iter().map(|r| r.longest_tx_s).collect()),
            ]
        };
        let base = stats(&results[0]);
        for ((name, _), runs) in binaries.iter().zip(&results).skip(1) {
            let m = stats(runs);
            println!(
                "  {name} / {}: first delivery x{:.2}, rate x{:.2}, peak RSS x{:.2}, longest transaction x{:.2}",
                binaries[0].0,
                m[0] / base[0],
                m[1] / base[1],
                m[2] / base[2],
                m[3] / base[3]
            );
        }
    }
    for db in [template, "nbo_bench_ndrain"] {
        server
            .batch_execute(&format!("drop database if exists {db} with (force)"))
            .await
            .unwrap();
    }
    println!();
}

/// One drain of a copy of `template` by `sidecar_binary`.
async fn netbox_drain_run(template: &str, sidecar_binary: &str, port: u16, expected: i64) -> Drain {
    let name = "nbo_bench_ndrain";
    let server = admin().connect().await.unwrap();
    for sql in [
        format!("drop database if exists {name} with (force)"),
        format!("create database {name} template {template}"),
    ] {
        server.batch_execute(&sql).await.unwrap();
    }
    let database = admin().with_dbname(name);
    migrate_with(&database, sidecar_binary);
    let client = database.connect().await.unwrap();
    let (_receiver, log) = receiver(port);
    // The longest transaction the sidecar holds open: every client backend of this database
    // but the benchmark's own two, sampled every 100 ms.
    let sampler = database.connect().await.unwrap();
    let own: Vec<i32> = vec![
        client
            .query_one("select pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0),
        sampler
            .query_one("select pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0),
    ];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampling = {
        let stop = stop.clone();
        let own = own.clone();
        tokio::spawn(async move {
            // The age of the oldest open transaction, and what it was doing when last seen at
            // its oldest: the statement it runs (or ran last, if idle in transaction).
            let mut longest = (0f64, String::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let row = sampler
                    .query_opt(
                        "select extract(epoch from clock_timestamp() - xact_start)::float8,
                                state || coalesce(' waiting on ' || wait_event_type || ' ' || wait_event, '')
                                || ': ' || left(regexp_replace(query, '\\s+', ' ', 'g'), 160)
                                || coalesce(' | blocked by: ' || (
                                       select string_agg(left(regexp_replace(b.query, '\\s+', ' ', 'g'), 100), ' / ')
                                       from pg_stat_activity b where b.pid = any(pg_blocking_pids(a.pid))), '')
                         from pg_stat_activity a
                         where datname = current_database() and backend_type = 'client backend'
                           and xact_start is not null and pid <> all($1)
                           and query not ilike 'analyze %' and query not ilike 'vacuum %'
                         order by xact_start limit 1",
                        &[&own],
                    )
                    .await
                    .unwrap();
                if let Some(row) = row {
                    let age: f64 = row.get(0);
                    if age > longest.0 {
                        longest = (age, row.get::<_, Option<String>>(1).unwrap_or_default());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            longest
        })
    };
    // The deliveries are written during the run, and the claim's plan needs their statistics.
    // A server with autovacuum off (this project's test cluster) never analyzes them: measured,
    // the claims then crawled at about 90 deliveries/s. Nor does it vacuum the queue heads, which
    // every delivery updates: in a 1,000,000-change drain 428,629 dead versions against 11,203
    // live heads, and claims of up to 20 s. There the benchmark stands in for autovacuum, every
    // 5 s: the queue heads vacuumed (V17 asks autovacuum for that after 1,000 dead versions),
    // the deliveries analyzed (`BENCH_ANALYZE=false` to leave them alone).
    let autovacuum: String = client
        .query_one("show autovacuum", &[])
        .await
        .unwrap()
        .get(0);
    let analyzing = (autovacuum == "off" && env("BENCH_ANALYZE", true)).then(|| {
        println!("  (autovacuum is off on this server: every 5 s the benchmark vacuums the queue heads and analyzes the deliveries)");
        let database = database.clone();
        tokio::spawn(async move {
            let analyzer = database.connect().await.unwrap();
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                // VACUUM cannot run in the implicit transaction of a multi-statement string
                let _ = analyzer
                    .batch_execute("vacuum analyze netbox_outbox.queue_head")
                    .await;
                let _ = analyzer
                    .batch_execute("analyze netbox_outbox.delivery")
                    .await;
            }
        })
    });
    let started_at: SystemTime = client
        .query_one("select clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0);
    let start = Instant::now();
    let machine_before = machine_cpu();
    let side = sidecar_of(sidecar_binary, &database, &[]);
    let pid = side.0.id();
    let peak_kib = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    let mut peak = 0;
    // Arrivals by the receiver (it prints its count about once a second): the attempt log is
    // written by record(), which can lag far behind the requests (measured: minutes).
    let mut first_seen: Option<f64> = None;
    wait_until(
        "the backlog to drain",
        Duration::from_secs(7200),
        async || {
            peak = peak.max(peak_kib());
            tokio::time::sleep(Duration::from_millis(450)).await;
            let got = received(&log);
            if got > 0 && first_seen.is_none() {
                first_seen = Some(start.elapsed().as_secs_f64());
            }
            got >= expected as u64
        },
    )
    .await;
    let wall_s = start.elapsed().as_secs_f64();
    peak = peak.max(peak_kib());
    if let Some(task) = analyzing {
        task.abort();
    }
    // CPU while the sidecar and its backends are still there to be read
    let sidecar_cpu_s = cpu_seconds(pid);
    let postgres_cpu_s = backends_cpu_except(&client, &own).await;
    let machine_after = machine_cpu();
    let machine_busy =
        (machine_after.0 - machine_before.0) / (machine_after.1 - machine_before.1).max(1.0);
    drop(side);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (longest_tx_s, longest_tx_query) = sampling.await.unwrap();
    // First and last attempt by the database's clock (the attempt log), from the sidecar's start,
    // once record() has caught up; else the receiver's view (to about a second).
    let waiting = Instant::now();
    while count(&client, "select count(*) from netbox_outbox.attempt").await < expected
        && waiting.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let row = client
        .query_one(
            "select count(*),
                    extract(epoch from min(started_at) - $1::timestamptz)::float8,
                    extract(epoch from max(started_at + make_interval(secs => duration_ms / 1000.0)) - min(started_at))::float8
             from netbox_outbox.attempt",
            &[&started_at],
        )
        .await
        .unwrap();
    let seen = first_seen.unwrap_or(wall_s);
    Drain {
        deliveries: row.get::<_, i64>(0).max(expected),
        first_s: row.get::<_, Option<f64>>(1).unwrap_or(seen),
        span_s: row
            .get::<_, Option<f64>>(2)
            .unwrap_or(wall_s - seen)
            .max(0.001),
        wall_s,
        peak_mib: peak as f64 / 1024.0,
        longest_tx_s,
        longest_tx_query,
        sidecar_cpu_s,
        postgres_cpu_s,
        machine_busy,
    }
}

// ---- claim ------------------------------------------------------------------------------------

async fn claim() {
    let history: i64 = env("BENCH_HISTORY", 10_000_000);
    let expired: i64 = env("BENCH_EXPIRED", 1_000_000);
    let rounds = 5;
    println!(
        "== claim latency: empty history vs {history} finished deliveries kept, and while retention \
         prunes {expired} expired ones =="
    );
    // Two databases, the baseline (no history) and the measured one, sampled in alternating
    // rounds so that the machine's noise falls on all three alike.
    let (_, empty) = scratch("nbo_bench_claim_empty").await;
    hook(&empty, "http://127.0.0.1:9/unused").await;
    let (database, client) = scratch("nbo_bench_claim").await;
    hook(&client, "http://127.0.0.1:9/unused").await;
    // Kept history (finished yesterday, inside the retention), then expired history (finished
    // ten days ago, which retention deletes).
    for (total, age) in [(history, "1 day"), (expired, "10 days")] {
        let mut made = 0;
        while made < total {
            let chunk = (total - made).min(500_000);
            client
                .execute(
                    &format!(
                        "insert into netbox_outbox.delivery (event_id, event_rule_id, event_rule_name, webhook_id,
                             webhook_name, content_type_id, object_id, seq, state, timeout_ms, ssl_verification,
                             attempts, created_at, finished_at)
                         select g, 1, 'bench', 1, 'bench', 1, g, g, 'delivered', 1000, true, 1,
                                now() - interval '{age}', now() - interval '{age}'
                         from generate_series($1::bigint, $2::bigint) g"
                    ),
                    &[&(made + 1), &(made + chunk)],
                )
                .await
                .unwrap();
            made += chunk;
        }
    }
    client
        .batch_execute("vacuum analyze netbox_outbox.delivery")
        .await
        .unwrap();

    let (mut base, mut kept, mut pruned) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        base.extend(claim_latency(&empty).await);
        kept.extend(claim_latency(&client).await);
        // Retention running meanwhile, on its own connection, as the sidecar's does it: one
        // bounded batch per transaction, then a rest as long as the batch took.
        let pruner = database.connect().await.unwrap();
        let pruning = tokio::spawn(async move {
            loop {
                let started = Instant::now();
                let sql = netbox_outbox::sidecar::PRUNE_DELIVERIES;
                if let Err(e) = pruner
                    .query(sql, &[&netbox_outbox::sidecar::PRUNE_BATCH])
                    .await
                {
                    panic!("{sql} failed: {e}");
                }
                tokio::time::sleep(started.elapsed()).await;
            }
        });
        pruned.extend(claim_latency(&client).await);
        pruning.abort();
    }
    let left: i64 = count(
        &client,
        "select count(*) from netbox_outbox.delivery where finished_at < now() - interval '9 days'",
    )
    .await;
    let pct = |samples: &mut Vec<f64>, p: f64| {
        samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
        samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)]
    };
    let (b50, b99) = (pct(&mut base, 0.5), pct(&mut base, 0.99));
    let (k50, k99) = (pct(&mut kept, 0.5), pct(&mut kept, 0.99));
    let (p50, p99) = (pct(&mut pruned, 0.5), pct(&mut pruned, 0.99));
    println!(
        "  p50 / p99 of {n} claims each of 100 due deliveries among 1,000 pending, {rounds} alternating rounds:\n\
         \x20   empty history (baseline)   {b50:>6.2} / {b99:>6.2} ms\n\
         \x20   {history} kept        {k50:>6.2} / {k99:>6.2} ms   p99 ratio {:.2} (goal <= 2)\n\
         \x20   and retention running      {p50:>6.2} / {p99:>6.2} ms   p99 ratio {:.2} (goal <= 2); \
         {} of {expired} expired deliveries pruned meanwhile\n",
        k99 / b99,
        p99 / b99,
        expired - left,
        n = base.len(),
    );
}

/// 200 claims (ms each) of 100 due deliveries among 1,000 pending.
async fn claim_latency(client: &Client) -> Vec<f64> {
    let sidecar = uuid::Uuid::new_v4();
    client
        .batch_execute(
            "delete from netbox_outbox.request r using netbox_outbox.delivery d
               where r.delivery_id = d.id and d.state = 'pending';
             delete from netbox_outbox.delivery where state = 'pending';
             with pending as (
                 insert into netbox_outbox.delivery (event_id, event_rule_id, event_rule_name, webhook_id,
                     webhook_name, content_type_id, object_id, seq, timeout_ms, ssl_verification)
                 select g, 1, 'bench', 1, 'bench', 2, g, 100000000 + g, 1000, true
                 from generate_series(1, 1000) g
                 returning id
             )
             insert into netbox_outbox.request (delivery_id, method, url, headers, body)
             select id, 'POST', 'http://x/', '[]', '\\x7b7d' from pending;
             analyze netbox_outbox.delivery;",
        )
        .await
        .unwrap();
    let mut samples = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        let quota = queue::Quota {
            webhook_id: 1,
            heads: 100,
            run_length: 1,
        };
        let claimed: Vec<_> = queue::claim(client, &[quota], 100, Duration::from_secs(30), sidecar)
            .await
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(claimed.len(), 100, "the claim found every due delivery");
        let ids: Vec<i64> = claimed.iter().map(|c| c.delivery_id).collect();
        queue::release(client, &ids, sidecar).await.unwrap();
    }
    samples
}

// ---- deep queues ------------------------------------------------------------------------------

/// Deep per-object queues: `BENCH_DEEP_DELIVERIES` (20,000) pending deliveries spread over each
/// count of objects in `BENCH_DEEP_OBJECTS` (50: 400 committed updates of each; 20,000: one
/// each), drained first to last by one sidecar, beside the same receiver driven by a plain HTTP
/// client loop in the same run. Only each object's head may be sent, so with 50 objects at most
/// 50 requests are in flight however much is pending.
async fn deep() {
    let n: i64 = env("BENCH_DEEP_DELIVERIES", 20_000);
    let shapes = std::env::var("BENCH_DEEP_OBJECTS").unwrap_or_else(|_| "50,20000".into());
    // Each shape is drained once per run length, the first being the baseline: 1 claims only
    // queue heads (one delivery per object per claim), as before runs.
    let runs: Vec<String> = std::env::var("BENCH_DEEP_RUNS")
        .unwrap_or_else(|_| "1,32".into())
        .split(',')
        .map(|r| r.trim().to_string())
        .collect();
    println!("== deep queues: {n} pending deliveries, first to last ==");
    for objects in shapes
        .split(',')
        .filter_map(|o| o.trim().parse::<i64>().ok())
    {
        let per_object = (n / objects).max(1);
        let total = objects * per_object;
        let (database, client) = scratch("nbo_bench_deep").await;
        let port = free_port();
        let (_receiver, log) = receiver(port);
        hook(&client, &format!("http://127.0.0.1:{port}/hook")).await;
        // Queue everything with the webhook paused, so all of it is pending when the clock starts.
        client
            .batch_execute("select netbox_outbox.pause_webhook('bench')")
            .await
            .unwrap();
        let sites = |from: i64, to: i64| {
            format!(
                "insert into dcim_site (name, slug, tenant_id, description)
                 select 'site-' || g, 'site-' || g, 1, 'bench site ' || g
                 from generate_series({from}, {to}) g"
            )
        };
        // each object created (one delivery each), then, for deep queues, one committed update
        // of every object per transaction, as a busy script does
        client.batch_execute(&sites(1, objects)).await.unwrap();
        for round in 1..per_object {
            client
                .execute(
                    "update dcim_site set description = 'round ' || $1::bigint where name like 'site-%'",
                    &[&round],
                )
                .await
                .unwrap();
        }
        let side = sidecar(&database, &[]);
        wait_until("assembly", Duration::from_secs(900), async || {
            count(&client, "select count(*) from netbox_outbox.delivery").await >= total
        })
        .await;
        drop(side);
        // and the fixture's own site, created by hook()
        let expected = count(&client, "select count(*) from netbox_outbox.delivery").await;
        client
            .batch_execute("vacuum analyze netbox_outbox.delivery")
            .await
            .unwrap();
        let body: Vec<u8> = client
            .query_one("select body from netbox_outbox.request limit 1", &[])
            .await
            .unwrap()
            .get(0);
        // The ceiling with as many requests in flight as the outbox may have: one per object.
        let in_flight = (objects as usize).min(256);
        let ceiling = http_ceiling(port, body, in_flight, Duration::from_secs(5)).await;

        client
            .batch_execute("select netbox_outbox.resume_webhook('bench')")
            .await
            .unwrap();
        let mut baseline: Option<f64> = None;
        for (i, run_length) in runs.iter().enumerate() {
            if i > 0 {
                // the same deliveries again, pending and never tried
                client
                    .batch_execute(
                        "delete from netbox_outbox.attempt;
                         update netbox_outbox.delivery set state = 'pending', attempts = 0,
                                finished_at = null, last_status = null, last_error = null,
                                next_attempt_at = now(), leased_until = '-infinity', leased_by = null",
                    )
                    .await
                    .unwrap();
                // one statement each: VACUUM cannot run inside a transaction block
                for table in ["delivery", "queue_head", "attempt"] {
                    client
                        .batch_execute(&format!("vacuum analyze netbox_outbox.{table}"))
                        .await
                        .unwrap();
                }
            }
            // The receiver prints its count about once a second: let earlier requests settle.
            let mut before = received(&log);
            loop {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let now = received(&log);
                if now == before {
                    break;
                }
                before = now;
            }
            let start = Instant::now();
            let side = sidecar(
                &database,
                &[("NETBOX_OUTBOX_DELIVERY__RUN_LENGTH", run_length.as_str())],
            );
            wait_until(
                "every delivery recorded",
                Duration::from_secs(900),
                async || {
                    count(
                        &client,
                        "select count(*) from netbox_outbox.delivery where state = 'pending'",
                    )
                    .await
                        == 0
                },
            )
            .await;
            let elapsed = start.elapsed();
            drop(side);
            let delivered = count(
                &client,
                "select count(*) from netbox_outbox.delivery where state = 'delivered'",
            )
            .await;
            assert_eq!(delivered, expected, "every delivery delivered");
            wait_until(
                "the receiver's count",
                Duration::from_secs(10),
                async || received(&log) >= before + expected as u64,
            )
            .await;
            // The gap between two consecutive deliveries of one object, at the median.
            let gap_ms: f64 = client
                .query_one(
                    "select coalesce(percentile_cont(0.5) within group (order by gap), 0)::float8 from (
                         select extract(epoch from a.started_at - lag(a.started_at) over (
                                    partition by d.object_id order by d.seq)) * 1000 as gap
                         from netbox_outbox.attempt a join netbox_outbox.delivery d on d.id = a.delivery_id
                     ) g where gap is not null",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            // First attempt to last, by the database's clock (the sidecar's start-up excluded).
            let span: f64 = count_f64(
                &client,
                "select extract(epoch from max(started_at + make_interval(secs => duration_ms / 1000.0))
                                         - min(started_at))::float8
                 from netbox_outbox.attempt",
            )
            .await;
            let rate = expected as f64 / span.max(0.001);
            let wall_rate = expected as f64 / elapsed.as_secs_f64();
            let versus = baseline.map_or(String::new(), |b| {
                format!(" | x{:.2} of run_length {}", rate / b, runs[0])
            });
            baseline.get_or_insert(rate);
            println!(
                "  {objects:>6} objects x {per_object:>3}, run_length {run_length:>3}: {expected} first to last in {span:.2} s = {rate:>6.0}/s \
                 (from the sidecar's start to the last one recorded: {:.2} s = {wall_rate:.0}/s) | \
                 HTTP alone ({in_flight} in flight) {ceiling:>6.0}/s | ratio {:.2} ({:.2}) | median gap per object {gap_ms:.1} ms{versus}",
                elapsed.as_secs_f64(),
                rate / ceiling,
                wall_rate / ceiling
            );
        }
    }
    println!();
}

// ---- interleaved A/B of delivery throughput ---------------------------------------------------

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces), counted from field 3 (state).
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat(5), 11 and 12 here; 100 ticks a second on
    // Linux (sysconf(_SC_CLK_TCK)).
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of every PostgreSQL backend of this database but our own.
async fn backends_cpu(client: &Client) -> f64 {
    backends_cpu_except(client, &[]).await
}

/// CPU seconds of every backend of this database but our own and `own` (the benchmark's other
/// connections).
async fn backends_cpu_except(client: &Client, own: &[i32]) -> f64 {
    let rows = client
        .query(
            "select pid from pg_stat_activity
             where datname = current_database() and pid <> pg_backend_pid() and pid <> all($1)",
            &[&own],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| cpu_seconds(r.get::<_, i32>(0) as u32))
        .sum()
}

/// The cores this machine has.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The machine's busy and total CPU ticks so far, over every core (`/proc/stat`).
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: f64 = ticks.iter().take(8).sum();
    // idle and iowait are the 4th and 5th
    let idle = ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0);
    (total - idle, total)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One variant of an A/B run: a sidecar binary, SQL applied after its migrations, and the
/// `sslmode` of its database connection (libpq's default, `prefer`, unless given).
struct Variant {
    name: String,
    binary: String,
    sql: Option<String>,
    sslmode: Option<String>,
}

/// `BENCH=ab`: delivery throughput of several sidecar binaries (and SQL variants), interleaved
/// A B A B ... for `BENCH_AB_ROUNDS` rounds, so a machine shared with other work loads each
/// variant alike. Each run: a fresh database migrated by that variant's own binary
/// (`migrate`), `BENCH_DELIVERIES` deliveries assembled with the webhook paused, then the clock
/// runs from the sidecar's start to the receiver's last request. Besides the wall-clock rate,
/// the CPU each side used per 1,000 deliveries, which load on the other core barely moves:
/// the sidecar process, the PostgreSQL backends serving it, and the receiver.
///
/// `BENCH_AB=name=binary[+file.sql][+sslmode=MODE];name=binary...` (default: this tree's release binary as
/// `main`); `BENCH_AB_SIZE` (1024) picks the body size as in `throughput`; `BENCH_AB_RESET=true`
/// finishes every delivery once and makes it pending again before the clock starts, as
/// `throughput` does around its queue ceiling (the rows' second life, not their first).
async fn ab() {
    let n: i64 = env("BENCH_DELIVERIES", 100_000);
    let rounds: usize = env("BENCH_AB_ROUNDS", 3);
    let size: usize = env("BENCH_AB_SIZE", 1024);
    let reset: bool = env("BENCH_AB_RESET", false);
    let spec = std::env::var("BENCH_AB").unwrap_or_else(|_| format!("main={}", binary()));
    let variants: Vec<Variant> = spec
        .split(';')
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            let (name, rest) = v
                .trim()
                .split_once('=')
                .expect("name=binary[+file.sql][+sslmode=MODE]");
            let mut parts = rest.split('+');
            let mut variant = Variant {
                name: name.into(),
                binary: parts.next().expect("a binary").into(),
                sql: None,
                sslmode: None,
            };
            for part in parts {
                match part.strip_prefix("sslmode=") {
                    Some(mode) => variant.sslmode = Some(mode.into()),
                    None => {
                        variant.sql = Some(std::fs::read_to_string(part).expect("the SQL file"))
                    }
                }
            }
            variant
        })
        .collect();
    println!(
        "== delivery throughput A/B: {n} deliveries, {size} B target, {rounds} interleaved rounds, reset first: {reset} =="
    );
    println!(
        "  round variant           rate/s  | CPU s per 1,000 deliveries: sidecar  PG backends  receiver | load average"
    );
    let mut results: Vec<Vec<(f64, f64, f64, f64)>> = vec![Vec::new(); variants.len()];
    for round in 1..=rounds {
        for (i, variant) in variants.iter().enumerate() {
            let (database, client) = fixture_database("nbo_bench_ab").await;
            let url = match &variant.sslmode {
                Some(mode) => format!("{} sslmode={mode}", database_url(&database)),
                None => database_url(&database),
            };
            let status = Command::new(&variant.binary)
                .arg("migrate")
                .env("DATABASE_URL", &url)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "{} migrate", variant.binary);
            if let Some(sql) = &variant.sql {
                client.batch_execute(sql).await.unwrap();
            }
            let port = free_port();
            let (receiver_process, log) = receiver(port);
            hook(&client, &format!("http://127.0.0.1:{port}/hook")).await;
            client
                .batch_execute("select netbox_outbox.pause_webhook('bench')")
                .await
                .unwrap();
            objects(&client, n, size).await;
            let run = |variant: &Variant| {
                let mut command = Command::new(&variant.binary);
                command
                    .arg("run")
                    .env("DATABASE_URL", &url)
                    .env("NETBOX_OUTBOX_METRICS__LISTEN", "\"\"")
                    // BENCH_SIDECAR_LOG=debug shows each batch's size and time (on stderr)
                    .env(
                        "NETBOX_OUTBOX_LOG__LEVEL",
                        std::env::var("BENCH_SIDECAR_LOG").unwrap_or_else(|_| "warn".into()),
                    )
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit());
                Process(command.spawn().unwrap())
            };
            let side = run(variant);
            wait_until("assembly", Duration::from_secs(600), async || {
                count(&client, "select count(*) from netbox_outbox.delivery").await >= n
            })
            .await;
            drop(side);
            if reset {
                // As `throughput` leaves them after its queue ceiling: every delivery finished
                // once, then made pending again in one statement.
                client
                    .batch_execute(
                        "update netbox_outbox.delivery set state = 'delivered', finished_at = now(), attempts = 1;
                         update netbox_outbox.delivery set state = 'pending', attempts = 0, finished_at = null,
                                leased_until = '-infinity', leased_by = null, next_attempt_at = now();",
                    )
                    .await
                    .unwrap();
            }
            for sql in [
                "vacuum analyze netbox_outbox.delivery",
                "select netbox_outbox.resume_webhook('bench')",
            ] {
                client.batch_execute(sql).await.unwrap();
            }
            let before = received(&log);
            let receiver_before = cpu_seconds(receiver_process.0.id());
            let start = Instant::now();
            let side = run(variant);
            wait_until("delivery", Duration::from_secs(600), async || {
                received(&log) >= before + n as u64
            })
            .await;
            let elapsed = start.elapsed().as_secs_f64();
            let sidecar_cpu = cpu_seconds(side.0.id());
            let pg_cpu = backends_cpu(&client).await;
            let receiver_cpu = cpu_seconds(receiver_process.0.id()) - receiver_before;
            drop(side);
            let per_k = |s: f64| s * 1000.0 / n as f64;
            let rate = n as f64 / elapsed;
            println!(
                "  {round:>5} {:<16} {rate:>7.0}  |                          {:>7.3}  {:>11.3}  {:>8.3} | {}",
                variant.name,
                per_k(sidecar_cpu),
                per_k(pg_cpu),
                per_k(receiver_cpu),
                load_average()
            );
            results[i].push((rate, per_k(sidecar_cpu), per_k(pg_cpu), per_k(receiver_cpu)));
            drop(client);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("  medians (ratio to {}):", variants[0].name);
    let base: Vec<f64> = (0..4)
        .map(|k| median(results[0].iter().map(|r| [r.0, r.1, r.2, r.3][k]).collect()))
        .collect();
    for (variant, runs) in variants.iter().zip(&results) {
        let m: Vec<f64> = (0..4)
            .map(|k| median(runs.iter().map(|r| [r.0, r.1, r.2, r.3][k]).collect()))
            .collect();
        println!(
            "        {:<16} {:>7.0} ({:.2}) | sidecar {:.3} ({:.2})  PG {:.3} ({:.2})  receiver {:.3} ({:.2})  sidecar+PG {:.3} ({:.2})",
            variant.name,
            m[0],
            m[0] / base[0],
            m[1],
            m[1] / base[1],
            m[2],
            m[2] / base[2],
            m[3],
            m[3] / base[3],
            m[1] + m[2],
            (m[1] + m[2]) / (base[1] + base[2]),
        );
    }
    println!();
}
