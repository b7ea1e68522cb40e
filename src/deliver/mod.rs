//! Delivering webhooks: claim due deliveries, send them concurrently outside any transaction,
//! record each outcome, retry on the schedule, pause webhooks that keep failing.
//!
//! Order: a delivery waits for every earlier delivery of the same webhook and object (the claim
//! only takes queue heads), so one object's webhooks arrive in commit order, while other objects
//! and other webhooks go on. Concurrency is bounded in all and per webhook, so a slow webhook
//! cannot take every connection.

pub mod backoff;
pub mod http;
pub mod queue;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use metrics::{counter, gauge, histogram};
use rand::Rng;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use self::backoff::{Backoff, Next};
use self::http::Sender;
use self::queue::{Claimed, Outcome};
use crate::config::DeliveryConfig;
use crate::db::Database;
use crate::metrics as m;

/// The delivery half of a sidecar.
pub struct Dispatcher {
    database: Database,
    config: DeliveryConfig,
    sidecar: Uuid,
    sender: Arc<Sender>,
    backoff: Backoff,
    wake: Arc<Notify>,
}

/// A finished send, from a send task to the dispatcher.
struct Done {
    claimed: Claimed,
    result: http::AttemptResult,
}

impl Dispatcher {
    /// `wake` is notified when new deliveries may be due (by the assembler, or a notification).
    pub fn new(
        database: Database,
        config: DeliveryConfig,
        sidecar: Uuid,
        wake: Arc<Notify>,
    ) -> Self {
        let backoff = Backoff {
            schedule: config.retry_schedule.clone(),
            jitter: config.retry_jitter,
            max_retry_after: config.max_retry_after,
        };
        Dispatcher {
            sender: Arc::new(Sender::new(config.clone())),
            database,
            config,
            sidecar,
            backoff,
            wake,
        }
    }

    /// Runs until `cancel`; then stops claiming, lets requests in flight finish within `grace`,
    /// records their outcomes, and releases anything left.
    pub async fn run(self, cancel: CancellationToken, grace: Duration) {
        let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel::<Done>();
        let recorder = tokio::spawn(record_loop(
            self.database.clone(),
            outcomes_rx,
            self.backoff.clone(),
            self.config.clone(),
            self.sidecar,
        ));

        // Each send task returns (webhook id, delivery id).
        let mut sends: JoinSet<(i64, i64)> = JoinSet::new();
        let mut in_flight: HashMap<i64, usize> = HashMap::new();
        // Deliveries leased and not yet sent, by id: what to release if the grace period ends.
        let mut leased: HashSet<i64> = HashSet::new();
        // Deliveries claimed and not yet sent, per webhook, in claim order (heads first).
        let mut ready: HashMap<i64, VecDeque<(Instant, Claimed)>> = HashMap::new();
        let mut client = None;
        let mut failures = 0u32;
        let mut webhooks: Vec<i64> = Vec::new();
        let mut pauses: HashMap<i64, queue::Pause> = HashMap::new();
        let mut refreshed = Instant::now() - self.config.poll_interval;

        while !cancel.is_cancelled() {
            // Reap finished sends.
            while let Some(done) = sends.try_join_next() {
                if let Ok((webhook, delivery)) = done {
                    release_slot(&mut in_flight, webhook);
                    leased.remove(&delivery);
                }
            }

            let db = match &mut client {
                Some(c) => c,
                None => match self.database.connect().await {
                    Ok(c) => {
                        if failures > 0 {
                            counter!(m::DB_RECONNECTS, "role" => "dispatcher").increment(1);
                            info!("dispatcher reconnected to the database");
                        }
                        failures = 0;
                        client = Some(c);
                        client.as_mut().expect("just set")
                    }
                    Err(error) => {
                        failures += 1;
                        warn!(error = %crate::error_chain(&error), "dispatcher cannot reach the database; retrying");
                        pause(&cancel, reconnect_delay(failures)).await;
                        continue;
                    }
                },
            };

            if refreshed.elapsed() >= self.config.poll_interval / 2 {
                match refresh(db).await {
                    Ok((w, p)) => {
                        webhooks = w;
                        pauses = p;
                        refreshed = Instant::now();
                    }
                    Err(error) => {
                        warn!(error = %crate::error_chain(&error), "dispatcher lost its database connection");
                        client = None;
                        failures += 1;
                        pause(&cancel, reconnect_delay(failures)).await;
                        continue;
                    }
                }
            }

            // Send what was claimed ahead, as far as slots allow; let go of what waited too long.
            let now = SystemTime::now();
            let cap_of =
                |webhook: i64, busy: usize| match pauses.get(&webhook).and_then(|p| p.until) {
                    Some(until) if until > now => 0,
                    // the pause is over: one delivery probes the receiver
                    Some(_) => usize::from(busy == 0),
                    None => self.config.per_webhook_concurrency,
                };
            let stale = self.launch(
                &mut ready,
                &mut in_flight,
                &mut sends,
                &outcomes_tx,
                &cap_of,
            );
            if !stale.is_empty() {
                for id in &stale {
                    leased.remove(id);
                }
                if let Err(error) = queue::release(db, &stale, self.sidecar).await {
                    warn!(error = %crate::error_chain(&error), "releasing deliveries failed; their leases will expire");
                }
            }

            // Claim ahead: up to one webhook's worth of slots beyond those in flight, so a
            // claim's round trip overlaps the requests in flight instead of leaving slots idle.
            let busy_total: usize = in_flight.values().sum();
            let ready_total: usize = ready.values().map(VecDeque::len).sum();
            let mut free = (2 * self.config.concurrency).saturating_sub(busy_total + ready_total);
            let mut quotas = Vec::new();
            for &webhook in &webhooks {
                if free == 0 {
                    break;
                }
                let busy = in_flight.get(&webhook).copied().unwrap_or(0);
                let queued = ready.get(&webhook).map_or(0, VecDeque::len);
                let cap = cap_of(webhook, busy);
                // only a webhook that is not paused or probed gets deliveries claimed ahead
                let ahead = if cap == self.config.per_webhook_concurrency {
                    cap
                } else {
                    0
                };
                let quota = (cap + ahead)
                    .saturating_sub(busy + queued)
                    .min(free)
                    .min(self.config.claim_batch);
                // A claim is one transaction whatever its size: wait until a good share of the
                // slots is free rather than claim one delivery at a time (measured: claiming per
                // freed slot halved throughput).
                if quota > 0
                    && (busy + queued == 0 || (queued <= cap / 2 && quota >= refill_at(cap)))
                {
                    quotas.push((webhook, quota as i64));
                    free -= quota;
                }
            }

            let started = Instant::now();
            let claimed = match queue::claim(db, &quotas, self.config.lease_margin, self.sidecar)
                .await
            {
                Ok(claimed) => claimed,
                Err(error) => {
                    warn!(error = %crate::error_chain(&error), "claiming deliveries failed; reconnecting");
                    client = None;
                    failures += 1;
                    pause(&cancel, reconnect_delay(failures)).await;
                    continue;
                }
            };
            let got = claimed.len();
            if !quotas.is_empty() {
                histogram!(m::CLAIM_SECONDS).record(started.elapsed().as_secs_f64());
                tracing::trace!(
                    claimed = got,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "claimed"
                );
            }
            let claimed_at = Instant::now();
            for claimed in claimed {
                leased.insert(claimed.outgoing.id);
                ready
                    .entry(claimed.webhook_id)
                    .or_default()
                    .push_back((claimed_at, claimed));
            }
            self.launch(
                &mut ready,
                &mut in_flight,
                &mut sends,
                &outcomes_tx,
                &cap_of,
            );
            gauge!(m::IN_FLIGHT).set(in_flight.values().sum::<usize>() as f64);

            // Something was claimed: look again at once (more may be due). Otherwise wait for
            // new work, a finished send (which frees a slot), or the poll interval.
            if got > 0 && free > 0 {
                tokio::task::yield_now().await;
                continue;
            }
            let poll = self.config.poll_interval;
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.wake.notified() => { refreshed = Instant::now() - poll; }
                Some(done) = sends.join_next(), if !sends.is_empty() => {
                    if let Ok((webhook, delivery)) = done {
                        release_slot(&mut in_flight, webhook);
                        leased.remove(&delivery);
                    }
                }
                () = tokio::time::sleep(poll) => {}
            }
        }

        // Shutdown: no more claims; give requests in flight the grace period.
        info!(
            in_flight = sends.len(),
            "dispatcher stopping; waiting for requests in flight"
        );
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = sends.join_next() => match next {
                    None => break,
                    Some(Ok((_, delivery))) => { leased.remove(&delivery); }
                    Some(Err(_)) => {}
                },
                () = &mut deadline => {
                    warn!(abandoned = sends.len(), "grace period over; abandoning requests in flight");
                    sends.abort_all();
                    break;
                }
            }
        }
        drop(outcomes_tx);
        // Outcomes of finished sends are recorded if the database lets us within the grace
        // period; otherwise their leases expire and they are sent again (at least once).
        let _ = tokio::time::timeout(grace.max(Duration::from_secs(1)), recorder).await;
        // Release what was leased and not sent, so it goes out again at once.
        let unsent: Vec<i64> = leased.into_iter().collect();
        if !unsent.is_empty()
            && let Ok(db) = self.database.connect().await
        {
            match queue::release(&db, &unsent, self.sidecar).await {
                Ok(n) => info!(released = n, "released deliveries that were not sent"),
                Err(error) => {
                    warn!(error = %crate::error_chain(&error), "could not release leased deliveries; their leases will expire")
                }
            }
        }
    }
}

impl Dispatcher {
    /// Starts sends from `ready` while each webhook has free slots (`cap_of(webhook, busy)`).
    /// Returns the deliveries that waited in `ready` longer than half the lease margin: their
    /// lease may no longer cover a whole request, so they are released, not sent.
    fn launch(
        &self,
        ready: &mut HashMap<i64, VecDeque<(Instant, Claimed)>>,
        in_flight: &mut HashMap<i64, usize>,
        sends: &mut JoinSet<(i64, i64)>,
        outcomes: &mpsc::UnboundedSender<Done>,
        cap_of: &impl Fn(i64, usize) -> usize,
    ) -> Vec<i64> {
        let mut stale = Vec::new();
        let too_old = self.config.lease_margin / 2;
        ready.retain(|&webhook, queue| {
            while let Some((claimed_at, _)) = queue.front() {
                if claimed_at.elapsed() > too_old {
                    let (_, claimed) = queue.pop_front().expect("front exists");
                    stale.push(claimed.outgoing.id);
                    continue;
                }
                let busy = in_flight.get(&webhook).copied().unwrap_or(0);
                if busy >= cap_of(webhook, busy) {
                    break;
                }
                let (_, claimed) = queue.pop_front().expect("front exists");
                *in_flight.entry(webhook).or_default() += 1;
                let delivery = claimed.outgoing.id;
                let sender = self.sender.clone();
                let header = self.config.delivery_id_header.clone();
                let outcomes = outcomes.clone();
                sends.spawn(async move {
                    let result = sender.send(&claimed.outgoing, &header).await;
                    let _ = outcomes.send(Done { claimed, result });
                    (webhook, delivery)
                });
            }
            !queue.is_empty()
        });
        stale
    }
}

/// How many of a webhook's `cap` slots must be free before claiming more for it.
fn refill_at(cap: usize) -> usize {
    (cap / 4).max(1)
}

fn release_slot(in_flight: &mut HashMap<i64, usize>, webhook: i64) {
    if let Some(n) = in_flight.get_mut(&webhook) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            in_flight.remove(&webhook);
        }
    }
}

async fn refresh(
    db: &tokio_postgres::Client,
) -> Result<(Vec<i64>, HashMap<i64, queue::Pause>), tokio_postgres::Error> {
    let webhooks = queue::webhooks_with_work(db).await?;
    let pauses = queue::pauses(db)
        .await?
        .into_iter()
        .map(|p| (p.webhook_id, p))
        .collect();
    Ok((webhooks, pauses))
}

/// Writes outcomes in batches until the channel closes and everything is written.
async fn record_loop(
    database: Database,
    mut outcomes: mpsc::UnboundedReceiver<Done>,
    backoff: Backoff,
    config: DeliveryConfig,
    sidecar: Uuid,
) {
    let mut client = None;
    let mut pending: Vec<(Outcome, String)> = Vec::new();
    let mut failures = 0u32;
    let mut closed = false;
    while !(closed && pending.is_empty()) {
        if !closed {
            // Take what is there, waiting for the first one; batches form under load.
            if pending.is_empty() {
                match outcomes.recv().await {
                    Some(done) => pending.push(to_outcome(done, &backoff)),
                    None => {
                        closed = true;
                        continue;
                    }
                }
            }
            while pending.len() < 1000 {
                match outcomes.try_recv() {
                    Ok(done) => pending.push(to_outcome(done, &backoff)),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
        }
        if client.is_none() {
            match database.connect().await {
                Ok(c) => {
                    if failures > 0 {
                        counter!(m::DB_RECONNECTS, "role" => "recorder").increment(1);
                    }
                    failures = 0;
                    client = Some(c);
                }
                Err(error) => {
                    failures += 1;
                    warn!(error = %crate::error_chain(&error), waiting = pending.len(), "cannot record outcomes; retrying");
                    tokio::time::sleep(reconnect_delay(failures)).await;
                    continue;
                }
            }
        }
        let db = client.as_mut().expect("connected");
        let batch: Vec<Outcome> = pending.iter().map(|(o, _)| o.clone()).collect();
        if let Err(error) = queue::record(db, &batch, sidecar).await {
            warn!(error = %crate::error_chain(&error), "recording outcomes failed; reconnecting");
            client = None;
            failures += 1;
            tokio::time::sleep(reconnect_delay(failures)).await;
            continue;
        }
        // Webhook health, per webhook in the batch.
        let mut health: HashMap<i64, queue::Health> = HashMap::new();
        for (outcome, _) in &pending {
            let entry = health.entry(outcome.webhook_id).or_default();
            if outcome.result.succeeded() {
                entry.successes += 1;
            } else {
                entry.failures += 1;
            }
            entry.last_succeeded = outcome.result.succeeded();
        }
        let policy = queue::PausePolicy {
            threshold: config.pause_after_failures as i32,
            pause: config.pause_initial,
            pause_max: config.pause_max,
        };
        for (webhook, h) in health {
            if let Err(error) = queue::update_health(db, webhook, h, policy).await {
                warn!(error = %crate::error_chain(&error), webhook, "could not update webhook health");
            }
        }
        for (outcome, webhook_name) in pending.drain(..) {
            report(&outcome, &webhook_name);
        }
    }
}

fn to_outcome(done: Done, backoff: &Backoff) -> (Outcome, String) {
    let retry_at = if done.result.succeeded() {
        None
    } else {
        let unit = rand::rng().random::<f64>();
        match backoff.next(
            done.claimed.attempt.max(1) as u32,
            done.result.retry_after,
            unit,
        ) {
            Next::RetryIn(wait) => Some(SystemTime::now() + wait),
            Next::GiveUp => None,
        }
    };
    (
        Outcome {
            delivery_id: done.claimed.outgoing.id,
            webhook_id: done.claimed.webhook_id,
            attempt: done.claimed.attempt,
            result: done.result,
            retry_at,
        },
        done.claimed.webhook_name,
    )
}

/// Logs and counts one recorded outcome: ids and status, never bodies or secrets.
fn report(outcome: &Outcome, webhook: &str) {
    let seconds = outcome.result.duration.as_secs_f64();
    histogram!(m::ATTEMPT_SECONDS, "webhook" => webhook.to_string()).record(seconds);
    let status = outcome
        .result
        .status
        .map(|s| s.to_string())
        .unwrap_or_default();
    let error = outcome.result.error.as_deref().unwrap_or("");
    if outcome.result.succeeded() {
        counter!(m::DELIVERIES, "webhook" => webhook.to_string(), "outcome" => "delivered")
            .increment(1);
        debug!(
            delivery = outcome.delivery_id,
            webhook,
            attempt = outcome.attempt,
            status,
            "delivered"
        );
    } else if let Some(at) = outcome.retry_at {
        counter!(m::DELIVERIES, "webhook" => webhook.to_string(), "outcome" => "retry")
            .increment(1);
        counter!(m::RETRIES_SCHEDULED, "webhook" => webhook.to_string()).increment(1);
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs();
        warn!(
            delivery = outcome.delivery_id,
            webhook,
            attempt = outcome.attempt,
            status,
            error,
            retry_in_s = wait,
            "delivery failed; will retry"
        );
    } else {
        counter!(m::DELIVERIES, "webhook" => webhook.to_string(), "outcome" => "dead").increment(1);
        counter!(m::DEAD, "webhook" => webhook.to_string()).increment(1);
        warn!(
            delivery = outcome.delivery_id,
            webhook,
            attempt = outcome.attempt,
            status,
            error,
            "delivery failed for the last time; it is dead (netbox_outbox.replay() sends it again)"
        );
    }
}

/// Waits between reconnection attempts: 100 ms doubling to 5 s.
pub fn reconnect_delay(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(5))
}

/// Sleeps unless cancelled first.
pub async fn pause(cancel: &CancellationToken, duration: Duration) {
    tokio::select! {
        () = cancel.cancelled() => {}
        () = tokio::time::sleep(duration) => {}
    }
}
