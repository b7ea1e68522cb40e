//! Running the sidecar inside the test, with short intervals, and setting up NetBox's event
//! rules and webhooks in the fixture database.

use std::time::Duration;

use netbox_outbox::config::Config;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::db::{TestDb, content_type};

/// A configuration for tests: fast polls, a short retry schedule, no metrics listener.
pub fn test_config(extra_toml: &str) -> Config {
    let base = "[delivery]\npoll_interval = \"50ms\"\nretry_schedule = [\"200ms\", \"400ms\"]\nretry_jitter = 0.0\n\
                pause_after_failures = 0\n[assembly]\npoll_interval = \"50ms\"\n[rules]\nrefresh_interval = \"0s\"\n\
                [metrics]\nlisten = \"\"\n[shutdown]\ngrace_period = \"2s\"\n";
    let mut table: toml::Table = base.parse().unwrap();
    let extra: toml::Table = extra_toml.parse().expect("extra test config is TOML");
    merge(&mut table, extra);
    Config::from_toml(&table.to_string(), "test config", std::iter::empty())
        .expect("valid test config")
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// A sidecar running in the test's runtime; stopped (gracefully) on `stop` or drop.
pub struct Sidecar {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Sidecar {
    pub fn start(db: &TestDb, config: Config) -> Sidecar {
        init_logging();
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let database = db.database.clone();
        let task = tokio::spawn(async move {
            netbox_outbox::sidecar::run(config, database, async move { signal.cancelled().await })
                .await
                .expect("the sidecar starts");
        });
        Sidecar {
            stop,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.stop.cancel();
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

/// A netbox_outbox.webhook event rule for `models` and `events` (object_created...), pointing at
/// a webhook; `conditions` and `action_data` are JSON or "null". Returns its id.
pub async fn rule(
    client: &Client,
    name: &str,
    models: &[&str],
    events: &[&str],
    webhook_id: i64,
    conditions: &str,
    action_data: &str,
) -> i64 {
    let webhook_ct = content_type(client, "extras.webhook").await;
    let events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    let id: i64 = client
        .query_one(
            &format!(
                "insert into extras_eventrule (name, action_type, action_object_type_id, action_object_id,
                     event_types, conditions, action_data)
                 values ($1, 'netbox_outbox.webhook', $2, $3, $4, {conditions}::jsonb, {action_data}::jsonb)
                 returning id"
            ),
            &[&name, &webhook_ct, &webhook_id, &events],
        )
        .await
        .expect("insert event rule")
        .get(0);
    for model in models {
        let ct = content_type(client, model).await;
        client
            .execute(
                "insert into extras_eventrule_object_types (eventrule_id, contenttype_id) values ($1, $2)",
                &[&id, &ct],
            )
            .await
            .expect("insert rule object type");
    }
    id
}

pub const ALL_EVENTS: [&str; 3] = ["object_created", "object_updated", "object_deleted"];

/// Logs of the code under test, shown for failing tests (RUST_LOG, default warn).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
