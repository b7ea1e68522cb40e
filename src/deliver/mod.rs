//! Delivering webhooks: claim due deliveries, send them concurrently outside any transaction,
//! record each outcome, retry on the schedule, pause webhooks that keep failing.
//!
//! One clock: every time compared with the database's now() is computed by the database, from
//! delays this side measures with its monotonic clock (see [`queue::record`]); a sidecar host
//! whose wall clock is off changes nothing.
//!
//! Order: a delivery waits for every earlier delivery of the same webhook and object (the claim
//! only takes queue heads), so one object's webhooks arrive in commit order, while other objects
//! and other webhooks go on. Concurrency is bounded in all and per webhook, so a slow webhook
//! cannot take every connection.

pub mod backoff;
pub mod http;
pub mod outcome;
pub mod queue;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use rand::Rng;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use self::backoff::Backoff;
use self::http::Sender;
use self::outcome::{Class, Policies};
use self::queue::{Claimed, Outcome, Quota, Run};
use crate::config::DeliveryConfig;
use crate::db::Database;
use crate::metrics as m;
use crate::reconnect::Reconnecting;

/// The delivery half of a sidecar.
pub struct Dispatcher {
    database: Database,
    config: DeliveryConfig,
    sidecar: Uuid,
    sender: Arc<Sender>,
    policies: Policies,
    wake: Arc<Notify>,
    streaks: Streaks,
}

/// A finished send, from a send task to the dispatcher.
struct Done {
    claimed: Claimed,
    result: http::AttemptResult,
}

/// A request in flight, as much as it takes to record it abandoned.
struct Sending {
    started: Instant,
    /// Without the request's body and headers (not needed to record an outcome).
    claimed: Claimed,
}

/// The deliveries this sidecar holds leases on, shared by the dispatcher and the send tasks:
/// those not sent yet (released at shutdown, so they go out again at once) and those being
/// sent (recorded as abandoned if the grace period ends while they are in flight).
#[derive(Default)]
struct Ledger {
    leased: HashSet<i64>,
    sending: HashMap<i64, Sending>,
}

impl Ledger {
    /// `claimed` is being sent now.
    fn start(&mut self, claimed: &Claimed) {
        self.leased.remove(&claimed.delivery_id);
        self.sending.insert(
            claimed.delivery_id,
            Sending {
                started: Instant::now(),
                claimed: claimed.without_request(),
            },
        );
    }
}

type SharedLedger = Arc<std::sync::Mutex<Ledger>>;

/// The send tasks, one per run: each returns its webhook and the deliveries it did not send.
type Sends = JoinSet<(i64, Vec<i64>)>;

/// What a send task needs besides its run.
#[derive(Clone)]
struct RunContext {
    sender: Arc<Sender>,
    delivery_id_header: String,
    outcomes: mpsc::UnboundedSender<Done>,
    unrecorded: Streaks,
    ledger: SharedLedger,
    /// Shutdown: no run starts another request.
    cancel: CancellationToken,
    /// The webhooks paused when the pauses were last read: their runs start no other request.
    /// (A failure ends a run by itself, so a streak needs no check here.)
    held: Arc<std::sync::Mutex<HashSet<i64>>>,
    /// A delivery claimed longer ago than this is not sent: its lease may no longer cover a
    /// whole request.
    too_old: Duration,
}

impl Dispatcher {
    /// `wake` is notified when new deliveries may be due (by the assembler, or a notification).
    pub fn new(
        database: Database,
        config: DeliveryConfig,
        sidecar: Uuid,
        wake: Arc<Notify>,
    ) -> Self {
        let policies = Policies {
            schedule: Backoff {
                schedule: config.retry_schedule.clone(),
                jitter: config.retry_jitter,
                max_retry_after: config.max_retry_after,
            },
            refused: Backoff {
                schedule: config.client_error_schedule.clone(),
                jitter: config.retry_jitter,
                max_retry_after: config.max_retry_after,
            },
        };
        Dispatcher {
            sender: Arc::new(Sender::new(config.clone())),
            database,
            config,
            sidecar,
            policies,
            wake,
            streaks: Streaks::default(),
        }
    }

    /// Runs until `cancel`; then stops claiming, lets requests in flight finish within `grace`,
    /// records their outcomes, and releases anything left.
    pub async fn run(self, cancel: CancellationToken, grace: Duration) {
        let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel::<Done>();
        // Notified by the recorder after each batch: a finished delivery makes the next one of
        // its object its queue's head, claimable only once the outcome is committed (without
        // this, an object's next delivery waited for the poll interval).
        let recorded = Arc::new(Notify::new());
        // Set by the recorder when a webhook's pause began, changed or ended: the dispatcher
        // reads the pauses again at once, so no request goes out to a webhook that has just
        // been paused, and a probe's outcome is known before the next one.
        let pauses_changed = Arc::new(AtomicBool::new(false));
        let recorder = tokio::spawn(record_loop(
            self.database.clone(),
            outcomes_rx,
            self.policies.clone(),
            self.config.clone(),
            self.sidecar,
            (
                recorded.clone(),
                pauses_changed.clone(),
                self.streaks.clone(),
            ),
        ));

        // Each send task sends one run and returns its webhook and the deliveries it did not
        // send; a run takes one of its webhook's slots (one request at a time).
        let mut sends = Sends::new();
        let mut in_flight: HashMap<i64, usize> = HashMap::new();
        let ledger = SharedLedger::default();
        // Deliveries of runs that ended early, to release.
        let mut unsent: Vec<i64> = Vec::new();
        // Runs claimed and not yet started, per webhook, in claim order.
        let mut ready: HashMap<i64, VecDeque<(Instant, Run)>> = HashMap::new();
        let context = RunContext {
            sender: self.sender.clone(),
            delivery_id_header: self.config.delivery_id_header.clone(),
            outcomes: outcomes_tx.clone(),
            unrecorded: self.streaks.clone(),
            ledger: ledger.clone(),
            cancel: cancel.clone(),
            held: Arc::default(),
            too_old: self.config.lease_margin / 2,
        };
        let mut connection = Reconnecting::new("dispatcher", self.database.clone());
        let mut webhooks: Vec<i64> = Vec::new();
        // Each paused webhook's end of pause, on the monotonic clock (now: over, probe), and
        // its failures in a row when read.
        let mut pauses: HashMap<i64, (Instant, i32)> = HashMap::new();
        // The webhooks whose pause is over and that were probed, with their failures in a row
        // then and when: one probe per pause (the next pause, or a success, changes the count).
        let mut probed: HashMap<i64, (i32, Instant)> = HashMap::new();
        // Per rate-limited webhook, when its next request may start.
        let mut next_slot: HashMap<i64, Instant> = HashMap::new();
        // The rate limits (configured by webhook name) by webhook id, read with the pauses.
        let mut rate_limits: HashMap<i64, f64> = HashMap::new();
        // Failures in a row per webhook as last read, and those seen by the send tasks since
        // (not recorded yet, perhaps): a webhook whose streak may have reached the pause
        // threshold sends nothing more until the recorder has recorded it and the pauses are
        // read again, so it pauses after exactly that many failures, not after those that
        // were sent while the outcomes were being recorded.
        let unrecorded = self.streaks.clone();
        let threshold = self.config.pause_after_failures as i32;
        let mut refreshed = Instant::now() - self.config.poll_interval;

        while !cancel.is_cancelled() {
            // Reap finished sends.
            while let Some(done) = sends.try_join_next() {
                if let Ok((webhook, not_sent)) = done {
                    release_slot(&mut in_flight, webhook);
                    unsent.extend(not_sent);
                }
            }

            let Some(db) = connection.connected(&cancel).await else {
                break;
            };

            if pauses_changed.swap(false, Ordering::AcqRel) {
                refreshed = Instant::now() - self.config.poll_interval;
            }
            if refreshed.elapsed() >= self.config.poll_interval / 2 {
                // what the recorder had recorded before the read: a streak it recorded since
                // is newer than the one read, and is kept
                let before: HashMap<i64, u64> = unrecorded
                    .lock()
                    .expect("not poisoned")
                    .iter()
                    .map(|(&webhook, s)| (webhook, s.recordings))
                    .collect();
                match refresh(db).await {
                    Ok((w, p, s)) => {
                        webhooks = w;
                        pauses = p;
                        {
                            let mut streaks = unrecorded.lock().expect("not poisoned");
                            for &webhook in s.keys() {
                                streaks.entry(webhook).or_default();
                            }
                            for (webhook, streak) in streaks.iter_mut() {
                                if streak.recordings == before.get(webhook).copied().unwrap_or(0) {
                                    streak.recorded = s.get(webhook).copied().unwrap_or(0);
                                }
                            }
                        }
                        probed.retain(|webhook, _| pauses.contains_key(webhook));
                        *context.held.lock().expect("not poisoned") =
                            pauses.keys().copied().collect();
                        refreshed = Instant::now();
                        if !self.config.rate_limit_by_webhook.is_empty() {
                            match queue::webhook_ids(db, &self.config.rate_limit_by_webhook).await {
                                Ok(limits) => rate_limits = limits,
                                Err(error) => {
                                    connection
                                        .failed(&cancel, "reading the webhooks' ids", &error)
                                        .await;
                                    continue;
                                }
                            }
                        }
                    }
                    Err(error) => {
                        connection
                            .failed(&cancel, "reading the webhooks with work", &error)
                            .await;
                        continue;
                    }
                }
            }

            // Send what was claimed ahead, as far as slots allow; let go of what waited too long.
            let now = Instant::now();
            // A probe whose outcome never arrived (not recorded) is not waited for forever.
            let probe_lost = self.config.pause_max + self.config.lease_margin;
            let cap_of = |webhook: i64, busy: usize| match pauses.get(&webhook) {
                Some(&(until, _)) if until > now => 0,
                // the pause is over: one delivery probes the receiver, once per pause
                Some(&(_, failures)) => usize::from(
                    busy == 0
                        && probed
                            .get(&webhook)
                            .is_none_or(|&(f, at)| f != failures || at.elapsed() > probe_lost),
                ),
                None => allowed_in_flight(
                    self.config.per_webhook_concurrency,
                    threshold,
                    unrecorded
                        .lock()
                        .expect("not poisoned")
                        .get(&webhook)
                        .map_or(0, |s| s.recorded + s.unrecorded),
                ),
            };
            // a webhook neither paused nor failing may have deliveries claimed ahead
            let healthy_cap = allowed_in_flight(self.config.per_webhook_concurrency, threshold, 0);
            let (mut stale, _) = self.launch(
                &mut ready,
                &mut in_flight,
                (&mut sends, &mut next_slot),
                &context,
                &cap_of,
            );
            stale.append(&mut unsent);
            if !stale.is_empty() {
                {
                    let mut ledger = ledger.lock().expect("not poisoned");
                    for id in &stale {
                        ledger.leased.remove(id);
                    }
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
                let ahead = if cap == healthy_cap && !pauses.contains_key(&webhook) {
                    cap
                } else {
                    0
                };
                let mut quota = (cap + ahead)
                    .saturating_sub(busy + queued)
                    .min(free)
                    .min(self.config.claim_batch);
                if let Some(rate) = rate_limits.get(&webhook).copied() {
                    // no more than it may send before its lease runs short
                    let sendable = rate * (self.config.lease_margin / 4).as_secs_f64();
                    quota = quota.min(
                        (sendable.ceil() as usize)
                            .saturating_sub(queued)
                            .max(usize::from(queued == 0)),
                    );
                }
                // A claim is one transaction whatever its size: wait until a good share of the
                // slots is free rather than claim one delivery at a time (measured: claiming per
                // freed slot halved throughput).
                if quota > 0
                    && (busy + queued == 0 || (queued <= cap / 2 && quota >= refill_at(cap)))
                {
                    // Runs only for a webhook that is healthy and not rate limited: a paused
                    // webhook's probe is one delivery, and a rate limit spaces every request.
                    let runs = ahead > 0 && !rate_limits.contains_key(&webhook);
                    quotas.push(Quota {
                        webhook_id: webhook,
                        heads: quota as i64,
                        run_length: if runs {
                            self.config.run_length as i64
                        } else {
                            1
                        },
                    });
                    free -= quota;
                }
            }
            let started = Instant::now();
            let claimed = match queue::claim(
                db,
                &quotas,
                self.claim_limit(),
                self.config.lease_margin,
                self.sidecar,
            )
            .await
            {
                Ok(claimed) => claimed,
                Err(error) => {
                    connection
                        .failed(&cancel, "claiming deliveries", &error)
                        .await;
                    continue;
                }
            };
            connection.succeeded();
            let got = claimed.len();
            if !quotas.is_empty() {
                histogram!(m::CLAIM_SECONDS).record(started.elapsed().as_secs_f64());
                tracing::trace!(
                    runs = got,
                    claimed = claimed.iter().map(Vec::len).sum::<usize>(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "claimed"
                );
            }
            let claimed_at = Instant::now();
            {
                let mut ledger = ledger.lock().expect("not poisoned");
                for run in claimed {
                    ledger.leased.extend(run.iter().map(|c| c.delivery_id));
                    ready
                        .entry(run[0].webhook_id)
                        .or_default()
                        .push_back((claimed_at, run));
                }
            }
            let (more_stale, rate_limited_until) = self.launch(
                &mut ready,
                &mut in_flight,
                (&mut sends, &mut next_slot),
                &context,
                &cap_of,
            );
            unsent.extend(more_stale);
            // the probes just started
            for (&webhook, &(until, failures)) in &pauses {
                if until <= now
                    && in_flight.contains_key(&webhook)
                    && probed.get(&webhook).is_none_or(|&(f, _)| f != failures)
                {
                    probed.insert(webhook, (failures, Instant::now()));
                }
            }
            gauge!(m::IN_FLIGHT).set(in_flight.values().sum::<usize>() as f64);

            // Something was claimed: look again at once (more may be due). Otherwise wait for
            // new work, a finished send (which frees a slot), or the poll interval.
            if got > 0 && free > 0 {
                tokio::task::yield_now().await;
                continue;
            }
            let poll = self.config.poll_interval;
            let poll_until =
                rate_limited_until.map_or(now + poll, |at| at.min(Instant::now() + poll));
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.wake.notified() => { refreshed = Instant::now() - poll; }
                () = recorded.notified() => {}
                Some(done) = sends.join_next(), if !sends.is_empty() => {
                    if let Ok((webhook, not_sent)) = done {
                        release_slot(&mut in_flight, webhook);
                        unsent.extend(not_sent);
                    }
                }
                () = tokio::time::sleep_until(poll_until.into()) => {}
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
                // a run that ended left what it did not send in the ledger's leases
                next = sends.join_next() => if next.is_none() { break },
                () = &mut deadline => {
                    sends.abort_all();
                    // a send that finished just now took itself off the ledger: its outcome is
                    // on the way, not abandoned
                    while sends.join_next().await.is_some() {}
                    let mut ledger = ledger.lock().expect("not poisoned");
                    let sending = &mut ledger.sending;
                    // Aborted mid-request: the receiver may have the webhook or not. That is an
                    // attempt with an unknown outcome, recorded as one (it counts, and the
                    // delivery is sent again: at least once), not a delivery "not sent".
                    warn!(
                        abandoned = sending.len(),
                        "grace period over; abandoning requests in flight (recorded as attempts \
                         with an unknown outcome; they are sent again and may arrive twice)"
                    );
                    for (delivery, s) in sending.drain() {
                        counter!(m::ABANDONED, "webhook" => s.claimed.webhook_name.clone()).increment(1);
                        let result = http::AttemptResult {
                            started: s.started,
                            duration: s.started.elapsed(),
                            status: None,
                            error: Some(format!(
                                "abandoned at shutdown after {:.1}s in flight: the outcome is \
                                 unknown (the receiver may have it); it counts as an attempt \
                                 and is retried like a failure, so it may arrive twice",
                                s.started.elapsed().as_secs_f64()
                            )),
                            response_excerpt: None,
                            retry_after: None,
                            retry_after_date: None,
                        };
                        debug!(delivery, "abandoned in flight");
                        let _ = outcomes_tx.send(Done { claimed: s.claimed, result });
                    }
                    break;
                }
            }
        }
        // every sender of outcomes gone (the send tasks' context holds one): the recorder ends
        // once it has written what it has
        drop(context);
        drop(outcomes_tx);
        // Outcomes of finished sends are recorded if the database lets us within the grace
        // period; otherwise their leases expire and they are sent again (at least once).
        let _ = tokio::time::timeout(grace.max(Duration::from_secs(1)), recorder).await;
        // Release what was leased and not sent, so it goes out again at once.
        let unsent: Vec<i64> = ledger
            .lock()
            .expect("not poisoned")
            .leased
            .drain()
            .collect();
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
    /// The most deliveries one claim takes, runs included: a claim holds its requests in memory
    /// until they are sent, so no more than a few claim batches' worth.
    fn claim_limit(&self) -> i64 {
        (RUN_BUDGET * self.config.claim_batch) as i64
    }

    /// Starts runs from `ready` while each webhook has free slots (`cap_of(webhook, busy)`)
    /// and its rate limit allows. Returns the deliveries of runs that waited in `ready` longer
    /// than half the lease margin (their lease may no longer cover a whole request, so they are
    /// released, not sent), and when the first rate-limited webhook may send again.
    fn launch(
        &self,
        ready: &mut HashMap<i64, VecDeque<(Instant, Run)>>,
        in_flight: &mut HashMap<i64, usize>,
        (sends, next_slot): (&mut Sends, &mut HashMap<i64, Instant>),
        context: &RunContext,
        cap_of: &impl Fn(i64, usize) -> usize,
    ) -> (Vec<i64>, Option<Instant>) {
        let mut stale = Vec::new();
        let mut wake_at: Option<Instant> = None;
        ready.retain(|&webhook, queue| {
            while let Some((claimed_at, run)) = queue.front() {
                if claimed_at.elapsed() > context.too_old {
                    stale.extend(run.iter().map(|c| c.delivery_id));
                    queue.pop_front();
                    continue;
                }
                let busy = in_flight.get(&webhook).copied().unwrap_or(0);
                if busy >= cap_of(webhook, busy) {
                    break;
                }
                let rate = self
                    .config
                    .rate_limit_by_webhook
                    .get(&run[0].webhook_name)
                    .copied();
                if let Some(rate) = rate {
                    // Evenly spaced starts, no burst: a backlog after an outage goes out at
                    // the configured rate, not at once.
                    let now = Instant::now();
                    let slot = next_slot.get(&webhook).copied().unwrap_or(now).max(now);
                    if slot > now {
                        wake_at = Some(wake_at.map_or(slot, |w| w.min(slot)));
                        break;
                    }
                    next_slot.insert(webhook, slot + Duration::from_secs_f64(1.0 / rate));
                }
                let (claimed_at, run) = queue.pop_front().expect("front exists");
                *in_flight.entry(webhook).or_default() += 1;
                sends.spawn(send_run(webhook, run, claimed_at, context.clone()));
            }
            !queue.is_empty()
        });
        (stale, wake_at)
    }
}

/// Deliveries claimed per claim in all, runs included, in claim batches.
const RUN_BUDGET: usize = 4;

/// Sends a run of one object's queue one after another, each once the one before it was
/// delivered, and hands each outcome to the recorder. Returns the webhook and the deliveries it
/// did not send, to be released: a failure ends the run (the object's queue waits for that
/// delivery's retry, or moves on when it is dead), and so do shutdown, a pause, and a lease that
/// may no longer cover a whole request.
async fn send_run(
    webhook: i64,
    run: Run,
    claimed_at: Instant,
    context: RunContext,
) -> (i64, Vec<i64>) {
    let mut members = run.into_iter();
    let mut not_sent = Vec::new();
    let mut first = true;
    while let Some(claimed) = members.next() {
        if !first
            && (context.cancel.is_cancelled()
                || claimed_at.elapsed() > context.too_old
                || context
                    .held
                    .lock()
                    .expect("not poisoned")
                    .contains(&webhook))
        {
            not_sent.push(claimed.delivery_id);
            not_sent.extend(members.by_ref().map(|c| c.delivery_id));
            break;
        }
        first = false;
        context.ledger.lock().expect("not poisoned").start(&claimed);
        let result = context
            .sender
            .send(
                &claimed.request,
                claimed.message_id,
                &context.delivery_id_header,
                claimed.standard_webhooks.as_ref(),
            )
            .await;
        let delivered = outcome::classify(result.status) == Class::Delivered;
        {
            let mut streaks = context.unrecorded.lock().expect("not poisoned");
            let streak = streaks.entry(webhook).or_default();
            if delivered {
                streak.recorded = 0;
                streak.unrecorded = 0;
            } else {
                streak.unrecorded += 1;
            }
        }
        // off the ledger and to the recorder with no await between: never both or neither
        context
            .ledger
            .lock()
            .expect("not poisoned")
            .sending
            .remove(&claimed.delivery_id);
        let _ = context.outcomes.send(Done { claimed, result });
        if !delivered {
            not_sent.extend(members.by_ref().map(|c| c.delivery_id));
            break;
        }
    }
    (webhook, not_sent)
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

/// Each paused webhook's end of pause on the monotonic clock (the database says how long it
/// still runs; this host's wall clock is not asked), with its failures in a row.
type Pauses = HashMap<i64, (Instant, i32)>;

/// A webhook's failures in a row: as last recorded (or read), and sent since but not recorded.
/// A webhook has no more requests in flight than it may still fail before its pause (see
/// [`allowed_in_flight`]), so it pauses after exactly that many failures, not after those
/// that were in flight or sent while the outcomes were being recorded.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Streak {
    recorded: i32,
    unrecorded: i32,
    /// How many times the recorder set `recorded`: a streak read from the database by a query
    /// that began before the last recording is older and must not overwrite it.
    recordings: u64,
}

/// How many requests a webhook that is not paused may have in flight: no more than it may
/// still fail before its pause (`threshold - failures`), since every one in flight may fail,
/// and never more than `per_webhook_concurrency`. A threshold of 0 (never pause) leaves only
/// the concurrency limit.
fn allowed_in_flight(per_webhook_concurrency: usize, threshold: i32, failures: i32) -> usize {
    if threshold <= 0 {
        return per_webhook_concurrency;
    }
    usize::try_from(threshold - failures)
        .unwrap_or(0)
        .min(per_webhook_concurrency)
}

type Streaks = Arc<std::sync::Mutex<HashMap<i64, Streak>>>;

/// The webhooks with work, the pauses, and every webhook's failures in a row.
async fn refresh(
    db: &tokio_postgres::Client,
) -> Result<(Vec<i64>, Pauses, HashMap<i64, i32>), tokio_postgres::Error> {
    let webhooks = queue::webhooks_with_work(db).await?;
    let read_at = Instant::now();
    let all = queue::pauses(db).await?;
    let streaks = all
        .iter()
        .map(|p| (p.webhook_id, p.consecutive_failures))
        .collect();
    let pauses = all
        .into_iter()
        .filter_map(|p| {
            Some((
                p.webhook_id,
                (read_at + p.remaining?, p.consecutive_failures),
            ))
        })
        .collect();
    Ok((webhooks, pauses, streaks))
}

/// Writes outcomes in batches until the channel closes and everything is written.
async fn record_loop(
    database: Database,
    mut outcomes: mpsc::UnboundedReceiver<Done>,
    policies: Policies,
    config: DeliveryConfig,
    sidecar: Uuid,
    (recorded, pauses_changed, streaks): (Arc<Notify>, Arc<AtomicBool>, Streaks),
) {
    // The webhooks this recorder last saw paused: a success of one of them ends its pause.
    let mut paused: HashSet<i64> = HashSet::new();
    // Outcomes are written after shutdown begins too (the dispatcher closes the channel when it
    // is done), so this connection's waits are never cut short.
    let never = CancellationToken::new();
    let mut connection = Reconnecting::new("recorder", database);
    let mut pending: Vec<(Outcome, String)> = Vec::new();
    let mut closed = false;
    while !(closed && pending.is_empty()) {
        if !closed {
            // Take what is there, waiting for the first one; batches form under load.
            if pending.is_empty() {
                match outcomes.recv().await {
                    Some(done) => pending.push(to_outcome(done, &policies, &config)),
                    None => {
                        closed = true;
                        continue;
                    }
                }
            }
            while pending.len() < 1000 {
                match outcomes.try_recv() {
                    Ok(done) => pending.push(to_outcome(done, &policies, &config)),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
        }
        let Some(db) = connection.connected(&never).await else {
            unreachable!("never cancelled");
        };
        let batch: Vec<Outcome> = pending.iter().map(|(o, _)| o.clone()).collect();
        if let Err(error) = record_each(db, &batch, config.max_retry_after, sidecar).await {
            connection
                .failed(&never, "recording outcomes", &error)
                .await;
            continue;
        }
        // Committed: the next deliveries of these objects are their queues' heads now.
        recorded.notify_one();
        // Webhook health, per webhook in the batch, in the order the outcomes came.
        let mut health: HashMap<i64, queue::Health> = HashMap::new();
        for (outcome, _) in &pending {
            let entry = health.entry(outcome.webhook_id).or_default();
            match outcome::classify(outcome.result.status) {
                Class::Delivered => {
                    entry.successes += 1;
                    entry.failures_since_success = 0;
                }
                class => {
                    entry.failures += 1;
                    entry.failures_since_success += 1;
                    entry.gone |= class == Class::Gone;
                }
            }
        }
        let policy = queue::PausePolicy {
            threshold: config.pause_after_failures as i32,
            pause: config.pause_initial,
            pause_max: config.pause_max,
        };
        let mut changed = false;
        for (webhook, h) in health {
            match queue::update_health(db, webhook, h, policy).await {
                Ok((now_paused, streak)) => {
                    {
                        let mut streaks = streaks.lock().expect("not poisoned");
                        let s = streaks.entry(webhook).or_default();
                        s.recorded = streak;
                        s.unrecorded = (s.unrecorded - h.failures).max(0);
                        s.recordings += 1;
                    }
                    // a pause began, was extended or ended, or a streak grew (the dispatcher
                    // holds a webhook whose streak may have reached the threshold until it
                    // reads the recorded streak)
                    if h.failures > 0 || paused.contains(&webhook) != now_paused {
                        changed = true;
                    }
                    if now_paused && !paused.contains(&webhook) {
                        warn!(
                            webhook,
                            "webhook paused (netbox-outbox status says why and until when)"
                        );
                    } else if !now_paused && paused.contains(&webhook) {
                        info!(webhook, "webhook resumed");
                    }
                    if now_paused {
                        paused.insert(webhook);
                    } else {
                        paused.remove(&webhook);
                    }
                }
                Err(error) => {
                    warn!(error = %crate::error_chain(&error), webhook, "could not update webhook health");
                }
            }
        }
        if changed {
            pauses_changed.store(true, Ordering::Release);
            recorded.notify_one();
        }
        for (outcome, webhook_name) in pending.drain(..) {
            report(&outcome, &webhook_name);
        }
        connection.succeeded();
    }
}

/// Records a batch of outcomes so that none can stop the others: if the batch is refused (not
/// for a lost connection, which is returned to reconnect and try again), each outcome is
/// recorded alone, and one refused alone is recorded without the receiver's text; one refused
/// even so is logged and left to its lease (sent again). The SQL function does the same for
/// errors inside the database; this covers what it never sees (a parameter the server rejects).
async fn record_each(
    db: &tokio_postgres::Client,
    batch: &[Outcome],
    max_retry_after: Duration,
    sidecar: Uuid,
) -> Result<(), tokio_postgres::Error> {
    let stripped = |n: i32| {
        if n > 0 {
            counter!(m::OUTCOMES_UNRECORDABLE, "how" => "stripped").increment(n as u64);
            warn!(
                outcomes = n,
                "outcomes stored without the receiver's text, which the database refused"
            );
        }
    };
    let error = match queue::record(db, batch, max_retry_after, sidecar).await {
        Ok(n) => {
            stripped(n);
            return Ok(());
        }
        Err(error) if db.is_closed() => return Err(error),
        Err(error) => error,
    };
    warn!(error = %crate::error_chain(&error), outcomes = batch.len(), "recording a batch of outcomes failed; recording each alone");
    for outcome in batch {
        let problem = match queue::record(
            db,
            std::slice::from_ref(outcome),
            max_retry_after,
            sidecar,
        )
        .await
        {
            Ok(n) => {
                stripped(n);
                continue;
            }
            Err(error) if db.is_closed() => return Err(error),
            Err(error) => error,
        };
        let mut bare = outcome.clone();
        bare.result.response_excerpt = None;
        bare.result.retry_after_date = None;
        bare.result.error = Some(format!(
            "netbox-outbox could not store this attempt's error and response as received \
             ({}); the outcome is kept, the text dropped",
            http::storable(&crate::error_chain(&problem), 500)
        ));
        match queue::record(db, std::slice::from_ref(&bare), max_retry_after, sidecar).await {
            Ok(_) => stripped(1),
            Err(error) => {
                if db.is_closed() {
                    return Err(error);
                }
                counter!(m::OUTCOMES_UNRECORDABLE, "how" => "lost").increment(1);
                warn!(
                    delivery = outcome.delivery_id,
                    error = %crate::error_chain(&error),
                    "the outcome of a delivery could not be recorded; its lease will expire and it is sent again"
                );
            }
        }
    }
    Ok(())
}

fn to_outcome(done: Done, policies: &Policies, config: &DeliveryConfig) -> (Outcome, String) {
    let retry_in = policies.retry_in(
        &done.result,
        done.claimed.attempt.max(1) as u32,
        config.client_errors_of(&done.claimed.webhook_name),
        rand::rng().random::<f64>(),
    );
    (
        Outcome {
            delivery_id: done.claimed.delivery_id,
            webhook_id: done.claimed.webhook_id,
            attempt: done.claimed.attempt,
            result: done.result,
            retry_in,
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
    } else if let Some(wait) = outcome.retry_in {
        counter!(m::DELIVERIES, "webhook" => webhook.to_string(), "outcome" => "retry")
            .increment(1);
        counter!(m::RETRIES_SCHEDULED, "webhook" => webhook.to_string()).increment(1);
        let wait = wait.as_secs();
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

#[cfg(test)]
mod tests {
    use super::allowed_in_flight;

    #[test]
    fn in_flight_never_exceeds_the_failures_left_before_a_pause() {
        // threshold 3, concurrency 4: 3 healthy, then one fewer per failure, none at 3
        assert_eq!(allowed_in_flight(4, 3, 0), 3);
        assert_eq!(allowed_in_flight(4, 3, 2), 1);
        assert_eq!(allowed_in_flight(4, 3, 3), 0);
        assert_eq!(allowed_in_flight(4, 3, 7), 0);
        // the concurrency limit still applies below the threshold
        assert_eq!(allowed_in_flight(4, 10, 1), 4);
        // never pausing: only the concurrency limit
        assert_eq!(allowed_in_flight(4, 0, 9), 4);
    }
}
