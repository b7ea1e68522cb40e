//! The delivery queue in SQL: claiming due deliveries under a lease, and recording outcomes.
//! The only module that writes netbox_outbox.delivery after the assembler created the rows.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::http::AttemptResult;
use crate::request::{Request, Transport};

/// A claimed delivery.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery_id: i64,
    pub request: Request,
    pub webhook_id: i64,
    pub webhook_name: String,
    pub event_id: i64,
    /// Attempts made, counting this one.
    pub attempt: i32,
    /// The id the receiver sees: the delivery's own, or the original's for a replay.
    pub message_id: i64,
    /// The webhook's Standard Webhooks secrets (`whsec_...`), as NetBox holds them now: each
    /// attempt is signed with them when sent. None: the request carries NetBox's frozen
    /// `X-Hook-Signature`, if any.
    pub standard_webhooks: Option<Result<crate::standard_webhooks::Secrets, String>>,
}

impl Claimed {
    /// The same delivery without its request's headers and body: enough to record an outcome.
    pub fn without_request(&self) -> Claimed {
        Claimed {
            delivery_id: self.delivery_id,
            request: self.request.without_payload(),
            webhook_id: self.webhook_id,
            webhook_name: self.webhook_name.clone(),
            event_id: self.event_id,
            attempt: self.attempt,
            message_id: self.message_id,
            standard_webhooks: None,
        }
    }
}

/// What to claim for one webhook: up to `heads` queue heads, each with up to `run_length - 1`
/// deliveries queued right behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub webhook_id: i64,
    pub heads: i64,
    pub run_length: i64,
}

/// Deliveries of one (webhook, object) queue claimed together, in queue order: its head, then
/// those queued right behind it. They are sent one after another, each once the one before it
/// was delivered, so the object's webhooks keep their commit order.
pub type Run = Vec<Claimed>;

/// Claims, per entry of `quotas`, up to `heads` due deliveries of the webhook that head their
/// (webhook, object) queue, each with a run of those behind it (no more than `limit`
/// deliveries in all, runs included, shared among the heads found), and leases them for their
/// timeout plus `lease_margin` (SQL function netbox_outbox.claim_runs). One short transaction;
/// no HTTP inside it. The heads are kept in netbox_outbox.queue_head (migration V9), so a claim
/// reads about what it returns however deep each object's queue is.
pub async fn claim(
    client: &Client,
    quotas: &[Quota],
    limit: i64,
    lease_margin: Duration,
    sidecar: Uuid,
) -> Result<Vec<Run>, tokio_postgres::Error> {
    if quotas.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = quotas.iter().map(|q| q.webhook_id).collect();
    let heads: Vec<i64> = quotas.iter().map(|q| q.heads).collect();
    let runs: Vec<i64> = quotas.iter().map(|q| q.run_length).collect();
    let margin_ms = lease_margin.as_millis() as i64;
    // Typed parameters: parse, bind and execute in one round trip.
    let rows = client
        .query_typed(
            "select * from netbox_outbox.claim_runs($1, $2, $3, $4, $5, $6)",
            &[
                (&ids, Type::INT8_ARRAY),
                (&heads, Type::INT8_ARRAY),
                (&runs, Type::INT8_ARRAY),
                (&limit, Type::INT8),
                (&margin_ms, Type::INT8),
                (&sidecar, Type::UUID),
            ],
        )
        .await?;
    // Rows come by head, each run in queue order.
    let mut claimed: Vec<Run> = Vec::new();
    let mut head = None;
    for r in &rows {
        let this: i64 = r.get(14);
        if head != Some(this) {
            head = Some(this);
            claimed.push(Vec::new());
        }
        claimed
            .last_mut()
            .expect("a run was started")
            .push(claimed_from(r));
    }
    Ok(claimed)
}

fn claimed_from(r: &tokio_postgres::Row) -> Claimed {
    let headers: String = r.get(7);
    let headers: Vec<(String, String)> = serde_json::from_str::<Vec<[String; 2]>>(&headers)
        .unwrap_or_default()
        .into_iter()
        .map(|[n, v]| (n, v))
        .collect();
    Claimed {
        webhook_id: r.get(1),
        webhook_name: r.get(2),
        event_id: r.get(3),
        attempt: r.get(4),
        delivery_id: r.get(0),
        message_id: r.get(12),
        standard_webhooks: r
            .get::<_, Option<String>>(13)
            .map(|s| crate::standard_webhooks::Secrets::parse(&s)),
        request: Request {
            method: r.get(5),
            url: r.get(6),
            headers,
            body: r.get(8),
            transport: Transport {
                timeout: Duration::from_millis(r.get::<_, i32>(9).max(0) as u64),
                ssl_verification: r.get(10),
                ca_file_path: r.get(11),
            },
        },
    }
}

/// The outcome of one attempt, ready to record.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub delivery_id: i64,
    pub webhook_id: i64,
    pub attempt: i32,
    pub result: AttemptResult,
    /// Some: retry after this delay, counted by the database from its own now(); None with a
    /// failure: dead.
    pub retry_in: Option<Duration>,
}

impl Outcome {
    fn state(&self) -> &'static str {
        if self.result.succeeded() {
            "delivered"
        } else if self.retry_in.is_some() {
            "pending"
        } else {
            "dead"
        }
    }
}

/// Records a batch of outcomes in one call (SQL function netbox_outbox.record): the attempts,
/// and the deliveries' new state where this sidecar still holds the lease. Times are passed as
/// delays (how long ago the attempt started, how long until the retry) and turned into times by
/// the database, so the sidecar host's clock never meets the database's. Returns how many
/// outcomes the database stored without the receiver's text (see the function).
pub async fn record(
    client: &Client,
    outcomes: &[Outcome],
    max_retry_after: Duration,
    sidecar: Uuid,
) -> Result<i32, tokio_postgres::Error> {
    if outcomes.is_empty() {
        return Ok(0);
    }
    let millis = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
    let mut ids = Vec::with_capacity(outcomes.len());
    let mut attempts = Vec::with_capacity(outcomes.len());
    let mut started_ago = Vec::with_capacity(outcomes.len());
    let mut durations = Vec::with_capacity(outcomes.len());
    let mut statuses = Vec::with_capacity(outcomes.len());
    let mut errors = Vec::with_capacity(outcomes.len());
    let mut excerpts = Vec::with_capacity(outcomes.len());
    let mut states = Vec::with_capacity(outcomes.len());
    let mut retry_in = Vec::with_capacity(outcomes.len());
    let mut retry_after_at = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        ids.push(o.delivery_id);
        attempts.push(o.attempt);
        started_ago.push(millis(o.result.started.elapsed()));
        durations.push(o.result.duration.as_millis().min(i32::MAX as u128) as i32);
        statuses.push(o.result.status.map(i32::from));
        errors.push(o.result.error.clone());
        excerpts.push(o.result.response_excerpt.clone());
        states.push(o.state());
        retry_in.push(o.retry_in.map(millis));
        retry_after_at.push(o.retry_in.and(o.result.retry_after_date));
    }
    let max_retry_after = millis(max_retry_after);
    // Typed parameters: parse, bind and execute in one round trip.
    let rows = client
        .query_typed(
            "select netbox_outbox.record($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                (&ids, Type::INT8_ARRAY),
                (&attempts, Type::INT4_ARRAY),
                (&started_ago, Type::INT8_ARRAY),
                (&durations, Type::INT4_ARRAY),
                (&statuses, Type::INT4_ARRAY),
                (&errors, Type::TEXT_ARRAY),
                (&excerpts, Type::TEXT_ARRAY),
                (&states, Type::TEXT_ARRAY),
                (&retry_in, Type::INT8_ARRAY),
                (&retry_after_at, Type::TIMESTAMPTZ_ARRAY),
                (&max_retry_after, Type::INT8),
                (&sidecar, Type::UUID),
            ],
        )
        .await?;
    Ok(rows.first().map_or(0, |r| r.get(0)))
}

/// Lets go of leased deliveries that were not sent (at shutdown), so another sidecar or the
/// next start sends them at once.
pub async fn release(
    client: &Client,
    ids: &[i64],
    sidecar: Uuid,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "update netbox_outbox.delivery
                set leased_until = '-infinity', leased_by = null, attempts = greatest(attempts - 1, 0)
              where id = any($1) and leased_by = $2 and state = 'pending'",
            &[&ids, &sidecar],
        )
        .await
}

/// The webhooks with pending deliveries (a loose index scan over the pending-delivery index).
pub async fn webhooks_with_work(client: &Client) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            "with recursive w(id) as (
                 (select webhook_id from netbox_outbox.delivery where state = 'pending'
                  order by webhook_id limit 1)
                 union all
                 select (select d.webhook_id from netbox_outbox.delivery d
                         where d.state = 'pending' and d.webhook_id > w.id
                         order by d.webhook_id limit 1)
                 from w where w.id is not null
             )
             select id from w where id is not null",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The rate limits configured by webhook name, by the ids of NetBox's webhooks of those names.
pub async fn webhook_ids(
    client: &Client,
    limits: &std::collections::BTreeMap<String, f64>,
) -> Result<std::collections::HashMap<i64, f64>, tokio_postgres::Error> {
    let names: Vec<&str> = limits.keys().map(String::as_str).collect();
    let rows = client
        .query(
            "select id, name from public.extras_webhook where name = any($1)",
            &[&names],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.get(0), *limits.get(r.get::<_, &str>(1))?)))
        .collect())
}

/// A webhook's pause state.
#[derive(Debug, Clone, PartialEq)]
pub struct Pause {
    pub webhook_id: i64,
    /// None: not paused. Zero: the pause is over and one probe may go. Measured by the
    /// database's clock when read.
    pub remaining: Option<Duration>,
    pub by_operator: bool,
    pub consecutive_failures: i32,
}

/// Every webhook's pause (SQL function netbox_outbox.pauses).
pub async fn pauses(client: &Client) -> Result<Vec<Pause>, tokio_postgres::Error> {
    let rows = client
        .query("select * from netbox_outbox.pauses()", &[])
        .await?;
    Ok(rows
        .iter()
        .map(|r| Pause {
            webhook_id: r.get(0),
            remaining: r
                .get::<_, Option<i64>>(1)
                .map(|ms| Duration::from_millis(ms.max(0) as u64)),
            by_operator: r.get(2),
            consecutive_failures: r.get(3),
        })
        .collect())
}

/// When a failing webhook is paused: after `threshold` failures in a row (0: never), for `pause`,
/// doubling for each failed probe up to `pause_max`.
#[derive(Debug, Clone, Copy)]
pub struct PausePolicy {
    pub threshold: i32,
    pub pause: Duration,
    pub pause_max: Duration,
}

/// A webhook's outcomes in one recorded batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Health {
    pub successes: i32,
    pub failures: i32,
    /// Failures after the batch's last success (all of them if none succeeded).
    pub failures_since_success: i32,
    /// A 410 Gone came back: the webhook is paused until an operator resumes it.
    pub gone: bool,
}

/// Updates a webhook's failure streak and pause after a batch of outcomes; returns whether the
/// webhook is paused now, and its failures in a row.
///
/// * A success ends the streak and an automatic pause (a probe succeeded).
/// * The failure that makes the streak reach the threshold pauses the webhook for exactly
///   `pause`. Failures of requests that were already in flight while it is paused change
///   nothing; the failure of the probe after a pause pauses it again for twice the last pause,
///   up to `pause_max` (kept in webhook_state.pause_ms).
/// * A 410 Gone pauses the webhook until an operator resumes it (resume_webhook()).
/// * Operator pauses are left alone.
pub async fn update_health(
    client: &Client,
    webhook_id: i64,
    health: Health,
    policy: PausePolicy,
) -> Result<(bool, i32), tokio_postgres::Error> {
    let Health {
        successes,
        failures,
        failures_since_success,
        gone,
    } = health;
    let PausePolicy {
        threshold,
        pause,
        pause_max,
    } = policy;
    let pause_ms = pause.as_millis() as i64;
    let pause_max_ms = pause_max.as_millis() as i64;
    client
        .execute(
            "insert into netbox_outbox.webhook_state (webhook_id) values ($1) on conflict do nothing",
            &[&webhook_id],
        )
        .await?;
    // `kind` is what this batch does to the pause: keep it, end it, start it, double it, or
    // make it last until an operator resumes the webhook.
    let row = client
        .query_one(
            "with s as (
                 select s.webhook_id,
                        case when $2 > 0 then $4 else s.consecutive_failures + $4 end as streak,
                        case
                            when s.paused_by_operator then 'keep'
                            when s.paused_until = 'infinity' then 'keep'
                            when $8 then 'gone'
                            when $2 > 0 and $4 = 0 then 'end'
                            when s.paused_until > now() then 'keep'
                            when s.paused_until is not null and $4 > 0 then 'double'
                            when s.paused_until is not null then 'end'
                            when $5 > 0 and (case when $2 > 0 then $4 else s.consecutive_failures + $4 end) >= $5
                                then 'start'
                            else 'keep'
                        end as kind
                 from netbox_outbox.webhook_state s where s.webhook_id = $1
                 for update
             )
             update netbox_outbox.webhook_state w set
                 consecutive_failures = s.streak,
                 last_failure_at = case when $3 > 0 then now() else w.last_failure_at end,
                 last_success_at = case when $2 > 0 then now() else w.last_success_at end,
                 pause_ms = case s.kind
                     when 'start' then $6
                     when 'double' then least($7, coalesce(w.pause_ms, $6) * 2)
                     when 'end' then null when 'gone' then null
                     else w.pause_ms end,
                 paused_until = case s.kind
                     when 'start' then now() + make_interval(secs => $6 / 1000.0)
                     when 'double' then now() + make_interval(secs => least($7, coalesce(w.pause_ms, $6) * 2) / 1000.0)
                     when 'end' then null
                     when 'gone' then 'infinity'
                     else w.paused_until end,
                 reason = case s.kind
                     when 'start' then s.streak || ' failures in a row'
                     when 'double' then s.streak || ' failures in a row (the probe failed too)'
                     when 'end' then null
                     when 'gone' then 'the receiver answered 410 Gone: paused until an operator resumes it '
                                      || format('(select netbox_outbox.resume_webhook(%L))', $1::text)
                     else w.reason end
             from s where w.webhook_id = s.webhook_id
             returning w.paused_until is not null, w.consecutive_failures",
            &[
                &webhook_id,
                &successes,
                &failures,
                &failures_since_success,
                &threshold,
                &pause_ms,
                &pause_max_ms,
                &gone,
            ],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
