//! NetBox's event rules and webhooks, read from its own tables (`extras_eventrule`,
//! `extras_eventrule_object_types`, `extras_webhook`) and matched the way NetBox matches them:
//! enabled, subscribed to the event type and the object type, in name order, conditions true.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use crate::db::Query;
use serde_json::{Map, Value};

use crate::condition::{Conditions, MalformedConditions};

/// The event rule action type the netbox-outbox plugin registers in NetBox.
pub const OUTBOX_ACTION: &str = "netbox_outbox.webhook";
/// NetBox's own webhook action type.
pub const NETBOX_ACTION: &str = "webhook";

/// A NetBox webhook (extras_webhook), as read at one moment.
#[derive(Clone)]
pub struct Webhook {
    pub id: i64,
    pub name: String,
    pub payload_url: String,
    pub http_method: String,
    pub http_content_type: String,
    pub additional_headers: String,
    pub body_template: String,
    pub secret: String,
    pub ssl_verification: bool,
    pub ca_file_path: Option<String>,
    pub timeout_seconds: Option<i16>,
}

#[cfg(test)]
impl Webhook {
    /// A webhook for unit tests: JSON POSTed to a templated URL, no secret, no headers.
    pub(crate) fn sample(name: &str) -> Webhook {
        Webhook {
            id: 1,
            name: name.into(),
            payload_url: "http://127.0.0.1:9/hook/{{ object_type }}".into(),
            http_method: "POST".into(),
            http_content_type: "application/json".into(),
            additional_headers: String::new(),
            body_template: String::new(),
            secret: String::new(),
            ssl_verification: true,
            ca_file_path: None,
            timeout_seconds: None,
        }
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("http_method", &self.http_method)
            .field(
                "secret",
                &if self.secret.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish_non_exhaustive()
    }
}

/// A NetBox event rule that delivers to a webhook.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: i64,
    pub name: String,
    pub event_types: Vec<String>,
    pub object_types: BTreeSet<i32>,
    pub conditions: Result<Conditions, MalformedConditions>,
    /// `action_data` when it is a JSON object (NetBox ignores any other value).
    pub action_data: Map<String, Value>,
    /// The webhook the rule points at; `None` if that row is gone.
    pub webhook: Option<Arc<Webhook>>,
    pub webhook_id: i64,
}

/// An event rule row that cannot be used, and why (with what to do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRule {
    pub id: i64,
    pub name: String,
    pub reason: String,
}

/// The rules in force, in NetBox's order (by name).
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// Rows that look meant for netbox-outbox but cannot be used: one bad row never stops the
    /// others from loading.
    pub skipped: Vec<SkippedRule>,
    /// The rows as read, to tell whether anything changed since.
    fingerprint: String,
}

impl RuleSet {
    /// The rules that fire for an event type (`object_created`...) on a content type, in
    /// NetBox's order, before conditions.
    pub fn candidates(
        &self,
        event_type: &str,
        content_type_id: i32,
    ) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(move |r| {
            r.object_types.contains(&content_type_id)
                && r.event_types.iter().any(|t| t == event_type)
        })
    }

    /// Whether any rule at all could fire on this content type (so `data` needs building).
    pub fn watches(&self, content_type_id: i32) -> bool {
        self.rules
            .iter()
            .any(|r| r.object_types.contains(&content_type_id))
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Reads the rules that deliver to webhooks: `netbox_outbox.webhook` rules, and NetBox's own
    /// `webhook` rules when `include_netbox_rules` is set. Returns `None` when nothing changed
    /// since `previous` was read.
    pub async fn load(
        client: &impl Query,
        include_netbox_rules: bool,
        previous: Option<&RuleSet>,
    ) -> Result<Option<RuleSet>, tokio_postgres::Error> {
        let action_types: Vec<&str> = if include_netbox_rules {
            vec![OUTBOX_ACTION, NETBOX_ACTION]
        } else {
            vec![OUTBOX_ACTION]
        };
        // One round trip: the rules with their object types and webhooks, as JSON text, which
        // doubles as the fingerprint. Rules of any netbox_outbox.* action type are read too, so
        // that a misspelt one is reported rather than silently ignored.
        let row = client
            .query_one(
                "select coalesce(json_agg(json_build_object(
                     'id', r.id, 'name', r.name, 'action_type', r.action_type,
                     'event_types', r.event_types, 'conditions', r.conditions,
                     'action_data', r.action_data, 'webhook_id', r.action_object_id,
                     'points_at_webhook', r.action_object_type_id is not distinct from
                         (select id from django_content_type where app_label = 'extras' and model = 'webhook'),
                     'object_types', (select coalesce(json_agg(ot.contenttype_id order by ot.contenttype_id), '[]')
                                      from extras_eventrule_object_types ot where ot.eventrule_id = r.id),
                     'webhook', (select row_to_json(w) from extras_webhook w where w.id = r.action_object_id)
                 ) order by r.name), '[]')::text
                 from extras_eventrule r
                 where r.enabled and (r.action_type = any($1) or r.action_type like 'netbox\\_outbox.%')",
                &[&action_types],
            )
            .await?;
        let text: String = row.get(0);
        if previous.is_some_and(|p| p.fingerprint == text) {
            return Ok(None);
        }
        let mut set = RuleSet {
            fingerprint: text,
            ..RuleSet::default()
        };
        let rows: Vec<Value> = serde_json::from_str(&set.fingerprint).unwrap_or_default();
        for row in rows {
            match RawRule::read(row, &action_types) {
                Ok(raw) => set.rules.push(raw.into_rule()),
                Err(skipped) => set.skipped.push(skipped),
            }
        }
        Ok(Some(set))
    }
}

#[derive(serde::Deserialize)]
struct RawRule {
    id: i64,
    name: String,
    event_types: Vec<String>,
    conditions: Option<Value>,
    action_data: Option<Value>,
    webhook_id: Option<i64>,
    object_types: Vec<i32>,
    webhook: Option<RawWebhook>,
}

#[derive(serde::Deserialize)]
struct RawWebhook {
    id: i64,
    name: String,
    payload_url: String,
    http_method: String,
    http_content_type: String,
    additional_headers: String,
    body_template: String,
    secret: String,
    ssl_verification: bool,
    ca_file_path: Option<String>,
    timeout: Option<i16>,
}

impl RawRule {
    /// One rule row, checked: the reason it cannot be used names the column and what to do.
    fn read(row: Value, action_types: &[&str]) -> Result<RawRule, SkippedRule> {
        let id = row.get("id").and_then(Value::as_i64).unwrap_or_default();
        let name = row
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let skip = |reason: String| SkippedRule {
            id,
            name: name.clone(),
            reason,
        };
        let action_type = row
            .get("action_type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !action_types.contains(&action_type) {
            return Err(skip(format!(
                "action type {action_type:?} is not one netbox-outbox delivers ({}); set the rule's \
                 action type to {OUTBOX_ACTION} in NetBox",
                action_types.join(", ")
            )));
        }
        match row.get("event_types") {
            Some(Value::Array(types)) if types.iter().all(Value::is_string) => {}
            Some(Value::Array(_)) => {
                return Err(skip(
                    "event_types holds a NULL; choose the rule's event types in NetBox".into(),
                ));
            }
            _ => {
                return Err(skip(
                    "event_types is NULL; choose the rule's event types in NetBox (for example \
                     object_created)"
                        .into(),
                ));
            }
        }
        if row.get("points_at_webhook") != Some(&Value::Bool(true)) {
            return Err(skip(
                "its action object is not a webhook; point the rule at a webhook in NetBox".into(),
            ));
        }
        serde_json::from_value(row).map_err(|e| skip(format!("the row cannot be read ({e})")))
    }

    fn into_rule(self) -> Rule {
        Rule {
            id: self.id,
            conditions: Conditions::parse(self.conditions.as_ref()),
            action_data: match self.action_data {
                Some(Value::Object(map)) => map,
                _ => Map::new(),
            },
            webhook: self.webhook.map(|w| {
                Arc::new(Webhook {
                    id: w.id,
                    name: w.name,
                    payload_url: w.payload_url,
                    http_method: w.http_method,
                    http_content_type: w.http_content_type,
                    additional_headers: w.additional_headers,
                    body_template: w.body_template,
                    secret: w.secret,
                    ssl_verification: w.ssl_verification,
                    ca_file_path: w.ca_file_path.filter(|p| !p.is_empty()),
                    timeout_seconds: w.timeout,
                })
            }),
            webhook_id: self.webhook_id.unwrap_or_default(),
            name: self.name,
            event_types: self.event_types,
            object_types: self.object_types.into_iter().collect(),
        }
    }
}
