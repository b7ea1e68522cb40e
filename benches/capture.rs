//! Write-path cost of the capture: pgbench single-row updates of a table shaped like NetBox's
//! dcim_device, with and without the capture trigger, at 1, 16 and 64 clients, in one run.
//!
//! Prints throughput with capture as a ratio of throughput without, measured back to back in
//! the same run (the machine is shared and noisy, so absolute numbers drift). Runs with
//! synchronous_commit=off so the capture's CPU and WAL cost is not hidden behind fsync.
//!
//!     cargo bench --bench capture                     # 10 s per cell
//!     BENCH_SECONDS=30 BENCH_CLIENTS=1,16,64 cargo bench --bench capture
//!     BENCH_CAPTURE_VARIANTS="index=benches/ab/change-object-index.sql" cargo bench --bench capture
//!     BENCH_STATEMENT_ROWS=100 BENCH_CLIENTS=1,16 cargo bench --bench capture   # multi-row UPDATEs
//!
//! `BENCH_CAPTURE_VARIANTS` (`name=file.sql;name=file.sql`) adds variants: each in its own copy
//! of the database, the SQL file applied after the migrations and `watch('dcim_device')`,
//! measured interleaved with the others, as "sidecar busy". `BENCH_CAPTURE_BUILTIN=false` leaves
//! out the idle-sidecar and naive variants (the baseline and the capture always run).
//! `BENCH_STATEMENT_ROWS` (1) is the number of rows each UPDATE changes.
//!
//! Needs pgbench and a PostgreSQL server (TEST_DATABASE_URL, default 127.0.0.1:5432, trust auth).

use std::process::Command;
use std::time::Duration;

use netbox_outbox::db::Database;
use netbox_outbox::wakeup::WakeUp;

const FIXTURE: &str = include_str!("../tests/fixtures/netbox_schema.sql");
const ROWS: i64 = 10_000;

/// One pgbench transaction: the UPDATE a NetBox device save amounts to (a real field and
/// last_updated), on a random row; or on `rows` consecutive rows in one statement (a script's
/// `queryset.update()`).
fn script(rows: i64) -> String {
    format!(
        "\\set aid random(1, {})\n\
         update dcim_device set status = case when status = 'active' then 'planned' else 'active' end, \
         description = 'bench ' || :aid, last_updated = now() where id between :aid and :aid + {};\n",
        ROWS - rows + 1,
        rows - 1
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    /// No trigger at all: the baseline.
    Baseline,
    /// netbox-outbox's capture, nobody waiting for a wake-up (a busy or absent sidecar).
    Capture,
    /// The capture while a sidecar sleeps: the first writer in each idle period notifies.
    CaptureSidecarIdle,
    /// The naive design measured in the issue: full rows plus a NOTIFY in every transaction.
    NaiveNotify,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Baseline => "no capture (baseline)",
            Variant::Capture => "capture, sidecar busy",
            Variant::CaptureSidecarIdle => "capture, sidecar idle",
            Variant::NaiveNotify => "naive: jsonb rows + NOTIFY each tx",
        }
    }
}

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: a benchmark takes
    // minutes and measures nothing on a test machine, so it only has to compile there.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("benchmark skipped (run it with cargo bench)");
        return;
    }
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let clients: Vec<u32> = std::env::var("BENCH_CLIENTS")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .map(|c| {
            c.trim()
                .parse()
                .expect("BENCH_CLIENTS is a list of numbers")
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run(seconds, &clients));
}

async fn run(seconds: u64, clients: &[u32]) {
    let admin_url = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    let admin = Database::parse(&admin_url).unwrap();
    let name = "nbo_bench_capture";
    let admin_client = admin.connect().await.expect("PostgreSQL is reachable");
    admin_client
        .batch_execute(&format!("drop database if exists {name} with (force)"))
        .await
        .unwrap();
    admin_client
        .batch_execute(&format!("create database {name}"))
        .await
        .unwrap();
    admin_client
        .batch_execute(&format!(
            "alter database {name} set synchronous_commit = off"
        ))
        .await
        .unwrap();
    let database = admin.with_dbname(name);
    let mut client = database.connect().await.unwrap();
    client.batch_execute(FIXTURE).await.unwrap();
    client
        .batch_execute(&format!(
            "insert into dcim_manufacturer (name, slug) values ('m', 'm');
             insert into dcim_devicetype (model, slug, manufacturer_id) values ('t', 't', 1);
             insert into dcim_devicerole (name, slug) values ('r', 'r');
             insert into dcim_site (name, slug) values ('s', 's');
             insert into dcim_device (created, last_updated, name, device_type_id, role_id, site_id,
                                      serial, asset_tag, custom_field_data, local_context_data)
             select now(), now(), 'device-' || n, 1, 1, 1, 'SN' || n, 'AT' || n,
                    ('{{\"owner\": \"team-' || n || '\", \"rack_unit\": 12}}')::jsonb, null
             from generate_series(1, {ROWS}) n;"
        ))
        .await
        .unwrap();
    client
        .batch_execute("vacuum analyze dcim_device")
        .await
        .unwrap();
    netbox_outbox::migrations::run(&mut client).await.unwrap();
    client
        .batch_execute(
            "create table naive_outbox (id bigserial primary key, table_name text, object_id bigint,
                 op text, prechange jsonb, postchange jsonb);
             create function naive_capture() returns trigger language plpgsql as $$
             begin
                 insert into naive_outbox (table_name, object_id, op, prechange, postchange)
                 values (tg_table_name, new.id, tg_op, to_jsonb(old), to_jsonb(new));
                 perform pg_notify('naive', '');
                 return null;
             end $$;",
        )
        .await
        .unwrap();

    let statement_rows: i64 = std::env::var("BENCH_STATEMENT_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let script_path = std::env::temp_dir().join("netbox-outbox-bench-update.sql");
    std::fs::write(&script_path, script(statement_rows)).unwrap();
    let script = script_path;

    // SQL variants, each in its own copy of the database (a template may have no other
    // connection while it is copied).
    let extra: Vec<(String, String)> = std::env::var("BENCH_CAPTURE_VARIANTS")
        .unwrap_or_default()
        .split(';')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            let (label, file) = v.split_once('=').expect("name=file.sql");
            (
                label.trim().to_string(),
                std::fs::read_to_string(file.trim()).unwrap_or_else(|e| panic!("{file}: {e}")),
            )
        })
        .collect();
    let mut extra_dbs = Vec::new();
    if !extra.is_empty() {
        drop(client);
        for (i, (label, sql)) in extra.iter().enumerate() {
            let copy = format!("{name}_v{i}");
            admin_client
                .batch_execute(&format!("drop database if exists {copy} with (force)"))
                .await
                .unwrap();
            let mut tries = 0;
            while let Err(e) = admin_client
                .batch_execute(&format!("create database {copy} template {name}"))
                .await
            {
                tries += 1;
                assert!(tries < 100, "copying the database: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // A database's settings are not copied with it.
            admin_client
                .batch_execute(&format!(
                    "alter database {copy} set synchronous_commit = off"
                ))
                .await
                .unwrap();
            let database = admin.with_dbname(&copy);
            let variant_client = database.connect().await.unwrap();
            variant_client
                .batch_execute("select netbox_outbox.watch('dcim_device')")
                .await
                .unwrap();
            variant_client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("variant {label}: {e}"));
            extra_dbs.push((format!("sql: {label}"), database, variant_client));
        }
        client = admin.with_dbname(name).connect().await.unwrap();
    }
    let builtin: bool = std::env::var("BENCH_CAPTURE_BUILTIN")
        .map(|v| v != "false")
        .unwrap_or(true);

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!(
        "capture write-path benchmark: {ROWS} dcim_device rows, {statement_rows} row(s) per UPDATE, \
         {seconds} s per cell, {rounds} rounds, {cores} cores, synchronous_commit=off"
    );
    println!(
        "ratio = tps / baseline tps of the same round (median over rounds); cpu ratio = baseline \
         CPU per transaction / this variant's, the throughput ratio a CPU-bound server would see\n"
    );
    println!(
        "{:>7}  {:<38} {:>8} {:>7} {:>9} {:>9}   per-round ratios",
        "clients", "variant", "tps", "ratio", "cpu us/tx", "cpu ratio"
    );
    let variants: Vec<Variant> = if builtin {
        vec![
            Variant::Baseline,
            Variant::Capture,
            Variant::CaptureSidecarIdle,
            Variant::NaiveNotify,
        ]
    } else {
        vec![Variant::Baseline, Variant::Capture]
    };
    let labels: Vec<String> = variants
        .iter()
        .map(|v| v.label().to_string())
        .chain(extra_dbs.iter().map(|(label, _, _)| label.clone()))
        .collect();
    for &n in clients {
        let mut cells: Vec<Vec<Cell>> = labels.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (j, (_, variant_db, variant_client)) in extra_dbs.iter().enumerate() {
                variant_client.batch_execute("checkpoint").await.unwrap();
                cells[variants.len() + j].push(pgbench(variant_db, &script, n, seconds));
                variant_client
                    .batch_execute("truncate netbox_outbox.change")
                    .await
                    .unwrap();
            }
            for (i, &variant) in variants.iter().enumerate() {
                set_variant(&client, variant).await;
                // The idle sidecar sleeps as `netbox-outbox run` does when it has no work.
                let idle = (variant == Variant::CaptureSidecarIdle)
                    .then(|| tokio::spawn(idle_sidecar(database.clone())));
                cells[i].push(pgbench(&database, &script, n, seconds));
                if let Some(task) = idle {
                    task.abort();
                }
                client
                    .batch_execute("truncate netbox_outbox.change, naive_outbox")
                    .await
                    .unwrap();
            }
        }
        for (i, label) in labels.iter().enumerate() {
            let ratios: Vec<f64> = (0..rounds)
                .map(|r| cells[i][r].tps / cells[0][r].tps)
                .collect();
            let cpu_ratios: Vec<f64> = (0..rounds)
                .map(|r| cells[0][r].cpu_us_per_tx / cells[i][r].cpu_us_per_tx)
                .collect();
            let tps: Vec<f64> = cells[i].iter().map(|c| c.tps).collect();
            let cpu: Vec<f64> = cells[i].iter().map(|c| c.cpu_us_per_tx).collect();
            println!(
                "{n:>7}  {:<38} {:>8.0} {:>7.2} {:>9.0} {:>9.2}   {}",
                label,
                median(&tps),
                median(&ratios),
                median(&cpu),
                median(&cpu_ratios),
                ratios
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
    drop(client);
    let copies: Vec<String> = (0..extra_dbs.len())
        .map(|i| format!("{name}_v{i}"))
        .collect();
    drop(extra_dbs);
    for db in copies.iter().map(String::as_str).chain([name]) {
        admin_client
            .batch_execute(&format!("drop database if exists {db} with (force)"))
            .await
            .unwrap();
    }
}

async fn set_variant(client: &tokio_postgres::Client, variant: Variant) {
    let sql = match variant {
        Variant::Baseline => {
            "drop trigger if exists netbox_outbox_capture on dcim_device;
                              drop trigger if exists naive on dcim_device;"
        }
        Variant::Capture | Variant::CaptureSidecarIdle => {
            "drop trigger if exists naive on dcim_device;
             select netbox_outbox.watch('dcim_device');"
        }
        Variant::NaiveNotify => {
            "drop trigger if exists netbox_outbox_capture on dcim_device;
                                 create trigger naive after update on dcim_device
                                 for each row execute function naive_capture();"
        }
    };
    client.batch_execute(sql).await.unwrap();
    client.batch_execute("checkpoint").await.unwrap();
}

/// Sleeps as `netbox-outbox run` does when there is no work; on each notification it wakes,
/// works for 5 ms, and goes back to sleep.
async fn idle_sidecar(database: Database) {
    let mut wakeup = WakeUp::connect(&database).await.unwrap();
    loop {
        if !wakeup.begin_sleep().await.unwrap() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        wakeup.wait(Duration::from_secs(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One pgbench run: transactions per second, and the machine's busy CPU time per transaction
/// (from /proc/stat, all processes: the server, pgbench, anything else running).
struct Cell {
    tps: f64,
    cpu_us_per_tx: f64,
}

/// Runs pgbench against the database.
fn pgbench(database: &Database, script: &std::path::Path, clients: u32, seconds: u64) -> Cell {
    let threads = clients.min(2).to_string();
    let busy_before = busy_jiffies();
    let output = Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            &threads,
        ])
        .args(["-T", &seconds.to_string(), "-f"])
        .arg(script)
        .arg(database.libpq_url())
        .output()
        .expect("pgbench is installed (apt-get install postgresql-client)");
    let busy = busy_jiffies() - busy_before;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |prefix: &str| -> f64 {
        stdout
            .lines()
            .find_map(|line| {
                line.strip_prefix(prefix)?
                    .split(['/', ' '])
                    .find(|w| !w.is_empty())?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no '{prefix}' in pgbench output: {stdout}"))
    };
    let transactions = field("number of transactions actually processed: ");
    Cell {
        tps: field("tps = "),
        // jiffies are 10 ms on Linux (USER_HZ = 100)
        cpu_us_per_tx: busy as f64 * 10_000.0 / transactions,
    }
}

/// Busy CPU time of the whole machine in jiffies: user, nice, system, irq and softirq (not idle,
/// iowait or steal).
fn busy_jiffies() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    [0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    sorted[sorted.len() / 2]
}
