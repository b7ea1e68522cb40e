//! Prometheus metrics: the process's recorder, the names, and their descriptions. Values are
//! recorded with the `metrics` crate's macros where things happen; [`recorder`] installs the
//! recorder once and renders them (served by [`crate::health`]).

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::warn;

pub const CHANGES_READ: &str = "netbox_outbox_changes_read_total";
pub const EVENTS: &str = "netbox_outbox_events_total";
pub const EVENTS_DISPATCHED: &str = "netbox_outbox_events_dispatched_total";
pub const DELIVERIES_CREATED: &str = "netbox_outbox_deliveries_created_total";
pub const DELIVERIES: &str = "netbox_outbox_deliveries_total";
pub const ATTEMPT_SECONDS: &str = "netbox_outbox_attempt_duration_seconds";
pub const RETRIES_SCHEDULED: &str = "netbox_outbox_retries_scheduled_total";
pub const DEAD: &str = "netbox_outbox_deliveries_dead_total";
pub const CLAIM_SECONDS: &str = "netbox_outbox_claim_duration_seconds";
pub const ASSEMBLY_SECONDS: &str = "netbox_outbox_assembly_duration_seconds";
pub const DB_RECONNECTS: &str = "netbox_outbox_database_reconnects_total";
pub const IN_FLIGHT: &str = "netbox_outbox_requests_in_flight";
pub const BACKLOG: &str = "netbox_outbox_backlog";
pub const OLDEST_PENDING: &str = "netbox_outbox_oldest_pending_seconds";
pub const UNREAD_CHANGES: &str = "netbox_outbox_unread_changes";
pub const PAUSED_WEBHOOKS: &str = "netbox_outbox_paused_webhooks";
pub const OLDEST_BLOCKED_HEAD: &str = "netbox_outbox_oldest_blocked_head_seconds";
pub const DEAD_PENDING_REPLAY: &str = "netbox_outbox_dead_deliveries";
pub const ABANDONED: &str = "netbox_outbox_requests_abandoned_total";
pub const OUTCOMES_UNRECORDABLE: &str = "netbox_outbox_outcomes_unrecordable_total";
pub const OLDEST_UNREAD: &str = "netbox_outbox_oldest_unread_seconds";
pub const FAILING_BATCHES: &str = "netbox_outbox_failing_batches";
pub const BATCH_FAILURES: &str = "netbox_outbox_batch_failures_total";
/// Batches rolled back by a serialization failure and run again at once.
pub const BATCH_CONFLICTS: &str = "netbox_outbox_batch_conflicts_total";
pub const REJECTED: &str = "netbox_outbox_deliveries_rejected_total";
pub const TRUNCATIONS: &str = "netbox_outbox_truncations_total";
/// Events deferred because their model could not be read (schema drift, a missing grant).
pub const EVENTS_DEFERRED: &str = "netbox_outbox_events_deferred_total";
/// Events waiting in netbox_outbox.deferred, as of the last retry (0 when all is well).
pub const DEFERRED_EVENTS: &str = "netbox_outbox_deferred_events";
/// Changes the renderer could not build as NetBox would (rejected, never sent with nulls).
pub const RENDER_INCOMPLETE: &str = "netbox_outbox_render_incomplete_total";

/// The process-wide recorder, installed at the first call (once, even when several sidecars
/// share a process, as in the tests); `None` if it cannot be installed, and then metrics are
/// disabled and said to be.
pub fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match install() {
            Ok(handle) => Some(handle),
            Err(error) => {
                warn!(error, "metrics are disabled");
                None
            }
        })
        .as_ref()
}

/// Registers the descriptions and returns a handle that renders the Prometheus text format.
fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_string()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(
        CHANGES_READ,
        "Captured row changes read from netbox_outbox.change."
    );
    describe_counter!(
        EVENTS,
        "Events built from captured changes, by outcome (dispatched, no_rule, filtered, deferred)."
    );
    describe_counter!(EVENTS_DISPATCHED, "Events that matched at least one rule.");
    describe_counter!(
        EVENTS_DEFERRED,
        "Events deferred because their model could not be read or rendered, by model."
    );
    describe_gauge!(
        DEFERRED_EVENTS,
        "Events waiting for their model to read again (netbox_outbox.deferred)."
    );
    describe_counter!(
        RENDER_INCOMPLETE,
        "Changes that could not be rendered as NetBox would (rejected, never sent with nulls), by \
         reason (needs_unmet, unrenderable)."
    );
    describe_counter!(
        DELIVERIES_CREATED,
        "Deliveries created, by webhook (rejected ones included)."
    );
    describe_counter!(
        DELIVERIES,
        "Delivery attempts, by webhook and outcome (delivered, retry, dead)."
    );
    describe_histogram!(
        ATTEMPT_SECONDS,
        Unit::Seconds,
        "Duration of each HTTP attempt, by webhook."
    );
    describe_counter!(
        RETRIES_SCHEDULED,
        "Failed attempts that were scheduled for a retry, by webhook."
    );
    describe_counter!(DEAD, "Deliveries that ran out of attempts, by webhook.");
    describe_histogram!(
        CLAIM_SECONDS,
        Unit::Seconds,
        "Time to claim a batch of due deliveries."
    );
    describe_histogram!(
        ASSEMBLY_SECONDS,
        Unit::Seconds,
        "Time to turn one batch of changes into deliveries."
    );
    describe_counter!(DB_RECONNECTS, "Database reconnections, by connection role.");
    describe_gauge!(IN_FLIGHT, "HTTP requests in flight in this sidecar.");
    describe_gauge!(BACKLOG, "Pending deliveries, by webhook (sampled).");
    describe_gauge!(
        OLDEST_PENDING,
        Unit::Seconds,
        "Age of the oldest pending delivery, by webhook (sampled)."
    );
    describe_gauge!(
        UNREAD_CHANGES,
        "Committed changes no sidecar has read yet (sampled at each scrape)."
    );
    describe_gauge!(
        OLDEST_UNREAD,
        Unit::Seconds,
        "Age of the oldest committed change no sidecar has read yet, 0 when none (sampled at each scrape)."
    );
    describe_gauge!(
        FAILING_BATCHES,
        "Batches of changes that failed in a row in this sidecar; 0 once one succeeds."
    );
    describe_counter!(
        BATCH_FAILURES,
        "Batches of changes that failed (each is retried; the cause is in the log)."
    );
    describe_counter!(
        BATCH_CONFLICTS,
        "Batches of changes rolled back because a delivery's queue changed under them (a \
         serialization failure) and run again at once; not failures unless they repeat."
    );
    describe_counter!(
        REJECTED,
        "Deliveries rejected when built, by reason (the field at fault: conditions, webhook, \
         payload_url, body_template...); the detail is in netbox_outbox.failed."
    );
    describe_counter!(
        TRUNCATIONS,
        "TRUNCATEs of watched tables, by table: NetBox sends no webhook for them (logged as warnings)."
    );
    describe_gauge!(
        OLDEST_BLOCKED_HEAD,
        Unit::Seconds,
        "How long the oldest queue head still failing has held back its object's later \
         deliveries, by webhook; 0 when none (sampled). netbox-outbox skip releases one."
    );
    describe_gauge!(
        PAUSED_WEBHOOKS,
        "Webhooks paused by failures or by an operator (sampled)."
    );
    describe_gauge!(
        DEAD_PENDING_REPLAY,
        "Dead deliveries kept in the log (sampled)."
    );
    describe_counter!(
        ABANDONED,
        "Requests abandoned in flight at shutdown, by webhook: recorded as attempts with an unknown outcome."
    );
    describe_counter!(
        OUTCOMES_UNRECORDABLE,
        "Outcomes stored without the receiver's text (stripped), or not at all (lost: sent again)."
    );
}
