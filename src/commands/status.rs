//! `netbox-outbox status`: what is waiting, what failed, what is paused, what is watched, and
//! which sidecars run, from the database alone.
//!
//! One typed struct per section: `--json` serialises [`Status`] (numbers as numbers, absent
//! values as `null`), the text form renders each section with [`Table`] so columns line up
//! whatever the values' widths. A new section is a field of [`Status`], a query filling it in
//! [`gather`], and a `render_*` function called from [`render`].

use serde::Serialize;
use tokio_postgres::Client;

/// Everything `status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    pub capture: Capture,
    pub webhooks: Vec<WebhookStatus>,
    pub blocked_heads: Vec<BlockedQueues>,
    pub sidecars: Vec<SidecarStatus>,
}

/// What is captured and how far it has been read.
#[derive(Debug, Serialize)]
pub struct Capture {
    pub mode: Option<String>,
    pub watched_tables: i64,
    pub watched_without_trigger: i64,
    pub event_models_not_watched: i64,
    pub last_read_seconds_ago: Option<f64>,
    pub retention_days: Option<i64>,
    /// Committed changes no sidecar has read yet, and the age of the oldest (0 when none): the
    /// same numbers as the metrics `netbox_outbox_unread_changes` and
    /// `netbox_outbox_oldest_unread_seconds` (both from `netbox_outbox.read_lag()`).
    pub unread_changes: i64,
    pub oldest_unread_seconds: f64,
}

/// One webhook's deliveries.
#[derive(Debug, Serialize)]
pub struct WebhookStatus {
    pub webhook_id: i64,
    pub webhook: Option<String>,
    pub pending: i64,
    pub due: i64,
    pub in_flight: i64,
    pub retrying: i64,
    pub dead: i64,
    pub rejected: i64,
    pub oldest_pending_seconds: Option<f64>,
    pub paused: bool,
    pub paused_by_operator: bool,
    pub consecutive_failures: i32,
    pub pause_reason: Option<String>,
}

/// One webhook's object queues held back by a failing head (`netbox_outbox.blocked_heads`).
#[derive(Debug, Serialize)]
pub struct BlockedQueues {
    pub webhook: String,
    pub blocked_queues: i64,
    pub waiting_behind: i64,
    pub oldest_blocked_seconds: Option<f64>,
    pub oldest_delivery_id: i64,
    pub oldest_last_error: Option<String>,
}

/// One sidecar seen in the last hour.
#[derive(Debug, Serialize)]
pub struct SidecarStatus {
    pub id: String,
    pub hostname: String,
    pub pid: i32,
    pub version: String,
    pub started_at: String,
    pub last_seen_seconds_ago: f64,
    /// `running`, `stopped`, or `silent` (no heartbeat for a minute).
    pub state: &'static str,
}

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

/// Gathers every section.
pub async fn gather(client: &Client) -> Result<Status, tokio_postgres::Error> {
    Ok(Status {
        capture: capture(client).await?,
        webhooks: webhooks(client).await?,
        blocked_heads: blocked_heads(client).await?,
        sidecars: sidecars(client).await?,
    })
}

async fn capture(client: &Client) -> Result<Capture, tokio_postgres::Error> {
    let row = client
        .query_one(
            "select (select value from netbox_outbox.setting where name = 'capture_mode'),
                    (select count(*) from netbox_outbox.watched_tables where watched),
                    (select count(*) from netbox_outbox.watched_tables where watched and not trigger_installed),
                    (select count(*) from netbox_outbox.event_model e
                      where not exists (select 1 from netbox_outbox.watch w where w.table_name = e.table_name)
                        and to_regclass(format('public.%I', e.table_name)) is not null),
                    (select extract(epoch from now() - advanced_at)::float8 from netbox_outbox.cursor where name = 'changes'),
                    (select case when value ~ '^[0-9]+$' then value::int8 end
                       from netbox_outbox.setting where name = 'retention_days')",
            &[],
        )
        .await?;
    let lag = crate::health::read_lag(client).await?;
    Ok(Capture {
        mode: row.get(0),
        watched_tables: row.get(1),
        watched_without_trigger: row.get(2),
        event_models_not_watched: row.get(3),
        last_read_seconds_ago: row.get(4),
        retention_days: row.get(5),
        unread_changes: lag.unread,
        oldest_unread_seconds: lag.oldest_unread_seconds,
    })
}

async fn webhooks(client: &Client) -> Result<Vec<WebhookStatus>, tokio_postgres::Error> {
    Ok(client
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
                    coalesce(s.paused_until > now(), false), coalesce(s.paused_by_operator, false),
                    coalesce(s.consecutive_failures, 0), s.reason
             from d left join netbox_outbox.webhook_state s on s.webhook_id = d.webhook_id
             order by d.name",
            &[],
        )
        .await?
        .iter()
        .map(|r| WebhookStatus {
            webhook_id: r.get(0),
            webhook: r.get(1),
            pending: r.get(2),
            due: r.get(3),
            in_flight: r.get(4),
            retrying: r.get(5),
            dead: r.get(6),
            rejected: r.get(7),
            oldest_pending_seconds: r.get(8),
            paused: r.get(9),
            paused_by_operator: r.get(10),
            consecutive_failures: r.get(11),
            pause_reason: r.get(12),
        })
        .collect())
}

/// Queues held back by a failing head, per webhook, the oldest first named (V11's view).
async fn blocked_heads(client: &Client) -> Result<Vec<BlockedQueues>, tokio_postgres::Error> {
    Ok(client
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
        .map(|r| BlockedQueues {
            webhook: r.get(0),
            blocked_queues: r.get(1),
            waiting_behind: r.get(2),
            oldest_blocked_seconds: r.get(3),
            oldest_delivery_id: r.get(4),
            oldest_last_error: r.get(5),
        })
        .collect())
}

async fn sidecars(client: &Client) -> Result<Vec<SidecarStatus>, tokio_postgres::Error> {
    Ok(client
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
            SidecarStatus {
                id: r.get(0),
                hostname: r.get(1),
                pid: r.get(2),
                version: r.get(3),
                started_at: r.get(4),
                last_seen_seconds_ago: seconds,
                state: if stopped {
                    "stopped"
                } else if seconds < 60.0 {
                    "running"
                } else {
                    "silent"
                },
            }
        })
        .collect())
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

/// A text table whose columns are as wide as their widest cell: the first column left-aligned
/// (names), the others right-aligned (numbers), the last left-aligned (free text).
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self, indent: &str) -> String {
        let columns = self.header.len();
        let width = |i: usize| {
            std::iter::once(&self.header)
                .chain(&self.rows)
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..columns).map(width).collect();
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = indent.to_string();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                if i == 0 || i + 1 == columns {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                } else {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The status for people.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    render_capture(&status.capture, &mut out);
    render_webhooks(&status.webhooks, &mut out);
    render_blocked_heads(&status.blocked_heads, &mut out);
    render_sidecars(&status.sidecars, &mut out);
    out
}

fn render_capture(c: &Capture, out: &mut String) {
    out.push_str(&format!(
        "capture: mode {}, {} tables watched, last read {} ago, {} unread changes{}, retention {} days\n",
        c.mode.as_deref().unwrap_or("?"),
        c.watched_tables,
        age(c.last_read_seconds_ago),
        c.unread_changes,
        if c.unread_changes > 0 {
            format!(" (oldest {})", age(Some(c.oldest_unread_seconds)))
        } else {
            String::new()
        },
        c.retention_days.map_or("?".to_string(), |d| d.to_string()),
    ));
    if c.watched_without_trigger > 0 {
        out.push_str(&format!(
            "  warning: {} watched tables have no trigger: select * from netbox_outbox.sync();\n",
            c.watched_without_trigger
        ));
    }
    if c.event_models_not_watched > 0 {
        out.push_str(&format!(
            "  note: {} NetBox models that support event rules are not watched: select * from netbox_outbox.watched_tables;\n",
            c.event_models_not_watched
        ));
    }
}

fn render_webhooks(webhooks: &[WebhookStatus], out: &mut String) {
    out.push_str("\nwebhooks:\n");
    if webhooks.is_empty() {
        out.push_str("  (no deliveries yet)\n");
        return;
    }
    let mut table = Table::new(&[
        "WEBHOOK",
        "PENDING",
        "DUE",
        "IN FLIGHT",
        "RETRYING",
        "DEAD",
        "REJECTED",
        "OLDEST",
        "STATE",
    ]);
    for w in webhooks {
        let state = if w.paused_by_operator {
            "paused by an operator".to_string()
        } else if w.paused {
            format!(
                "paused ({})",
                w.pause_reason.as_deref().unwrap_or("failures")
            )
        } else if w.consecutive_failures > 0 {
            format!("{} failures in a row", w.consecutive_failures)
        } else {
            "ok".into()
        };
        table.row(vec![
            w.webhook
                .clone()
                .unwrap_or_else(|| format!("#{}", w.webhook_id)),
            w.pending.to_string(),
            w.due.to_string(),
            w.in_flight.to_string(),
            w.retrying.to_string(),
            w.dead.to_string(),
            w.rejected.to_string(),
            age(w.oldest_pending_seconds),
            state,
        ]);
    }
    out.push_str(&table.render("  "));
}

fn render_blocked_heads(blocked: &[BlockedQueues], out: &mut String) {
    if blocked.is_empty() {
        return;
    }
    out.push_str(
        "\nqueues blocked behind a failing delivery (select * from netbox_outbox.blocked_heads):\n",
    );
    let mut table = Table::new(&[
        "WEBHOOK",
        "OBJECTS",
        "WAITING",
        "OLDEST",
        "HEAD",
        "LAST ERROR (release with netbox-outbox skip --delivery HEAD)",
    ]);
    for b in blocked {
        table.row(vec![
            b.webhook.clone(),
            b.blocked_queues.to_string(),
            b.waiting_behind.to_string(),
            age(b.oldest_blocked_seconds),
            b.oldest_delivery_id.to_string(),
            b.oldest_last_error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&table.render("  "));
}

fn render_sidecars(sidecars: &[SidecarStatus], out: &mut String) {
    out.push_str("\nsidecars (last hour):\n");
    if sidecars.is_empty() {
        out.push_str("  none: start one with netbox-outbox run\n");
        return;
    }
    let mut table = Table::new(&["SIDECAR", "HOST", "PID", "VERSION", "SEEN", "STATE"]);
    for s in sidecars {
        table.row(vec![
            s.id.chars().take(8).collect(),
            s.hostname.clone(),
            s.pid.to_string(),
            s.version.clone(),
            format!("{} ago", age(Some(s.last_seen_seconds_ago))),
            s.state.to_string(),
        ]);
    }
    out.push_str(&table.render("  "));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns line up under their headers whatever the widths of names and numbers.
    #[test]
    fn columns_line_up() {
        let mut table = Table::new(&["WEBHOOK", "PENDING", "STATE"]);
        table.row(vec![
            "a-very-long-webhook-name".into(),
            "1234567".into(),
            "ok".into(),
        ]);
        table.row(vec!["crm".into(), "3".into(), "paused (HTTP 500)".into()]);
        let text = table.render("  ");
        let lines: Vec<&str> = text.lines().collect();
        // right-aligned numbers end where their header ends; the last column starts together
        let end = |line: &str, what: &str| line.find(what).unwrap() + what.len();
        assert_eq!(end(lines[0], "PENDING"), end(lines[1], "1234567"));
        assert_eq!(end(lines[0], "PENDING"), end(lines[2], "3"));
        assert_eq!(lines[0].find("STATE"), lines[1].rfind("ok"));
        assert_eq!(lines[0].find("STATE"), lines[2].find("paused"));
        assert_eq!(
            lines[1].find("1234567").unwrap() - 2,
            "  a-very-long-webhook-name".len()
        );
    }

    /// `--json` types: counts and days as numbers, absent values as null.
    #[test]
    fn json_is_typed() {
        let status = Status {
            capture: Capture {
                mode: Some("all".into()),
                watched_tables: 3,
                watched_without_trigger: 0,
                event_models_not_watched: 0,
                last_read_seconds_ago: None,
                retention_days: Some(7),
                unread_changes: 0,
                oldest_unread_seconds: 0.0,
            },
            webhooks: vec![],
            blocked_heads: vec![BlockedQueues {
                webhook: "crm".into(),
                blocked_queues: 2,
                waiting_behind: 5,
                oldest_blocked_seconds: None,
                oldest_delivery_id: 41,
                oldest_last_error: None,
            }],
            sidecars: vec![],
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["capture"]["retention_days"], serde_json::json!(7));
        assert!(json["capture"]["last_read_seconds_ago"].is_null());
        assert!(json["webhooks"].is_array());
        assert_eq!(
            json["blocked_heads"][0]["waiting_behind"],
            serde_json::json!(5)
        );
        assert!(render(&status).contains("skip --delivery"));
    }
}
