//! NetBox's webhooks and event rules in the fixture database: the one builder every test sets
//! its rules up with.

use tokio_postgres::Client;

use super::db::content_type;

pub const ALL_EVENTS: [&str; 3] = ["object_created", "object_updated", "object_deleted"];

/// An event rule of action type `netbox_outbox.webhook`, and the webhook it fires (a new one
/// named like the rule, or an existing one). By default it watches `dcim.site` for every event,
/// without conditions or action_data.
///
/// ```ignore
/// let created = Rule::new("sites", &receiver.url("/hook"))
///     .webhook_columns(&[("secret", "'s3cret'")])
///     .conditions(r#"{"attr": "name", "value": "alpha"}"#)
///     .create(&client)
///     .await;
/// ```
pub struct Rule {
    name: String,
    models: Vec<String>,
    events: Vec<String>,
    conditions: String,
    action_data: String,
    action_type: String,
    target: Target,
}

enum Target {
    /// A new webhook: its payload_url and other columns as SQL literals.
    New {
        url: String,
        columns: Vec<(String, String)>,
    },
    Existing(i64),
}

/// The ids of what `Rule::create` inserted.
#[derive(Debug, Clone, Copy)]
pub struct Created {
    pub webhook: i64,
    pub rule: i64,
}

impl Rule {
    /// A rule firing a new webhook, named like the rule, that posts to `url`.
    pub fn new(name: &str, url: &str) -> Rule {
        Rule::with_target(
            name,
            Target::New {
                url: url.to_string(),
                columns: Vec::new(),
            },
        )
    }

    /// A rule firing an existing webhook.
    pub fn to_webhook(name: &str, webhook: i64) -> Rule {
        Rule::with_target(name, Target::Existing(webhook))
    }

    fn with_target(name: &str, target: Target) -> Rule {
        Rule {
            name: name.to_string(),
            models: vec!["dcim.site".to_string()],
            events: ALL_EVENTS.iter().map(|e| e.to_string()).collect(),
            conditions: "null".to_string(),
            action_data: "null".to_string(),
            action_type: "netbox_outbox.webhook".to_string(),
            target,
        }
    }

    /// The models it watches, as `app_label.model`.
    pub fn models(mut self, models: &[&str]) -> Rule {
        self.models = models.iter().map(|m| m.to_string()).collect();
        self
    }

    /// The events it fires on (`object_created`, ...).
    pub fn events(mut self, events: &[&str]) -> Rule {
        self.events = events.iter().map(|e| e.to_string()).collect();
        self
    }

    /// Its conditions: JSON, or an SQL expression when it starts with `'` or `(` (a value
    /// NetBox itself would not write).
    pub fn conditions(mut self, json: &str) -> Rule {
        self.conditions = literal(json);
        self
    }

    /// Its action_data, as JSON.
    pub fn action_data(mut self, json: &str) -> Rule {
        self.action_data = literal(json);
        self
    }

    /// Another action type than `netbox_outbox.webhook` (NetBox's own `webhook`, or a typo).
    pub fn action_type(mut self, action_type: &str) -> Rule {
        self.action_type = action_type.to_string();
        self
    }

    /// Columns of the new webhook, each value an SQL expression (`'text'`, `true`, `null`).
    pub fn webhook_columns(mut self, columns: &[(&str, &str)]) -> Rule {
        match &mut self.target {
            Target::New { columns: mine, .. } => {
                mine.extend(columns.iter().map(|(c, v)| (c.to_string(), v.to_string())))
            }
            Target::Existing(_) => panic!("rule {}: webhook columns need a new webhook", self.name),
        }
        self
    }

    /// Inserts the webhook (if new), the rule and its object types.
    pub async fn create(self, client: &Client) -> Created {
        let webhook_id = match self.target {
            Target::Existing(id) => id,
            Target::New { url, columns } => {
                let columns: Vec<(&str, &str)> = columns
                    .iter()
                    .map(|(c, v)| (c.as_str(), v.as_str()))
                    .collect();
                webhook(client, &self.name, &url, &columns).await
            }
        };
        let webhook_ct = content_type(client, "extras.webhook").await;
        let rule: i64 = client
            .query_one(
                &format!(
                    "insert into extras_eventrule (name, action_type, action_object_type_id, action_object_id,
                         event_types, conditions, action_data)
                     values ($1, $5, $2, $3, $4, {}::jsonb, {}::jsonb)
                     returning id",
                    self.conditions, self.action_data
                ),
                &[
                    &self.name,
                    &webhook_ct,
                    &webhook_id,
                    &self.events,
                    &self.action_type,
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("insert event rule {}: {e}", self.name))
            .get(0);
        for model in &self.models {
            let ct = content_type(client, model).await;
            client
                .execute(
                    "insert into extras_eventrule_object_types (eventrule_id, contenttype_id) values ($1, $2)",
                    &[&rule, &ct],
                )
                .await
                .expect("insert rule object type");
        }
        Created {
            webhook: webhook_id,
            rule,
        }
    }
}

/// JSON as an SQL literal; "null" stays SQL null, and an SQL expression (starting with `'` or
/// `(`) is taken as it is.
fn literal(json: &str) -> String {
    if json == "null" || json.starts_with('\'') || json.starts_with('(') {
        json.to_string()
    } else {
        format!("'{}'", json.replace('\'', "''"))
    }
}

/// A NetBox webhook row; returns its id.
pub async fn webhook(client: &Client, name: &str, url: &str, extra: &[(&str, &str)]) -> i64 {
    let mut columns = vec!["name".to_string(), "payload_url".to_string()];
    let mut values = vec![
        format!("'{}'", name.replace('\'', "''")),
        format!("'{}'", url.replace('\'', "''")),
    ];
    for (column, value) in extra {
        columns.push(column.to_string());
        values.push(value.to_string());
    }
    client
        .query_one(
            &format!(
                "insert into extras_webhook ({}) values ({}) returning id",
                columns.join(", "),
                values.join(", ")
            ),
            &[],
        )
        .await
        .expect("insert webhook")
        .get(0)
}
