//! The run's figures: printed as a table, then as one summary line for CI logs.

use std::fmt::Write;
use std::time::Duration;

use crate::checker::Verdict;
use crate::faults::Restart;
use crate::receiver::Outcome;
use crate::workload::WriterReport;

/// What the run did and found, beyond the checker's verdict.
pub struct Run {
    pub profile: &'static str,
    pub duration: Duration,
    pub writers: Vec<WriterReport>,
    pub changes: usize,
    pub kills: usize,
    pub fleet_sizes: Vec<usize>,
    pub unexpected_exits: Vec<String>,
    pub restarts: Vec<Restart>,
    /// Deliveries to the receiver that was down for good: dead, replayed, then delivered.
    pub dead: i64,
    pub replayed: i64,
    /// Problems the database shows (each a sentence); none expected.
    pub database: Vec<String>,
    /// Faults the profile promised that did not happen (each a sentence); none expected.
    pub coverage: Vec<String>,
}

impl Run {
    pub fn passed(&self, verdict: &Verdict) -> bool {
        verdict.clean()
            && self.unexpected_exits.is_empty()
            && self.database.is_empty()
            && self.coverage.is_empty()
    }
}

pub fn print(run: &Run, verdict: &Verdict) {
    let mut out = String::new();
    let sum = |f: fn(&WriterReport) -> usize| run.writers.iter().map(f).sum::<usize>();
    let _ = writeln!(
        out,
        "\n== chaos ({}) in {:.0}s ==",
        run.profile,
        run.duration.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "workload: {} transactions committed ({} in doubt at a restart, resolved by the ledger), \
         {} rolled back, {} failed; {} changes to objects",
        sum(|w| w.committed),
        sum(|w| w.in_doubt),
        sum(|w| w.rolled_back),
        sum(|w| w.failed),
        run.changes
    );
    let mut operations = std::collections::BTreeMap::new();
    for w in &run.writers {
        for (name, n) in &w.operations {
            *operations.entry(*name).or_insert(0) += n;
        }
    }
    let ops: Vec<String> = operations.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(out, "  by kind: {}", ops.join(", "));
    let _ = writeln!(
        out,
        "sidecars: {} SIGKILLs, fleet sizes {:?}, {} exits not caused by the suite",
        run.kills,
        run.fleet_sizes,
        run.unexpected_exits.len()
    );
    for r in &run.restarts {
        let _ = writeln!(
            out,
            "postgres: down at {:.1}s, up at {:.1}s, a new change reached the receiver {}",
            r.down.as_secs_f64(),
            r.up.as_secs_f64(),
            r.resumed_after.map_or("never".to_string(), |d| format!(
                "{:.1}s later",
                d.as_secs_f64()
            ))
        );
    }
    let _ = writeln!(out, "receivers (requests by answer):");
    let webhooks: std::collections::BTreeSet<&String> =
        verdict.outcomes.keys().map(|(w, _)| w).collect();
    for webhook in webhooks {
        let answers: Vec<String> = Outcome::ALL
            .iter()
            .filter_map(|o| {
                verdict
                    .outcomes
                    .get(&(webhook.clone(), *o))
                    .map(|n| format!("{o:?} {n}"))
            })
            .collect();
        let _ = writeln!(out, "  {webhook}: {}", answers.join(", "));
    }
    let _ = writeln!(
        out,
        "dead letters: {} deliveries to the receiver down for good went dead; {} replayed once it was back",
        run.dead, run.replayed
    );
    let _ = writeln!(
        out,
        "deliveries: {} expected, {} delivered, {} requests ({} accepted)",
        verdict.expected, verdict.delivered, verdict.requests, verdict.accepted
    );
    let _ = writeln!(
        out,
        "duplicates: {} ({} explained by a SIGKILL or outage in flight, {} unexplained)",
        verdict.duplicates,
        verdict.explained,
        verdict.unexplained.len()
    );
    let _ = writeln!(
        out,
        "losses: {}   phantoms: {}   reorderings: {}",
        verdict.losses.len(),
        verdict.phantoms.len(),
        verdict.reorderings.len()
    );
    for (title, items) in [
        ("LOST", &verdict.losses),
        ("PHANTOM", &verdict.phantoms),
        ("REORDERED", &verdict.reorderings),
        ("UNEXPLAINED DUPLICATE", &verdict.unexplained),
        ("NOT FROM THE RECEIVER", &verdict.unconfirmed),
        ("SIDECAR EXIT", &run.unexpected_exits),
        ("DATABASE", &run.database),
        ("FAULT NOT EXERCISED", &run.coverage),
    ] {
        for item in items.iter().take(20) {
            let _ = writeln!(out, "  {title}: {item}");
        }
        if items.len() > 20 {
            let _ = writeln!(out, "  {title}: ... and {} more", items.len() - 20);
        }
    }
    let _ = writeln!(
        out,
        "CHAOS {} {}: changes={} deliveries={} duplicates={} losses={} phantoms={} reorderings={} \
         kills={} pg_restarts={} dead_replayed={} duration={:.0}s",
        run.profile,
        if run.passed(verdict) { "PASS" } else { "FAIL" },
        run.changes,
        verdict.delivered,
        verdict.duplicates,
        verdict.losses.len(),
        verdict.phantoms.len(),
        verdict.reorderings.len(),
        run.kills,
        run.restarts.len(),
        run.replayed,
        run.duration.as_secs_f64()
    );
    print!("{out}");
}
