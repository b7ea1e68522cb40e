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

    /// The deliveries of one event: one per rule whose conditions hold, each with its request
    /// built, or rejected with the reason (a bad condition, template or webhook fails that
    /// delivery only).
    pub async fn deliveries(
        &self,
        rules: &RuleSet,
        event: &Event<'_>,
        event_index: usize,
    ) -> Vec<NewDelivery> {
        let change = event.change;
        if let Some(incomplete) = &event.rendered.incomplete {
            counter!(m::RENDER_INCOMPLETE, "reason" => incomplete.kind()).increment(1);
        }
        let mut deliveries = Vec::new();
        for rule in rules.candidates(change.action.event_type(), change.content_type_id) {
            let webhook = rule.webhook.clone();
            let Some(built) = self.request(Some(rule), webhook.clone(), event).await else {
                continue;
            };
            let webhook_name = webhook.as_ref().map(|w| w.name.clone()).unwrap_or_default();
            // The detail may quote a rendered URL or header holding a token: it goes to
            // the delivery row (netbox_outbox.failed), the log gets only the field.
            if let Err(rejection) = &built {
                counter!(m::REJECTED, "reason" => rejection.field).increment(1);
                warn!(rule = %rule.name,
                      webhook = %webhook.as_ref().map(|w| w.name.as_str()).unwrap_or("(missing)"),
                      object_type = %event.object_type, object_id = change.object_id,
                      field = rejection.field,
                      "delivery rejected: the reason is in netbox_outbox.failed");
            }
            counter!(m::DELIVERIES_CREATED, "webhook" => webhook_name.clone()).increment(1);
            deliveries.push(NewDelivery {
                event: event_index,
                rule_id: rule.id,
                rule_name: rule.name.clone(),
                webhook_id: rule.webhook_id,
                webhook_name,
                content_type_id: change.content_type_id,
                object_id: change.object_id,
                seq: change.seq,
                transport: Transport::of(webhook.as_deref(), self.delivery.default_timeout),
                request: built.map_err(|r| r.detail),
            });
        }
        deliveries
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
        Some(self.render(action_data, webhook, event).await)
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
        let name = webhook.name.clone();
        self.build(webhook, context.to_value(format))
            .await
            .map_err(|e| Rejection {
                field: e.field,
                detail: format!(
                    "webhook {name:?}: {e}; fix the webhook in NetBox, then send what was \
                     rejected again: netbox-outbox replay --rerender"
                ),
            })
    }

    /// Builds `webhook`'s request for a template context (`check` passes a sample event's) on
    /// a blocking thread, so that a slow template never holds up the async
    /// workers (health endpoints, shutdown, delivery). The thread stops itself: at its fuel, or
    /// at `template_timeout` once the template writes (the error then names the field). The
    /// caller waits a second longer than that, as the backstop for a template that neither
    /// writes nor runs out of fuel; its thread then runs on until its fuel is spent, and its
    /// result is dropped.
    pub async fn build(
        &self,
        webhook: Arc<Webhook>,
        context: Value,
    ) -> Result<Request, BuildError> {
        let templates = self.templates.clone();
        let default_timeout = self.delivery.default_timeout;
        let limit = templates.limits().timeout;
        let task = tokio::task::spawn_blocking(move || {
            request::build(&webhook, &context, &templates, default_timeout)
        });
        match tokio::time::timeout(limit + Duration::from_secs(1), task).await {
            Ok(Ok(built)) => built,
            Ok(Err(failed)) => Err(BuildError {
                field: "templates",
                message: format!("rendering failed unexpectedly ({failed}); please report it"),
            }),
            Err(_) => Err(BuildError {
                field: "templates",
                message: format!(
                    "rendering the webhook's templates did not finish within {limit:?} \
                     (netbox.template_timeout); simplify them, or raise the limit"
                ),
            }),
        }
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
