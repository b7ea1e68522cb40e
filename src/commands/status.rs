//! `netbox-outbox status`: what is waiting, what failed, what is paused, what is watched, and
//! which sidecars run, from the database alone.

use serde_json::{Value, json};
use tokio_postgres::Client;

/// Prints the status, as a table or as JSON.
pub async fn print(client: &Client, as_json: bool) -> Result<(), tokio_postgres::Error> {
    let status = gather(client).await?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// Gathers the status as JSON (also the source of the text form).
pub async fn gather(client: &Client) -> Result<Value, tokio_postgres::Error> {
    let capture = client
        .query_one(
            "select (select value from netbox_outbox.setting where name = 'capture_mode'),
                    (select count(*) from netbox_outbox.watched_tables where watched),
                    (select count(*) from netbox_outbox.watched_tables where watched and not trigger_installed),
                    (select count(*) from netbox_outbox.event_model e
                      where not exists (select 1 from netbox_outbox.watch w where w.table_name = e.table_name)
                        and to_regclass(format('public.%I', e.table_name)) is not null),
                    (select extract(epoch from now() - advanced_at)::float8 from netbox_outbox.cursor where name = 'changes'),
                    (select value from netbox_outbox.setting where name = 'retention_days')",
            &[],
        )
        .await?;
    let webhooks: Vec<Value> = client
        .query(
            "with d as (
                 select webhook_id, max(webhook_name) as name,
                        count(*) filter (where state = 'pending') as pending,
                        count(*) filter (where state = 'pending' and next_attempt_at <= now()) as due,
                        count(*) filter (where state = 'pending' and leased_until > now()) as in_flight,
                        count(*) filter (where state = 'pending' and attempts > 0) as retrying,
                        count(*) filter (where state = 'dead') as dead,
                        count(*) filter (where state = 'rejected') as rejected,
                        extract(epoch from now() - min(created_at) filter (where state = 'pending'))::float8 as oldest_s
                 from netbox_outbox.delivery group by webhook_id
             )
             select d.webhook_id, d.name, d.pending, d.due, d.in_flight, d.retrying, d.dead, d.rejected, d.oldest_s,
                    s.paused_until > now() as paused, s.paused_by_operator, s.consecutive_failures, s.reason
             from d left join netbox_outbox.webhook_state s on s.webhook_id = d.webhook_id
             order by d.name",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            json!({
                "webhook_id": r.get::<_, i64>(0),
                "webhook": r.get::<_, Option<String>>(1),
                "pending": r.get::<_, i64>(2),
                "due": r.get::<_, i64>(3),
                "in_flight": r.get::<_, i64>(4),
                "retrying": r.get::<_, i64>(5),
                "dead": r.get::<_, i64>(6),
                "rejected": r.get::<_, i64>(7),
                "oldest_pending_seconds": r.get::<_, Option<f64>>(8),
                "paused": r.get::<_, Option<bool>>(9).unwrap_or(false),
                "paused_by_operator": r.get::<_, Option<bool>>(10).unwrap_or(false),
                "consecutive_failures": r.get::<_, Option<i32>>(11).unwrap_or(0),
                "pause_reason": r.get::<_, Option<String>>(12),
            })
        })
        .collect();
    // Queues held back by a failing head, per webhook (netbox_outbox.blocked_heads, V11).
    let blocked: Vec<Value> = client
        .query(
            "select webhook_name, count(*), sum(waiting_behind)::bigint,
                    extract(epoch from max(blocked_for))::float8,
                    (array_agg(delivery_id order by failing_since))[1],
                    (array_agg(last_error order by failing_since))[1]
             from netbox_outbox.blocked_heads group by webhook_name order by webhook_name",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            json!({
                "webhook": r.get::<_, String>(0),
                "blocked_queues": r.get::<_, i64>(1),
                "waiting_behind": r.get::<_, i64>(2),
                "oldest_blocked_seconds": r.get::<_, Option<f64>>(3),
                "oldest_delivery_id": r.get::<_, i64>(4),
                "oldest_last_error": r.get::<_, Option<String>>(5),
            })
        })
        .collect();
    let sidecars: Vec<Value> = client
        .query(
            "select id::text, hostname, pid, version, started_at::text, extract(epoch from now() - last_seen_at)::float8,
                    stopped_at is not null
             from netbox_outbox.sidecar
             where last_seen_at > now() - interval '1 hour' order by started_at",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let seconds: f64 = r.get(5);
            let stopped: bool = r.get(6);
            json!({
                "id": r.get::<_, String>(0),
                "hostname": r.get::<_, String>(1),
                "pid": r.get::<_, i32>(2),
                "version": r.get::<_, String>(3),
                "started_at": r.get::<_, String>(4),
                "last_seen_seconds_ago": seconds,
                "state": if stopped { "stopped" } else if seconds < 60.0 { "running" } else { "silent" },
            })
        })
        .collect();
    Ok(json!({
        "capture": {
            "mode": capture.get::<_, Option<String>>(0),
            "watched_tables": capture.get::<_, i64>(1),
            "watched_without_trigger": capture.get::<_, i64>(2),
            "event_models_not_watched": capture.get::<_, i64>(3),
            "last_read_seconds_ago": capture.get::<_, Option<f64>>(4),
            "retention_days": capture.get::<_, Option<String>>(5),
        },
        "webhooks": webhooks,
        "blocked_heads": blocked,
        "sidecars": sidecars,
    }))
}

fn age(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s < 120.0 => format!("{s:.0}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.1}h", s / 3600.0),
        Some(s) => format!("{:.1}d", s / 86400.0),
    }
}

/// The status for people.
pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let c = &status["capture"];
    out.push_str(&format!(
        "capture: mode {}, {} tables watched, last read {} ago, retention {} days\n",
        c["mode"].as_str().unwrap_or("?"),
        c["watched_tables"],
        age(c["last_read_seconds_ago"].as_f64()),
        c["retention_days"].as_str().unwrap_or("?"),
    ));
    if c["watched_without_trigger"].as_i64().unwrap_or(0) > 0 {
        out.push_str(&format!(
            "  warning: {} watched tables have no trigger: select * from netbox_outbox.sync();\n",
            c["watched_without_trigger"]
        ));
    }
    if c["event_models_not_watched"].as_i64().unwrap_or(0) > 0 {
        out.push_str(&format!(
            "  note: {} NetBox models that support event rules are not watched: select * from netbox_outbox.watched_tables;\n",
            c["event_models_not_watched"]
        ));
    }
    out.push_str("\nwebhooks:\n");
    let webhooks = status["webhooks"].as_array().cloned().unwrap_or_default();
    if webhooks.is_empty() {
        out.push_str("  (no deliveries yet)\n");
    } else {
        out.push_str(&format!(
            "  {:<24} {:>8} {:>6} {:>9} {:>8} {:>6} {:>8} {:>8}  {}\n",
            "WEBHOOK",
            "PENDING",
            "DUE",
            "IN FLIGHT",
            "RETRYING",
            "DEAD",
            "REJECTED",
            "OLDEST",
            "STATE"
        ));
        for w in webhooks {
            let state = if w["paused_by_operator"] == true {
                "paused by an operator".to_string()
            } else if w["paused"] == true {
                format!(
                    "paused ({})",
                    w["pause_reason"].as_str().unwrap_or("failures")
                )
            } else if w["consecutive_failures"].as_i64().unwrap_or(0) > 0 {
                format!("{} failures in a row", w["consecutive_failures"])
            } else {
                "ok".into()
            };
            out.push_str(&format!(
                "  {:<24} {:>8} {:>6} {:>9} {:>8} {:>6} {:>8} {:>8}  {}\n",
                w["webhook"].as_str().unwrap_or("?"),
                w["pending"],
                w["due"],
                w["in_flight"],
                w["retrying"],
                w["dead"],
                w["rejected"],
                age(w["oldest_pending_seconds"].as_f64()),
                state
            ));
        }
    }
    let blocked = status["blocked_heads"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !blocked.is_empty() {
        out.push_str(
            "\nqueues blocked behind a failing delivery (select * from netbox_outbox.blocked_heads):\n",
        );
        for b in blocked {
            out.push_str(&format!(
                "  {}: {} objects blocked, {} deliveries waiting, oldest for {} (delivery {}: {}); \
                 release with netbox-outbox skip --delivery {}\n",
                b["webhook"].as_str().unwrap_or("?"),
                b["blocked_queues"],
                b["waiting_behind"],
                age(b["oldest_blocked_seconds"].as_f64()),
                b["oldest_delivery_id"],
                b["oldest_last_error"].as_str().unwrap_or("-"),
                b["oldest_delivery_id"],
            ));
        }
    }
    out.push_str("\nsidecars (last hour):\n");
    let sidecars = status["sidecars"].as_array().cloned().unwrap_or_default();
    if sidecars.is_empty() {
        out.push_str("  none: start one with netbox-outbox run\n");
    }
    for s in sidecars {
        out.push_str(&format!(
            "  {} on {} (pid {}, v{}): {}, seen {} ago\n",
            &s["id"].as_str().unwrap_or("?")[..8],
            s["hostname"].as_str().unwrap_or("?"),
            s["pid"],
            s["version"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            age(s["last_seen_seconds_ago"].as_f64())
        ));
    }
    out
}
