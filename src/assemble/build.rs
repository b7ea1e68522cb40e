//! From an event to its deliveries, in one place: which rules match (conditions, and an
//! incomplete render), NetBox's request context and the rule's `action_data` in the template
//! context, and the webhook's request (templates, timeout, TLS, signature). The assembler and
//! its deferred retries, `replay --rerender` and `test-webhook` all build through [`Builder`],
//! so what they send cannot drift apart.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use metrics::counter;
use serde_json::{Map, Value};
use tracing::warn;

use super::store::NewDelivery;
use crate::change::history::TxChange;
use crate::change::{Action, Row};
use crate::config::{Config, DeliveryConfig};
use crate::metrics as m;
use crate::netbox::{self, Netbox};
use crate::request::{self, BuildError, EventContext, Request, Transport};
use crate::rules::{Rule, RuleSet, Webhook};
use crate::template::Templates;

/// An event as the builder needs it: the change, its rendered `data` and snapshots, and
/// NetBox's request context (the payload's `request` block).
pub struct Event<'a> {
    pub change: &'a TxChange,
    pub rendered: &'a netbox::Rendered,
    pub object_type: &'a str,
    pub netbox_request: Map<String, Value>,
}

impl<'a> Event<'a> {
    /// An event with NetBox's request context made for it (see [`netbox_request`]):
    /// `request_id` and `user_name` are NetBox's, or the transaction's.
    pub fn new(
        change: &'a TxChange,
        rendered: &'a netbox::Rendered,
        object_type: &'a str,
        (request_id, user_name): (&str, &str),
        netbox: &Netbox,
    ) -> Event<'a> {
        Event {
            change,
            rendered,
            object_type,
            netbox_request: netbox_request(change, rendered, request_id, user_name, netbox),
        }
    }
}

/// Why a delivery could not be built: the field at fault (all a log line may show) and the
/// full reason for the delivery row, with what to do.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub field: &'static str,
    pub detail: String,
}

/// Builds deliveries with the delivery settings and templates of one configuration.
pub struct Builder {
    delivery: DeliveryConfig,
    templates: Arc<Templates>,
}

impl Builder {
    pub fn new(config: &Config) -> Builder {
        Builder {
            delivery: config.delivery.clone(),
            templates: Arc::new(Templates::from_config(&config.netbox)),
        }
    }

    /// The deliveries of events (each with its index in the batch's event list), one list per
    /// event in their order: one per rule whose conditions hold, each with its request built, or
    /// rejected with the reason (a bad condition, template or webhook fails that delivery only).
    /// The requests are built together, on as many threads as [`build_all`](Self::build_all)
    /// takes: one hand-off to the blocking threads per part, not per request.
    pub async fn deliveries<'e, 'a: 'e>(
        &self,
        rules: &RuleSet,
        events: impl IntoIterator<Item = (usize, &'e Event<'a>)>,
    ) -> Vec<Vec<NewDelivery>> {
        // What each (event, rule) pair becomes: rejected at once, or a request to build.
        enum Slot {
            Rejected(Rejection),
            Build(usize),
        }
        let events: Vec<(usize, &Event<'_>)> = events.into_iter().collect();
        let mut jobs = Vec::new();
        let mut slots: Vec<Vec<(&Rule, Slot)>> = Vec::with_capacity(events.len());
        for (_, event) in &events {
            let change = event.change;
            if let Some(incomplete) = &event.rendered.incomplete {
                counter!(m::RENDER_INCOMPLETE, "reason" => incomplete.kind()).increment(1);
            }
            let mut own = Vec::new();
            for rule in rules.candidates(change.action.event_type(), change.content_type_id) {
                match self.prepare(Some(rule), rule.webhook.clone(), event) {
                    None => {}
                    Some(Err(rejection)) => own.push((rule, Slot::Rejected(rejection))),
                    Some(Ok(job)) => {
                        own.push((rule, Slot::Build(jobs.len())));
                        jobs.push(job);
                    }
                }
            }
            slots.push(own);
        }
        let mut built: Vec<Option<Result<Request, Rejection>>> = self
            .build_all(jobs.iter().map(Job::request).collect())
            .await
            .into_iter()
            .zip(&jobs)
            .map(|(result, job)| Some(result.map_err(|e| job.rejection(e))))
            .collect();
        let mut out = Vec::with_capacity(events.len());
        for ((event_index, event), own) in events.iter().zip(slots) {
            let change = event.change;
            let mut deliveries = Vec::with_capacity(own.len());
            for (rule, slot) in own {
                let built = match slot {
                    Slot::Rejected(rejection) => Err(rejection),
                    Slot::Build(job) => built[job].take().expect("each request is built once"),
                };
                let webhook = rule.webhook.as_deref();
                let webhook_name = webhook.map(|w| w.name.clone()).unwrap_or_default();
                // The detail may quote a rendered URL or header holding a token: it goes to
                // the delivery row (netbox_outbox.failed), the log gets only the field.
                if let Err(rejection) = &built {
                    counter!(m::REJECTED, "reason" => rejection.field).increment(1);
                    warn!(rule = %rule.name,
                          webhook = %webhook.map(|w| w.name.as_str()).unwrap_or("(missing)"),
                          object_type = %event.object_type, object_id = change.object_id,
                          field = rejection.field,
                          "delivery rejected: the reason is in netbox_outbox.failed");
                }
                counter!(m::DELIVERIES_CREATED, "webhook" => webhook_name.clone()).increment(1);
                deliveries.push(NewDelivery {
                    event: *event_index,
                    rule_id: rule.id,
                    rule_name: rule.name.clone(),
                    webhook_id: rule.webhook_id,
                    webhook_name,
                    content_type_id: change.content_type_id,
                    object_id: change.object_id,
                    seq: change.seq,
                    transport: Transport::of(webhook, self.delivery.default_timeout),
                    request: built.map_err(|r| r.detail),
                });
            }
            out.push(deliveries);
        }
        out
    }

    /// The request `webhook` gets for an event under `rule` (None: no rule, so no conditions
    /// and no `action_data`, as `test-webhook` renders a webhook no rule points at yet), or why
    /// it cannot be built. None when the rule's conditions do not hold for the event.
    pub async fn request(
        &self,
        rule: Option<&Rule>,
        webhook: Option<Arc<Webhook>>,
        event: &Event<'_>,
    ) -> Option<Result<Request, Rejection>> {
        Some(match self.prepare(rule, webhook, event)? {
            Ok(job) => self.build_one(job).await,
            Err(rejection) => Err(rejection),
        })
    }

    /// What an (event, rule) pair needs built, or why nothing can be; None when the rule's
    /// conditions do not hold for the event.
    fn prepare(
        &self,
        rule: Option<&Rule>,
        webhook: Option<Arc<Webhook>>,
        event: &Event<'_>,
    ) -> Option<Result<Job, Rejection>> {
        // Conditions over data that could not be built as NetBox would cannot be trusted
        // either: every candidate rule gets the rejection.
        if let Some(rejection) = incomplete(event) {
            return Some(Err(rejection));
        }
        let rendered = event.rendered;
        if let Some(rule) = rule {
            let bad_conditions = |error: &dyn std::fmt::Display| Rejection {
                field: "conditions",
                detail: format!(
                    "event rule {:?}: conditions: {error}; fix the rule's conditions in \
                     NetBox, then send what was rejected again: netbox-outbox replay --rerender",
                    rule.name
                ),
            };
            match &rule.conditions {
                Err(malformed) => return Some(Err(bad_conditions(malformed))),
                Ok(conditions) => {
                    let mut condition_data = rendered.data.clone();
                    condition_data.insert("snapshots".into(), rendered.snapshots.clone());
                    match conditions.eval(&condition_data) {
                        Ok(true) => {}
                        Ok(false) => return None,
                        Err(invalid) => return Some(Err(bad_conditions(&invalid))),
                    }
                }
            }
        }
        let Some(webhook) = webhook else {
            let (webhook_id, rule_name) = rule.map_or((0, ""), |r| (r.webhook_id, r.name.as_str()));
            return Some(Err(Rejection {
                field: "webhook",
                detail: format!(
                    "webhook {webhook_id} of event rule {rule_name:?} does not exist; point the \
                     rule at a webhook or disable it in NetBox (then netbox-outbox replay \
                     --rerender sends what was rejected)"
                ),
            }));
        };
        let empty = Map::new();
        let action_data = rule.map_or(&empty, |r| &r.action_data);
        Some(Ok(self.job(action_data, webhook, event)))
    }

    /// The request `webhook` gets for an event, with `action_data` merged into `data`,
    /// whatever any rule's conditions say (`test-webhook` shows it on demand).
    pub async fn render(
        &self,
        action_data: &Map<String, Value>,
        webhook: Arc<Webhook>,
        event: &Event<'_>,
    ) -> Result<Request, Rejection> {
        if let Some(rejection) = incomplete(event) {
            return Err(rejection);
        }
        self.build_one(self.job(action_data, webhook, event)).await
    }

    /// The webhook and the template context of one request.
    fn job(
        &self,
        action_data: &Map<String, Value>,
        webhook: Arc<Webhook>,
        event: &Event<'_>,
    ) -> Job {
        let format = self
            .delivery
            .payload_format_by_webhook
            .get(&webhook.name)
            .copied()
            .unwrap_or(self.delivery.payload_format);
        let context = EventContext {
            event: event.change.action.word().to_string(),
            timestamp: netbox::format::timestamp_now(),
            object_type: event.object_type.to_string(),
            data: merge_action_data(action_data, &event.rendered.data),
            netbox_request: event.netbox_request.clone(),
            snapshots: event.rendered.snapshots.clone(),
        };
        Job {
            webhook,
            context: Arc::new(context.into_value(format)),
        }
    }

    async fn build_one(&self, job: Job) -> Result<Request, Rejection> {
        let mut built = self.build_all(vec![job.request()]).await;
        built
            .pop()
            .expect("one result per request")
            .map_err(|e| job.rejection(e))
    }

    /// Builds `webhook`'s request for a template context (`check` passes a sample event's).
    pub async fn build(
        &self,
        webhook: Arc<Webhook>,
        context: Value,
    ) -> Result<Request, BuildError> {
        let mut built = self.build_all(vec![(webhook, Arc::new(context))]).await;
        built.pop().expect("one result per request")
    }

    /// Builds the requests of webhooks for their template contexts, on
    /// blocking threads, so that a slow template never holds up the async workers (health
    /// endpoints, shutdown, delivery): many requests are split into parts, one thread each
    /// ([`crate::threads_for`]), and come back in order.
    ///
    /// A thread stops a template itself: at its fuel, or at `template_timeout` once the
    /// template writes (the error then names the field). The caller waits for each request a
    /// second longer than that, as the backstop for a template that neither writes nor runs out
    /// of fuel: that request is then rejected, its thread left to run on until its fuel is spent
    /// (its result dropped, the rest of its part not started), and the rest of its part built
    /// on a new thread.
    pub async fn build_all(
        &self,
        requests: Vec<(Arc<Webhook>, Arc<Value>)>,
    ) -> Vec<Result<Request, BuildError>> {
        let templates = self.templates.clone();
        let default_timeout = self.delivery.default_timeout;
        let build: Arc<BuildFn> = Arc::new(move |webhook: &Webhook, context: &Value| {
            request::build(webhook, context, &templates, default_timeout)
        });
        self.build_in_parts(requests, build).await
    }

    /// [`build_all`](Self::build_all) with the function that builds one request.
    async fn build_in_parts(
        &self,
        requests: Vec<(Arc<Webhook>, Arc<Value>)>,
        build: Arc<BuildFn>,
    ) -> Vec<Result<Request, BuildError>> {
        let requests = Arc::new(requests);
        let limit = self.templates.limits().timeout;
        let threads = crate::threads_for(requests.len());
        let part = requests.len().div_ceil(threads).max(1);
        let mut running: Vec<(std::ops::Range<usize>, Part)> = (0..requests.len())
            .step_by(part)
            .map(|start| {
                let range = start..(start + part).min(requests.len());
                (range.clone(), Part::spawn(&requests, range, &build))
            })
            .collect();
        let mut out = Vec::with_capacity(requests.len());
        for (range, part) in &mut running {
            let mut next = range.start;
            while next < range.end {
                let waited =
                    tokio::time::timeout(limit + Duration::from_secs(1), part.results.recv());
                let failed = match waited.await {
                    Ok(Some(built)) => {
                        out.push(built);
                        next += 1;
                        continue;
                    }
                    // The thread panicked: its result is gone with it.
                    Ok(None) => {
                        "rendering failed unexpectedly (its thread stopped); please report it"
                            .to_string()
                    }
                    Err(_) => format!(
                        "rendering the webhook's templates did not finish within {limit:?} \
                         (netbox.template_timeout); simplify them, or raise the limit"
                    ),
                };
                part.abandoned
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                out.push(Err(BuildError {
                    field: "templates",
                    message: failed,
                }));
                next += 1;
                *part = Part::spawn(&requests, next..range.end, &build);
            }
        }
        out
    }
}

/// Builds one request: [`request::build`] with the builder's templates and default timeout.
type BuildFn = dyn Fn(&Webhook, &Value) -> Result<Request, BuildError> + Send + Sync;

/// A request to build: the webhook, and the template context it renders with.
struct Job {
    webhook: Arc<Webhook>,
    context: Arc<Value>,
}

impl Job {
    /// What [`Builder::build_all`] builds.
    fn request(&self) -> (Arc<Webhook>, Arc<Value>) {
        (self.webhook.clone(), self.context.clone())
    }

    /// A build error as the delivery row states it.
    fn rejection(&self, e: BuildError) -> Rejection {
        Rejection {
            field: e.field,
            detail: format!(
                "webhook {:?}: {e}; fix the webhook in NetBox, then send what was rejected \
                 again: netbox-outbox replay --rerender",
                self.webhook.name
            ),
        }
    }
}

/// One part of [`Builder::build_all`] on its thread: its results in order, and the flag that
/// tells it to stop.
struct Part {
    results: tokio::sync::mpsc::UnboundedReceiver<Result<Request, BuildError>>,
    abandoned: Arc<std::sync::atomic::AtomicBool>,
}

impl Part {
    /// Builds `range` of `requests` in order on a blocking thread, sending each result.
    fn spawn(
        requests: &Arc<Vec<(Arc<Webhook>, Arc<Value>)>>,
        range: std::ops::Range<usize>,
        build: &Arc<BuildFn>,
    ) -> Part {
        let (sender, results) = tokio::sync::mpsc::unbounded_channel();
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop, requests, build) = (abandoned.clone(), requests.clone(), build.clone());
        if !range.is_empty() {
            tokio::task::spawn_blocking(move || {
                for (webhook, context) in &requests[range] {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    if sender.send(build(webhook, context)).is_err() {
                        return;
                    }
                }
            });
        }
        Part { results, abandoned }
    }
}

/// The rejection of an event whose `data` could not be built as NetBox would.
fn incomplete(event: &Event<'_>) -> Option<Rejection> {
    let incomplete = event.rendered.incomplete.as_ref()?;
    Some(Rejection {
        field: "data",
        detail: format!(
            "{incomplete}; regenerate or fix the model catalogue (tools/catalogue), then send \
             what was rejected again: netbox-outbox replay --rerender"
        ),
    })
}

/// An object as it stands now, as a change to render: `row` both before and after (for a
/// delete, the last captured image), with its current tags. What the deferred retry,
/// `replay --rerender` and `test-webhook` render when the original change is not at hand.
#[allow(clippy::too_many_arguments)]
pub fn standing_change(
    content_type_id: i32,
    object_id: i64,
    action: Action,
    row: Row,
    tags: BTreeSet<i64>,
    seq: i64,
    committed_at: SystemTime,
    db_user: String,
) -> TxChange {
    TxChange {
        txid: 0,
        content_type_id,
        object_id,
        seq,
        committed_at,
        action,
        pre_row: (action != Action::Created).then(|| row.clone()),
        post_row: (action != Action::Deleted).then(|| row.clone()),
        deleted_row: (action == Action::Deleted).then_some(row),
        pre_tags: tags.clone(),
        post_tags: tags,
        changelog: Vec::new(),
        row_changes: 1,
        tag_changes: 0,
        request_context: None,
        db_user,
        removed_links: Vec::new(),
    }
}

/// `{**action_data, **data}`: the rule's keys first (in their stored order), the object's
/// values winning on a collision without moving the key.
fn merge_action_data(
    action_data: &Map<String, Value>,
    data: &Map<String, Value>,
) -> Map<String, Value> {
    let mut merged = action_data.clone();
    for (k, v) in data {
        merged.insert(k.clone(), v.clone());
    }
    merged
}

/// Who made the change: NetBox's request id and user when NetBox logged it (or the plugin told
/// us), else an id for the database transaction and the database role.
pub fn attribution(
    change: &TxChange,
    netbox_txs: &HashMap<i64, (String, String)>,
) -> (String, String, &'static str) {
    if let Some(entry) = change.changelog.first()
        && let Some(id) = entry.request_id()
    {
        return (
            id.to_string(),
            entry.user_name().unwrap_or_default().to_string(),
            "netbox",
        );
    }
    if let Some(context) = plugin_request_context(change)
        && let Some(id) = context.get("id").and_then(Value::as_str)
    {
        let user = context
            .get("user")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return (id.to_string(), user.to_string(), "netbox");
    }
    if let Some((id, user)) = netbox_txs.get(&change.txid) {
        return (id.clone(), user.clone(), "netbox");
    }
    (
        transaction_uuid(change.txid),
        change.db_user.clone(),
        "database",
    )
}

/// A stable UUID for a database transaction without a NetBox request, so that all events of one
/// transaction share a request id, as NetBox's events of one request do.
pub fn transaction_uuid(txid: i64) -> String {
    let bytes = txid.to_be_bytes();
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(b"nboutbox");
    b[8..].copy_from_slice(&bytes);
    uuid::Builder::from_custom_bytes(b)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The request context the plugin recorded for the change's transaction (its
/// `netbox_outbox.request` setting), if any.
fn plugin_request_context(change: &TxChange) -> Option<Map<String, Value>> {
    match serde_json::from_str(change.request_context.as_deref()?).ok()? {
        Value::Object(context) => Some(context),
        _ => None,
    }
}

/// NetBox's request context, the payload's `request` block: exact with the plugin; otherwise
/// `request_id` and `user_name` (NetBox's, or the transaction's) with the path and method the
/// REST API would have used.
fn netbox_request(
    change: &TxChange,
    rendered: &netbox::Rendered,
    request_id: &str,
    user_name: &str,
    netbox: &Netbox,
) -> Map<String, Value> {
    if let Some(context) = plugin_request_context(change) {
        return context;
    }
    let (path, method) = netbox.fallback_request(change, rendered);
    let mut block = Map::new();
    block.insert("id".into(), Value::String(request_id.to_string()));
    block.insert("path".into(), Value::String(path.clone()));
    block.insert("path_info".into(), Value::String(path));
    block.insert("method".into(), Value::String(method.to_string()));
    block.insert("GET".into(), Value::Object(Map::new()));
    block.insert("user".into(), Value::String(user_name.to_string()));
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests split among threads come back in order, and one that neither finishes nor
    /// stops is rejected after the backstop (`template_timeout` + 1 s) while the rest of its
    /// part is built on a new thread; a thread that panics costs its own request only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_built_in_parts_come_back_in_order_and_a_stuck_one_fails_alone() {
        let mut config = Config::defaults();
        config.netbox.template_timeout = Duration::from_millis(50);
        let builder = Builder::new(&config);
        let n = 4 * crate::ITEMS_PER_THREAD;
        let (stuck, panics) = (7, n - 3);
        let requests: Vec<(Arc<Webhook>, Arc<Value>)> = (0..n)
            .map(|i| {
                let name = match i {
                    i if i == stuck => "stuck",
                    i if i == panics => "panics",
                    _ => "good",
                };
                (
                    Arc::new(Webhook::sample(name)),
                    Arc::new(serde_json::json!({ "i": i })),
                )
            })
            .collect();
        let templates = builder.templates.clone();
        let build: Arc<BuildFn> = Arc::new(move |webhook: &Webhook, context: &Value| {
            match webhook.name.as_str() {
                // held past the backstop, as a template that neither writes nor runs out of
                // fuel would be
                "stuck" => std::thread::sleep(Duration::from_millis(1500)),
                "panics" => panic!("a bug in rendering"),
                _ => {}
            }
            request::build(webhook, context, &templates, Duration::from_secs(5))
        });
        let built = builder.build_in_parts(requests, build).await;
        assert_eq!(built.len(), n);
        for (i, result) in built.iter().enumerate() {
            match result {
                Ok(request) => {
                    assert!(i != stuck && i != panics, "request {i} should have failed");
                    assert_eq!(
                        String::from_utf8_lossy(&request.body),
                        format!("{{\"i\": {i}}}"),
                        "request {i} out of order"
                    );
                }
                Err(e) if i == stuck => {
                    assert_eq!(e.field, "templates");
                    assert!(e.message.contains("did not finish within 50ms"), "{e}");
                }
                Err(e) if i == panics => {
                    assert!(e.message.contains("failed unexpectedly"), "{e}")
                }
                Err(e) => panic!("request {i} failed: {e}"),
            }
        }
    }
}
