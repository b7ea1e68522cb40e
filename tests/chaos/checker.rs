//! The invariants, proven from the receivers' logs against the ledger of committed changes:
//! nothing lost, no phantom, per-object order, and every duplicate explained by a fault.
//!
//! Its self-test feeds it logs with an injected loss, phantom, reordering and duplicate, so the
//! suite cannot pass because the checker looks at nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::receiver::{Arrival, Outcome};
use crate::workload::Committed;

/// How long after a receiver took a request the sender may still be recording it (the
/// sidecars' lease is 5 s: the 2 s timeout plus a 3 s margin; a little more for busy cores): a
/// duplicate of that request is explained by a crash or an outage within this window.
pub const IN_FLIGHT: Duration = Duration::from_secs(8);

/// Everything the checker looks at.
pub struct Evidence {
    /// The ledger: every committed change.
    pub committed: Vec<Committed>,
    /// Each webhook (by receiver name) and the events its rule sends.
    pub webhooks: Vec<(String, Vec<String>)>,
    /// Every request the receivers read, in the order each read them.
    pub arrivals: Vec<Arrival>,
    /// When sidecars were SIGKILLed.
    pub kills: Vec<Duration>,
    /// When PostgreSQL was down (from, to).
    pub outages: Vec<(Duration, Duration)>,
    /// The delivery log: how many 2xx attempts each delivery (webhook, id) has recorded.
    pub recorded: HashMap<(String, String), usize>,
}

/// What the checker found; each list names the offending changes.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Committed changes times the webhooks that must send them.
    pub expected: usize,
    /// Requests read, and those accepted.
    pub requests: usize,
    pub accepted: usize,
    /// Distinct deliveries accepted at least once.
    pub delivered: usize,
    pub losses: Vec<String>,
    /// The lost changes: (webhook, marker, object), for the database to explain.
    pub lost: Vec<(String, String, i64)>,
    pub phantoms: Vec<String>,
    pub reorderings: Vec<String>,
    /// Accepted again after being accepted once.
    pub duplicates: usize,
    /// ... of which explained by a SIGKILL or a database outage while in flight.
    pub explained: usize,
    pub unexplained: Vec<String>,
    /// 2xx attempts in the delivery log that the receiver never gave (answered by someone else).
    pub unconfirmed: Vec<String>,
    pub outcomes: BTreeMap<(String, Outcome), usize>,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.losses.is_empty()
            && self.phantoms.is_empty()
            && self.reorderings.is_empty()
            && self.unexplained.is_empty()
            && self.unconfirmed.is_empty()
    }
}

pub fn check(evidence: &Evidence) -> Verdict {
    let mut verdict = Verdict::default();
    let committed: HashMap<(&str, i64), &Committed> = evidence
        .committed
        .iter()
        .map(|c| ((c.marker.as_str(), c.object_id), c))
        .collect();
    let sends = |webhook: &str, event: &str| {
        evidence
            .webhooks
            .iter()
            .any(|(w, events)| w == webhook && events.iter().any(|e| e == event))
    };

    // Phantoms, and what reached each webhook.
    let mut reached: HashSet<(&str, &str, i64)> = HashSet::new();
    let mut phantoms: HashSet<(&str, &str, i64)> = HashSet::new();
    for a in &evidence.arrivals {
        verdict.requests += 1;
        *verdict
            .outcomes
            .entry((a.webhook.clone(), a.outcome))
            .or_default() += 1;
        let known = committed
            .get(&(a.marker.as_str(), a.object_id))
            .is_some_and(|c| c.event == a.event && sends(&a.webhook, &a.event));
        if !known && phantoms.insert((&a.webhook, &a.marker, a.object_id)) {
            verdict.phantoms.push(format!(
                "{}: {} of object {} by transaction {} matches no committed change",
                a.webhook, a.event, a.object_id, a.marker
            ));
        }
        if a.outcome.reached() {
            verdict.accepted += 1;
            reached.insert((&a.webhook, &a.marker, a.object_id));
        }
    }

    // Losses: a committed change some webhook must send that it never accepted.
    for c in &evidence.committed {
        for (webhook, _) in &evidence.webhooks {
            if !sends(webhook, &c.event) {
                continue;
            }
            verdict.expected += 1;
            if !reached.contains(&(webhook.as_str(), c.marker.as_str(), c.object_id)) {
                verdict
                    .lost
                    .push((webhook.clone(), c.marker.clone(), c.object_id));
                verdict.losses.push(format!(
                    "{webhook}: {} of object {} (seq {}) by transaction {} never arrived",
                    c.event, c.object_id, c.seq, c.marker
                ));
            }
        }
    }

    // Order: per webhook and object, changes first accepted in commit order.
    let mut first: HashMap<(&str, i64), (i64, HashSet<&str>)> = HashMap::new();
    for a in evidence.arrivals.iter().filter(|a| a.outcome.reached()) {
        let Some(c) = committed.get(&(a.marker.as_str(), a.object_id)) else {
            continue;
        };
        let (latest, seen) = first.entry((&a.webhook, a.object_id)).or_default();
        if !seen.insert(&a.marker) {
            continue;
        }
        if c.seq < *latest {
            verdict.reorderings.push(format!(
                "{}: object {}'s change seq {} arrived after seq {}",
                a.webhook, a.object_id, c.seq, latest
            ));
        }
        *latest = (*latest).max(c.seq);
    }

    // Duplicates: a delivery accepted again. Explained only if its sender cannot have known:
    // the earlier acceptance is missing from the delivery log (its sidecar was killed before
    // recording it: one unrecorded acceptance per duplicate) and a sidecar was killed just
    // then, or the database was down just then (the sender could not record it before its
    // lease ran out). One change accepted under two deliveries is never explained: the sidecar
    // made two deliveries of one event.
    let mut by_delivery: HashMap<(&str, &str), Vec<&Arrival>> = HashMap::new();
    let mut deliveries_of: HashMap<(&str, &str, i64), HashSet<&str>> = HashMap::new();
    for a in evidence.arrivals.iter().filter(|a| a.outcome.reached()) {
        by_delivery
            .entry((&a.webhook, &a.delivery))
            .or_default()
            .push(a);
        deliveries_of
            .entry((&a.webhook, &a.marker, a.object_id))
            .or_default()
            .insert(&a.delivery);
    }
    verdict.delivered = by_delivery.len();
    for ((webhook, delivery), accepted) in &by_delivery {
        let recorded = evidence
            .recorded
            .get(&(webhook.to_string(), delivery.to_string()))
            .copied()
            .unwrap_or(0);
        let mut unrecorded = accepted.len().saturating_sub(recorded);
        for pair in accepted.windows(2) {
            verdict.duplicates += 1;
            let at = pair[0].at;
            let explained = if killed_near(evidence, at) && unrecorded > 0 {
                unrecorded -= 1;
                true
            } else {
                database_down_near(evidence, at)
            };
            if explained {
                verdict.explained += 1;
            } else {
                verdict.unexplained.push(format!(
                    "{webhook}: delivery {delivery} accepted at {:.1}s and again at {:.1}s ({} \
                     acceptances, {recorded} recorded), with no crash or outage in flight",
                    at.as_secs_f64(),
                    pair[1].at.as_secs_f64(),
                    accepted.len()
                ));
            }
        }
    }
    for ((webhook, marker, object), deliveries) in &deliveries_of {
        if deliveries.len() > 1 {
            verdict.duplicates += deliveries.len() - 1;
            verdict.unexplained.push(format!(
                "{webhook}: object {object}'s change by transaction {marker} was sent as {} \
                 different deliveries",
                deliveries.len()
            ));
        }
    }
    // The delivery log against the receivers: a 2xx recorded more often than the receiver gave
    // one came from elsewhere.
    for ((webhook, delivery), recorded) in &evidence.recorded {
        let accepted = by_delivery
            .get(&(webhook.as_str(), delivery.as_str()))
            .map_or(0, Vec::len);
        if *recorded > accepted {
            verdict.unconfirmed.push(format!(
                "{webhook}: delivery {delivery} has {recorded} 2xx attempts in the delivery log, \
                 but the receiver accepted it {accepted} times"
            ));
        }
    }
    verdict.losses.sort();
    verdict.unconfirmed.sort();
    verdict.phantoms.sort();
    verdict.unexplained.sort();
    verdict
}

/// Whether a sidecar was killed while a request accepted at `at` may still have been unrecorded.
fn killed_near(evidence: &Evidence, at: Duration) -> bool {
    let from = at.saturating_sub(Duration::from_secs(1));
    evidence
        .kills
        .iter()
        .any(|k| (from..=at + IN_FLIGHT).contains(k))
}

/// Whether the database was down while a request accepted at `at` may still have been
/// unrecorded.
fn database_down_near(evidence: &Evidence, at: Duration) -> bool {
    let from = at.saturating_sub(Duration::from_secs(1));
    evidence
        .outages
        .iter()
        .any(|(down, up)| *down <= at + IN_FLIGHT && *up + IN_FLIGHT >= from)
}

/// Proves the checker catches each kind of violation; panics if it misses one.
pub fn self_test() {
    let secs = Duration::from_secs;
    let change = |marker: &str, object, seq, event: &str| Committed {
        marker: marker.into(),
        object_id: object,
        seq,
        event: event.into(),
    };
    let arrival = |at: u64, delivery: &str, marker: &str, object, event: &str, outcome| Arrival {
        at: secs(at),
        webhook: "hook".into(),
        delivery: delivery.into(),
        marker: marker.into(),
        object_id: object,
        event: event.into(),
        outcome,
    };
    let clean = || Evidence {
        committed: vec![
            change("m1", 1, 1, "created"),
            change("m2", 1, 2, "updated"),
            change("m3", 1, 3, "deleted"),
            change("m2", 2, 2, "updated"),
        ],
        webhooks: vec![(
            "hook".into(),
            vec!["created".into(), "updated".into(), "deleted".into()],
        )],
        arrivals: vec![
            arrival(10, "d1", "m1", 1, "created", Outcome::Accepted),
            arrival(11, "d2", "m2", 1, "updated", Outcome::ServerError),
            arrival(12, "d4", "m2", 2, "updated", Outcome::Slow),
            arrival(13, "d2", "m2", 1, "updated", Outcome::Accepted),
            // accepted, the sidecar killed before recording it, sent again
            arrival(30, "d3", "m3", 1, "deleted", Outcome::Accepted),
            arrival(40, "d3", "m3", 1, "deleted", Outcome::Accepted),
        ],
        kills: vec![secs(31)],
        outages: vec![],
        // d3's first acceptance died with its sidecar
        recorded: [("d1", 1), ("d2", 1), ("d3", 1), ("d4", 1)]
            .map(|(d, n)| (("hook".to_string(), d.to_string()), n))
            .into(),
    };

    let verdict = check(&clean());
    assert!(
        verdict.clean(),
        "self-test: a clean log is clean: {verdict:?}"
    );
    assert_eq!(
        (verdict.expected, verdict.duplicates, verdict.explained),
        (4, 1, 1)
    );

    let mut lost = clean();
    lost.arrivals.remove(3);
    let verdict = check(&lost);
    assert_eq!(
        verdict.losses.len(),
        1,
        "self-test: a loss is caught: {verdict:?}"
    );

    let mut phantom = clean();
    phantom.arrivals.push(arrival(
        50,
        "d9",
        "rolled-back",
        1,
        "updated",
        Outcome::Accepted,
    ));
    let verdict = check(&phantom);
    assert_eq!(
        verdict.phantoms.len(),
        1,
        "self-test: a phantom is caught: {verdict:?}"
    );

    let mut wrong_event = clean();
    wrong_event.arrivals[0].event = "updated".into();
    let verdict = check(&wrong_event);
    assert_eq!(
        verdict.phantoms.len(),
        1,
        "self-test: a wrong event is caught: {verdict:?}"
    );

    let mut reordered = clean();
    reordered.arrivals.swap(0, 3);
    let verdict = check(&reordered);
    assert_eq!(
        verdict.reorderings.len(),
        1,
        "self-test: a reordering is caught: {verdict:?}"
    );

    let mut duplicated = clean();
    duplicated.kills.clear();
    let verdict = check(&duplicated);
    assert_eq!(
        (verdict.duplicates, verdict.unexplained.len()),
        (1, 1),
        "self-test: a duplicate without a crash is caught: {verdict:?}"
    );

    let mut recorded_twice = clean();
    recorded_twice
        .recorded
        .insert(("hook".to_string(), "d3".to_string()), 2);
    let verdict = check(&recorded_twice);
    assert_eq!(
        verdict.unexplained.len(),
        1,
        "self-test: a duplicate its sender recorded both times is caught, crash or not: {verdict:?}"
    );

    let mut elsewhere = clean();
    elsewhere
        .recorded
        .insert(("hook".to_string(), "d8".to_string()), 1);
    let verdict = check(&elsewhere);
    assert_eq!(
        verdict.unconfirmed.len(),
        1,
        "self-test: a 2xx the receiver never gave is caught: {verdict:?}"
    );

    let mut outage = clean();
    outage.kills.clear();
    outage.outages.push((secs(32), secs(34)));
    assert!(
        check(&outage).clean(),
        "self-test: an outage explains a duplicate"
    );

    let mut twice = clean();
    twice
        .arrivals
        .push(arrival(60, "d7", "m1", 1, "created", Outcome::Accepted));
    let verdict = check(&twice);
    assert_eq!(
        verdict.unexplained.len(),
        1,
        "self-test: one change sent as two deliveries is caught: {verdict:?}"
    );
}
