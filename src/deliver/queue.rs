//! The delivery queue in SQL: claiming due deliveries under a lease, and recording outcomes.
//! The only module that writes netbox_outbox.delivery after the assembler created the rows.

use std::time::{Duration, SystemTime};

use tokio_postgres::Client;
use uuid::Uuid;

use super::http::{AttemptResult, Outgoing};

/// A claimed delivery.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub outgoing: Outgoing,
    pub webhook_id: i64,
    pub webhook_name: String,
    pub event_id: i64,
    /// Attempts made, counting this one.
    pub attempt: i32,
}

/// Queue queries must walk the partial indexes whatever the statistics say: right after a large
/// batch of deliveries is inserted, before autovacuum analyzes the table, the planner would
/// otherwise hash-join the whole backlog on every claim (measured: 40-500 ms instead of 1 ms).
const INDEX_PLANS: &str = "set local enable_seqscan = off; set local enable_hashjoin = off; \
                           set local enable_mergejoin = off";

/// Claims up to `limit` due deliveries of one webhook per entry of `webhooks`
/// (`(webhook_id, limit)`), each the head of its (webhook, object) queue, and leases them for
/// their timeout plus `lease_margin`. One short transaction; no HTTP inside it.
pub async fn claim(
    client: &mut Client,
    webhooks: &[(i64, i64)],
    lease_margin: Duration,
    sidecar: Uuid,
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    if webhooks.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = webhooks.iter().map(|w| w.0).collect();
    let limits: Vec<i64> = webhooks.iter().map(|w| w.1).collect();
    let margin_ms = lease_margin.as_millis() as i64;
    let tx = client.transaction().await?;
    tx.batch_execute(INDEX_PLANS).await?;
    let rows = tx
        .query(
            "with due as (
                 select c.id
                 from unnest($1::bigint[], $2::bigint[]) as w(webhook_id, quota)
                 cross join lateral (
                     select d.id from netbox_outbox.delivery d
                     where d.webhook_id = w.webhook_id and d.state = 'pending'
                       and d.next_attempt_at <= now() and d.leased_until < now()
                       -- in commit order per object: wait for any earlier delivery of it
                       and not exists (
                           select 1 from netbox_outbox.delivery e
                           where e.state = 'pending' and e.webhook_id = d.webhook_id
                             and e.content_type_id = d.content_type_id and e.object_id = d.object_id
                             and (e.seq, e.id) < (d.seq, d.id))
                     order by d.next_attempt_at, d.id
                     limit w.quota
                     for update of d skip locked
                 ) c
             )
             update netbox_outbox.delivery d
                set leased_until = now() + make_interval(secs => (d.timeout_ms + $3::bigint) / 1000.0),
                    leased_by = $4,
                    attempts = d.attempts + 1
               from due where d.id = due.id
             returning d.id, d.webhook_id, d.webhook_name, d.event_id, d.attempts, d.method, d.url,
                       d.headers::text, d.body, d.timeout_ms, d.ssl_verification, d.ca_file_path",
            &[&ids, &limits, &margin_ms, &sidecar],
        )
        .await?;
    tx.commit().await?;
    Ok(rows
        .iter()
        .map(|r| {
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
                outgoing: Outgoing {
                    id: r.get(0),
                    method: r.get(5),
                    url: r.get(6),
                    headers,
                    body: r.get(8),
                    timeout: Duration::from_millis(r.get::<_, i32>(9).max(0) as u64),
                    ssl_verification: r.get(10),
                    ca_file_path: r.get(11),
                },
            }
        })
        .collect())
}

/// The outcome of one attempt, ready to record.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub delivery_id: i64,
    pub webhook_id: i64,
    pub attempt: i32,
    pub result: AttemptResult,
    /// Some(t): retry at t; None with a failure: dead.
    pub retry_at: Option<SystemTime>,
}

impl Outcome {
    fn state(&self) -> &'static str {
        if self.result.succeeded() {
            "delivered"
        } else if self.retry_at.is_some() {
            "pending"
        } else {
            "dead"
        }
    }
}

/// Records a batch of outcomes in one transaction: the attempts, the deliveries' new state
/// (only where this sidecar still holds the lease), and each webhook's failure streak.
pub async fn record(
    client: &mut Client,
    outcomes: &[Outcome],
    sidecar: Uuid,
) -> Result<(), tokio_postgres::Error> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(outcomes.len());
    let mut attempts = Vec::with_capacity(outcomes.len());
    let mut started = Vec::with_capacity(outcomes.len());
    let mut durations = Vec::with_capacity(outcomes.len());
    let mut statuses = Vec::with_capacity(outcomes.len());
    let mut errors = Vec::with_capacity(outcomes.len());
    let mut excerpts = Vec::with_capacity(outcomes.len());
    let mut states = Vec::with_capacity(outcomes.len());
    let mut retry_at = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        ids.push(o.delivery_id);
        attempts.push(o.attempt);
        started.push(o.result.started_at);
        durations.push(o.result.duration.as_millis().min(i32::MAX as u128) as i32);
        statuses.push(o.result.status.map(i32::from));
        errors.push(o.result.error.clone());
        excerpts.push(o.result.response_excerpt.clone());
        states.push(o.state());
        retry_at.push(o.retry_at);
    }
    let tx = client.transaction().await?;
    tx.batch_execute(INDEX_PLANS).await?;
    tx.execute(
        "insert into netbox_outbox.attempt
             (delivery_id, attempt, started_at, duration_ms, status, error, response_excerpt, sidecar)
         select * , $8::uuid from unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::int[],
                                        $5::int[], $6::text[], $7::text[])",
        &[&ids, &attempts, &started, &durations, &statuses, &errors, &excerpts, &sidecar],
    )
    .await?;
    tx.execute(
        "update netbox_outbox.delivery d
            set state = o.state,
                next_attempt_at = coalesce(o.retry_at, d.next_attempt_at),
                leased_until = '-infinity',
                leased_by = null,
                last_status = o.status,
                last_error = o.error,
                finished_at = case when o.state = 'pending' then null else now() end
           from unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::int[], $5::text[])
                as o(id, state, retry_at, status, error)
          where d.id = o.id and d.leased_by = $6 and d.state = 'pending'",
        &[&ids, &states, &retry_at, &statuses, &errors, &sidecar],
    )
    .await?;
    tx.commit().await?;
    Ok(())
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

/// A webhook's pause state.
#[derive(Debug, Clone, PartialEq)]
pub struct Pause {
    pub webhook_id: i64,
    /// None: not paused. In the past: the pause is over and one probe may go.
    pub until: Option<SystemTime>,
    pub by_operator: bool,
    pub consecutive_failures: i32,
}

pub async fn pauses(client: &Client) -> Result<Vec<Pause>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select webhook_id,
                    case when paused_until = 'infinity' then now() + interval '100 years'
                         else paused_until end,
                    paused_by_operator, consecutive_failures
             from netbox_outbox.webhook_state
             where paused_until is not null or consecutive_failures > 0",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Pause {
            webhook_id: r.get(0),
            until: r.get(1),
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
    pub last_succeeded: bool,
}

/// Updates a webhook's failure streak after outcomes: a success ends a streak (and a pause that
/// was being probed); enough failures pause the webhook (see [`PausePolicy`]). Operator pauses
/// are left alone.
pub async fn update_health(
    client: &Client,
    webhook_id: i64,
    health: Health,
    policy: PausePolicy,
) -> Result<(), tokio_postgres::Error> {
    let Health {
        successes,
        failures,
        last_succeeded,
    } = health;
    let PausePolicy {
        threshold,
        pause,
        pause_max,
    } = policy;
    let pause_ms = pause.as_secs_f64() * 1000.0;
    let pause_max_ms = pause_max.as_secs_f64() * 1000.0;
    client
        .execute(
            "insert into netbox_outbox.webhook_state (webhook_id) values ($1) on conflict do nothing",
            &[&webhook_id],
        )
        .await?;
    client
        .execute(
            "update netbox_outbox.webhook_state s set
                 consecutive_failures = case when $4 then 0 else s.consecutive_failures + $3 end,
                 last_failure_at = case when $3 > 0 then now() else s.last_failure_at end,
                 last_success_at = case when $2 > 0 then now() else s.last_success_at end,
                 paused_until = case
                     when s.paused_by_operator then s.paused_until
                     when $4 then null
                     when $5 > 0 and s.consecutive_failures + $3 >= $5 then
                         now() + make_interval(secs => least($7::float8,
                             $6::float8 * power(2, greatest(0, s.consecutive_failures + $3 - $5))) / 1000.0)
                     else s.paused_until end,
                 reason = case
                     when s.paused_by_operator then s.reason
                     when $4 then null
                     when $5 > 0 and s.consecutive_failures + $3 >= $5 then
                         (s.consecutive_failures + $3) || ' failures in a row'
                     else s.reason end
             where s.webhook_id = $1",
            &[&webhook_id, &successes, &failures, &last_succeeded, &threshold, &pause_ms, &pause_max_ms],
        )
        .await?;
    Ok(())
}
