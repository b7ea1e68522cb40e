//! Bad input: each case gets a clear error that names the thing and says what to do, nothing is
//! lost, and one bad webhook or rule never stops the others (a good webhook delivers alongside).
//!
//! A sidecar test has two rules on `dcim.site`: "good" (to a sound webhook) and "bad" (the case
//! under test). CLI and configuration cases run the real binary.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netbox_outbox::db::Database;
use netbox_outbox::receiver::Receiver;
use tokio_postgres::Client;

use crate::support::db::{TestDb, insert_site};
use crate::support::rules::{Rule, webhook};
use crate::support::sidecar::{Sidecar, test_config};
use crate::support::tls::TlsReceiver;
use crate::support::wait::eventually;

const WAIT: Duration = Duration::from_secs(30);

// ---- the scene: a good webhook beside the bad one -------------------------------------------

struct Scene {
    db: TestDb,
    client: Client,
    receiver: Receiver,
    sidecar: Option<Sidecar>,
}

async fn scene() -> Scene {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    Rule::new("good", &receiver.url("/good"))
        .create(&client)
        .await;
    Scene {
        db,
        client,
        receiver,
        sidecar: None,
    }
}

/// A delivery's state, error and attempt count, as an operator reads them.
#[derive(Debug)]
struct Delivery {
    id: i64,
    state: String,
    error: String,
    attempts: i32,
}

impl Scene {
    /// Webhook "bad" at `url` with `extra` columns, and rule "bad" with `conditions`.
    async fn bad(&self, url: &str, extra: &[(&str, &str)], conditions: &str) -> i64 {
        Rule::new("bad", url)
            .webhook_columns(extra)
            .conditions(conditions)
            .create(&self.client)
            .await
            .webhook
    }

    fn start(&mut self) {
        self.start_with("");
    }

    fn start_with(&mut self, toml: &str) {
        self.sidecar = Some(Sidecar::start(&self.db, test_config(toml)));
    }

    /// Waits for the good webhook to get `n` requests; returns them.
    async fn good(&self, n: usize) -> Vec<netbox_outbox::receiver::Received> {
        eventually("the good webhook's requests", WAIT, || async {
            let got: Vec<_> = self
                .receiver
                .received()
                .into_iter()
                .filter(|r| r.path == "/good")
                .collect();
            (got.len() >= n).then_some(got)
        })
        .await
    }

    /// The deliveries of rule `rule_name`, in id order.
    async fn deliveries(&self, rule_name: &str) -> Vec<Delivery> {
        self.client
            .query(
                "select id, state, coalesce(last_error, ''), attempts from netbox_outbox.delivery
                 where event_rule_name = $1 order by id",
                &[&rule_name],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| Delivery {
                id: r.get(0),
                state: r.get(1),
                error: r.get(2),
                attempts: r.get(3),
            })
            .collect()
    }

    /// Waits for rule `rule_name`'s first delivery to finish (not pending); returns it.
    async fn finished(&self, rule_name: &str) -> Delivery {
        eventually("the delivery to finish", WAIT, || async {
            self.deliveries(rule_name)
                .await
                .into_iter()
                .next()
                .filter(|d| d.state != "pending")
        })
        .await
    }

    /// Waits until no delivery is pending: whatever was going to be sent has been.
    async fn settled(&self) {
        eventually("every delivery to finish", WAIT, || async {
            let pending: i64 = self
                .client
                .query_one(
                    "select count(*) from netbox_outbox.delivery where state = 'pending'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (pending == 0).then_some(())
        })
        .await;
    }

    /// The errors of a delivery's attempts, in order.
    async fn attempt_errors(&self, delivery: i64) -> Vec<String> {
        self.client
            .query(
                "select coalesce(error, '') from netbox_outbox.attempt where delivery_id = $1 order by attempt",
                &[&delivery],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// A site created; the good webhook's request for it arrives (one bad webhook stops nothing).
    async fn site_delivers(&self, name: &str) -> i64 {
        let id = insert_site(&self.client, name).await;
        eventually("the good webhook's request for the site", WAIT, || async {
            self.receiver
                .received()
                .iter()
                .any(|r| r.path == "/good" && r.json()["data"]["name"] == name)
                .then_some(())
        })
        .await;
        id
    }

    async fn stop(&mut self) {
        if let Some(sidecar) = self.sidecar.take() {
            sidecar.stop().await;
        }
    }
}

/// The bad rule's delivery is rejected (nothing sent) with an error holding every `expected`
/// fragment, visible in netbox_outbox.failed; the good webhook delivers alongside.
async fn rejected_with(url: &str, extra: &[(&str, &str)], conditions: &str, expected: &[&str]) {
    let mut scene = scene().await;
    scene.bad(url, extra, conditions).await;
    scene.start();
    scene.site_delivers("alpha").await;
    let d = scene.finished("bad").await;
    assert_eq!(d.state, "rejected", "{d:?}");
    for fragment in expected {
        assert!(
            d.error.contains(fragment),
            "{fragment:?} missing from {:?}",
            d.error
        );
    }
    let failed: i64 = scene
        .client
        .query_one(
            "select count(*) from netbox_outbox.failed where id = $1",
            &[&d.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        failed, 1,
        "the rejection is visible in netbox_outbox.failed"
    );
    assert!(
        scene.receiver.received().iter().all(|r| r.path == "/good"),
        "nothing was sent for the bad webhook"
    );
    scene.stop().await;
}

/// The bad webhook's delivery fails at send time with every `expected` fragment in each attempt's
/// error, and ends dead (ready to replay); the good webhook delivers alongside.
async fn dead_with(url: &str, extra: &[(&str, &str)], expected: &[&str]) {
    let mut scene = scene().await;
    scene.bad(url, extra, "null").await;
    scene.start();
    scene.site_delivers("alpha").await;
    let d = scene.finished("bad").await;
    assert_eq!(d.state, "dead", "{d:?}");
    assert_eq!(d.attempts, 3, "every attempt of the schedule was made");
    let errors = scene.attempt_errors(d.id).await;
    assert_eq!(errors.len(), 3);
    for error in errors.iter().chain([&d.error]) {
        for fragment in expected {
            assert!(
                error.contains(fragment),
                "{fragment:?} missing from {error:?}"
            );
        }
    }
    scene.stop().await;
}

// ---- templates and URLs ---------------------------------------------------------------------

#[tokio::test]
async fn body_template_that_does_not_parse() {
    rejected_with(
        "http://127.0.0.1:1/",
        &[("body_template", "'{\"name\": \"{{ data.name }\"}'")],
        "null",
        &["body_template", "syntax error", "line 1", "fix the webhook"],
    )
    .await;
}

#[tokio::test]
async fn body_template_that_fails_at_render_time() {
    rejected_with(
        "http://127.0.0.1:1/",
        &[("body_template", "'{{ data.name + 1 }}'")],
        "null",
        &[
            "body_template",
            "line 1",
            "data.name + 1",
            "fix the webhook",
        ],
    )
    .await;
}

#[tokio::test]
async fn undefined_variable_path_in_a_template() {
    rejected_with(
        "http://127.0.0.1:1/",
        &[("body_template", "'{\"x\": \"{{ data.nosuch.field }}\"}'")],
        "null",
        &[
            "body_template",
            "undefined",
            "data.nosuch.field",
            "fix the webhook",
        ],
    )
    .await;
}

#[tokio::test]
async fn payload_url_rendering_an_invalid_url() {
    rejected_with(
        "http://{{ data.nosuch }}:80/hook",
        &[],
        "null",
        &["payload_url", "not a valid URL", "fix the webhook"],
    )
    .await;
}

#[tokio::test]
async fn payload_url_with_an_unsupported_scheme() {
    rejected_with(
        "ftp://127.0.0.1/{{ data.slug }}",
        &[],
        "null",
        &[
            "payload_url",
            "unsupported scheme \"ftp\"",
            "use http or https",
        ],
    )
    .await;
}

// ---- sending ----------------------------------------------------------------------------------

#[tokio::test]
async fn unreachable_host() {
    // a port nothing listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    dead_with(
        &format!("http://127.0.0.1:{port}/hook"),
        &[],
        &["connection failed", "is the receiver running"],
    )
    .await;
}

#[tokio::test]
async fn dns_failure() {
    dead_with(
        "http://no-such-host.invalid/hook",
        &[],
        &[
            "DNS lookup failed",
            "no-such-host.invalid",
            "check the host name",
        ],
    )
    .await;
}

#[tokio::test]
async fn ca_file_that_does_not_exist() {
    dead_with(
        "https://127.0.0.1:1/hook",
        &[("ca_file_path", "'/nonexistent/netbox-outbox-ca.pem'")],
        &[
            "ca_file_path /nonexistent/netbox-outbox-ca.pem",
            "cannot read it",
            "fix the path",
        ],
    )
    .await;
}

#[tokio::test]
async fn ca_file_that_is_not_a_certificate() {
    let path = std::env::temp_dir().join(format!("not-a-cert-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&path, "hello, I am not a certificate\n").unwrap();
    dead_with(
        "https://127.0.0.1:1/hook",
        &[("ca_file_path", &format!("'{}'", path.display()))],
        &[
            &format!("ca_file_path {}", path.display()),
            "no PEM certificate",
            "point ca_file_path at",
        ],
    )
    .await;
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn tls_name_mismatch() {
    let tls = TlsReceiver::start_for("mismatch", &["receiver.example"]).await;
    dead_with(
        &tls.url("/hook"),
        &[("ca_file_path", &format!("'{}'", tls.ca_file.display()))],
        &[
            "TLS handshake failed",
            "certificate",
            "the name in payload_url",
        ],
    )
    .await;
    assert_eq!(tls.receiver.count(), 0, "no request got through");
}

// ---- conditions (reference docs 4.3) --------------------------------------------------------

/// A rule whose conditions cannot be built or evaluated: its delivery is rejected with the
/// precise reason and what to do; the good rule fires.
macro_rules! condition_case {
    ($name:ident, $conditions:expr, $($expected:expr),+) => {
        #[tokio::test]
        async fn $name() {
            rejected_with(
                "http://127.0.0.1:1/",
                &[],
                &format!("'{}'", $conditions),
                &[$($expected),+, "event rule \"bad\"", "fix the rule's conditions in NetBox"],
            )
            .await;
        }
    };
}

condition_case!(
    conditions_that_are_a_list,
    r#"[{"attr": "name", "value": "alpha"}]"#,
    "a rule set must be a JSON object, not list"
);
condition_case!(
    conditions_that_are_a_string,
    r#""name == alpha""#,
    "a rule set must be a JSON object, not str"
);
condition_case!(
    condition_upper_case_logic_key,
    r#"{"AND": [{"attr": "name", "value": "alpha"}]}"#,
    "the logic key must be lower case: use \"and\", not \"AND\""
);
condition_case!(
    condition_logic_value_not_a_list,
    r#"{"and": {"attr": "name", "value": "alpha"}}"#,
    "the value of \"and\" must be a list of conditions, not dict"
);
condition_case!(
    condition_attr_alone_read_as_logic,
    r#"{"attr": "name"}"#,
    "invalid logic type \"attr\""
);
condition_case!(
    condition_nested_upper_case_logic,
    r#"{"and": [{"OR": [{"attr": "name", "value": "alpha"}]}]}"#,
    "unknown key \"OR\" in a condition"
);
condition_case!(
    condition_with_an_unknown_key,
    r#"{"attr": "name", "value": "alpha", "negated": true}"#,
    "unknown key \"negated\" in a condition (allowed: attr, value, op, negate)"
);
condition_case!(
    condition_without_attr,
    r#"{"value": "alpha", "op": "eq"}"#,
    "a condition needs an \"attr\""
);
condition_case!(
    condition_without_a_value,
    r#"{"attr": "name", "op": "eq"}"#,
    "a value is required for the Eq operator"
);
condition_case!(
    condition_changed_with_a_value,
    r#"{"attr": "name", "op": "changed", "value": "alpha"}"#,
    "does not accept a value"
);
condition_case!(
    condition_changed_on_a_snapshot_path,
    r#"{"and": [{"attr": "snapshots.prechange.name", "op": "changed"}]}"#,
    "use the bare attribute"
);
condition_case!(
    condition_with_a_dict_value,
    r#"{"attr": "name", "value": {"a": 1}}"#,
    "unsupported value type: dict"
);
condition_case!(
    condition_value_type_wrong_for_the_operator,
    r#"{"attr": "id", "op": "gt", "value": "1"}"#,
    "invalid type for Gt operation: str"
);
condition_case!(
    condition_with_an_unknown_operator,
    r#"{"attr": "name", "op": "neq", "value": "alpha"}"#,
    "unknown operator \"neq\"; must be one of: eq, gt"
);
condition_case!(
    condition_with_an_invalid_regex,
    r#"{"attr": "name", "op": "regex", "value": "(unclosed"}"#,
    "invalid regular expression \"(unclosed\""
);
condition_case!(
    condition_on_a_missing_attribute,
    r#"{"attr": "nosuch.field", "value": 1}"#,
    "invalid condition: invalid key path: nosuch.field"
);
condition_case!(
    condition_comparing_incomparable_types,
    r#"{"attr": "name", "op": "gt", "value": 1}"#,
    "invalid data type at 'name'"
);

// ---- headers, large fields -----------------------------------------------------------------

/// NetBox skips a header line without a colon; so do we (same request), and `check` names the
/// line (not its text, which may hold a token) as a problem.
#[tokio::test]
async fn header_line_without_a_colon() {
    let mut scene = scene().await;
    let hook = scene.receiver.url("/bad");
    scene
        .bad(
            &hook,
            &[(
                "additional_headers",
                "E'X-Ok: 1\\nAuthorization Bearer s3cret-token'",
            )],
            "null",
        )
        .await;
    scene.start();
    scene.site_delivers("alpha").await;
    let d = scene.finished("bad").await;
    assert_eq!(d.state, "delivered");
    let sent = scene
        .receiver
        .received()
        .into_iter()
        .find(|r| r.path == "/bad")
        .unwrap();
    assert_eq!(sent.header("x-ok"), Some("1"));
    assert!(sent.header("authorization").is_none());
    scene.stop().await;

    let check = cli(&scene.db, &["check", "--offline"]).await;
    assert_eq!(check.status.code(), Some(5), "{}", out(&check));
    let text = out(&check);
    assert!(
        text.contains(
            "PROBLEM  webhook \"bad\": additional_headers line 2 has no colon, so it is not sent"
        ),
        "{text}"
    );
    assert!(text.contains("write it as Name: value"), "{text}");
    assert!(
        !text.contains("s3cret-token"),
        "check printed a header's text: {text}"
    );
}

#[tokio::test]
async fn header_with_control_characters() {
    let mut scene = scene().await;
    let hook = scene.receiver.url("/bad");
    scene
        .bad(
            &hook,
            &[("additional_headers", "'X-Site: {{ data.description }}'")],
            "null",
        )
        .await;
    scene.start();
    let id = insert_site(&scene.client, "alpha").await;
    scene
        .client
        .execute(
            "update dcim_site set description = E'bell\\x07' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    scene.good(2).await;
    let rejected = eventually("two rejections", WAIT, || async {
        let d = scene.deliveries("bad").await;
        (d.len() == 2 && d.iter().all(|d| d.state != "pending")).then_some(d)
    })
    .await;
    assert_eq!(
        rejected[0].state, "delivered",
        "the create had a clean header"
    );
    assert_eq!(rejected[1].state, "rejected");
    assert!(
        rejected[1].error.contains("additional_headers")
            && rejected[1].error.contains("X-Site")
            && rejected[1].error.contains("control character")
            && rejected[1].error.contains("header_safe"),
        "{:?}",
        rejected[1].error
    );
    scene.stop().await;
}

/// A 10 MB text field travels whole: captured, rendered and delivered.
#[tokio::test]
async fn ten_megabyte_text_field() {
    let mut scene = scene().await;
    let hook = scene.receiver.url("/bad");
    scene.bad(&hook, &[], "null").await;
    scene.start();
    let id = scene.site_delivers("alpha").await;
    scene
        .client
        .execute(
            "update dcim_site set comments = repeat('x', 10 * 1024 * 1024) where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let got = scene.good(2).await;
    let body = got[1].json();
    assert_eq!(body["event"], "updated");
    assert_eq!(
        body["data"]["comments"].as_str().map(str::len),
        Some(10 * 1024 * 1024)
    );
    assert!(got[1].body.len() > 10 * 1024 * 1024);
    scene.stop().await;
}

// ---- configuration changing under the sidecar ------------------------------------------------

/// Pauses webhook "bad" (as an operator would), so its deliveries stay pending.
async fn pause_bad(client: &Client) {
    client
        .execute("select netbox_outbox.pause_webhook('bad')", &[])
        .await
        .unwrap();
}

async fn resume(client: &Client, webhook: i64) {
    client
        .execute(
            "update netbox_outbox.webhook_state set paused_until = null, paused_by_operator = false
             where webhook_id = $1",
            &[&webhook],
        )
        .await
        .unwrap();
}

/// A webhook deleted while its delivery is pending: the frozen request still goes out (NetBox
/// pickles the webhook into its job); later events for its rule are rejected, saying what to do.
#[tokio::test]
async fn webhook_deleted_while_deliveries_are_pending() {
    let mut scene = scene().await;
    let hook = scene.receiver.url("/bad");
    let bad = scene.bad(&hook, &[], "null").await;
    pause_bad(&scene.client).await;
    scene.start();
    scene.site_delivers("alpha").await;
    assert_eq!(scene.deliveries("bad").await[0].state, "pending");
    scene
        .client
        .execute("delete from extras_webhook where id = $1", &[&bad])
        .await
        .unwrap();
    scene.site_delivers("beta").await;
    resume(&scene.client, bad).await;
    let d = scene.finished("bad").await;
    assert_eq!(d.state, "delivered", "the frozen request went out: {d:?}");
    let later = eventually("the second delivery", WAIT, || async {
        scene.deliveries("bad").await.into_iter().nth(1)
    })
    .await;
    assert_eq!(later.state, "rejected");
    assert!(
        later.error.contains(&format!(
            "webhook {bad} of event rule \"bad\" does not exist"
        )) && later
            .error
            .contains("point the rule at a webhook or disable it"),
        "{:?}",
        later.error
    );
    scene.stop().await;
}

/// A rule disabled while its delivery is pending: what was queued still goes out (as NetBox's
/// queued job does); changes after the disable give it no delivery; other rules go on.
#[tokio::test]
async fn rule_disabled_mid_flight() {
    let mut scene = scene().await;
    let hook = scene.receiver.url("/bad");
    let bad = scene.bad(&hook, &[], "null").await;
    pause_bad(&scene.client).await;
    scene.start();
    scene.site_delivers("alpha").await;
    assert_eq!(scene.deliveries("bad").await[0].state, "pending");
    scene
        .client
        .execute(
            "update extras_eventrule set enabled = false where name = 'bad'",
            &[],
        )
        .await
        .unwrap();
    scene.site_delivers("beta").await;
    resume(&scene.client, bad).await;
    let d = scene.finished("bad").await;
    assert_eq!(d.state, "delivered", "{d:?}");
    assert_eq!(
        scene.deliveries("bad").await.len(),
        1,
        "no delivery after the disable"
    );
    scene.stop().await;
}

/// A watched table dropped while it has unread changes: the batch goes through (rows of a
/// missing table are gone; captured before-images still render the delete), other objects
/// deliver, and the recreated table is watched again.
#[tokio::test]
async fn watched_table_dropped_and_recreated() {
    let mut scene = scene().await;
    Rule::new("regions", &scene.receiver.url("/regions"))
        .models(&["dcim.region"])
        .create(&scene.client)
        .await;
    // three transactions: both created, one deleted, the table dropped
    for sql in [
        "insert into dcim_region (name, slug) values ('kept', 'kept'), ('gone', 'gone')",
        "delete from dcim_region where name = 'gone'",
        "drop table dcim_region",
    ] {
        scene.client.batch_execute(sql).await.unwrap();
    }
    scene.start();
    scene.site_delivers("alpha").await;
    eventually("the deleted region's webhooks", WAIT, || async {
        let got: Vec<_> = scene
            .receiver
            .received()
            .into_iter()
            .filter(|r| r.path == "/regions")
            .collect();
        (got.len() >= 2).then_some(())
    })
    .await;
    scene.settled().await;
    let got: Vec<_> = scene
        .receiver
        .received()
        .into_iter()
        .filter(|r| r.path == "/regions")
        .collect();
    let events: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            let b = r.json();
            (
                b["event"].as_str().unwrap().to_string(),
                b["data"]["name"].as_str().unwrap_or("<null>").to_string(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("created".to_string(), "gone".to_string()),
            ("deleted".to_string(), "gone".to_string())
        ],
        "the deleted region is rendered from its captured image; the kept one, whose row is \
         gone without a trace, is skipped"
    );
    assert!(
        events.iter().all(|(_, name)| name != "<null>"),
        "no payload of nulls: {events:?}"
    );

    scene
        .client
        .batch_execute(
            "create table dcim_region (like dcim_sitegroup including all);
             insert into dcim_region (name, slug) values ('back', 'back');",
        )
        .await
        .unwrap();
    eventually("the recreated table's change", WAIT, || async {
        scene
            .receiver
            .received()
            .iter()
            .any(|r| r.path == "/regions" && r.json()["data"]["name"] == "back")
            .then_some(())
    })
    .await;
    scene.site_delivers("beta").await;
    scene.stop().await;
}

/// A row that vanished without a captured delete (TRUNCATE is not captured) before the batch
/// read it: no "created" payload of nulls goes out; the rest of the batch does.
#[tokio::test]
async fn row_vanished_without_a_trace() {
    let mut scene = scene().await;
    insert_site(&scene.client, "ghost").await;
    scene
        .client
        .batch_execute("truncate dcim_site")
        .await
        .unwrap();
    scene.start();
    scene.site_delivers("real").await;
    scene.settled().await;
    let got = scene.good(1).await;
    assert_eq!(
        got.len(),
        1,
        "only the real site: {:?}",
        got.iter().map(|r| r.json()).collect::<Vec<_>>()
    );
    assert_eq!(got[0].json()["data"]["name"], "real");
    scene.stop().await;
}

// ---- the database ----------------------------------------------------------------------------

/// Runs the binary without blocking the test's runtime.
async fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_netbox-outbox"));
    command
        .args(args)
        .env_remove("NETBOX_OUTBOX_CONFIG")
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    tokio::time::timeout(WAIT, command.output())
        .await
        .expect("the command ends")
        .expect("run netbox-outbox")
}

async fn cli(db: &TestDb, args: &[&str]) -> Output {
    cli_env(args, &[("DATABASE_URL", &db.url())]).await
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn database_unreachable_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/netbox");
    let o = cli_env(&["run"], &[("DATABASE_URL", &url)]).await;
    assert_eq!(o.status.code(), Some(4), "{}", err(&o));
    let e = err(&o);
    assert!(
        e.contains(&format!(
            "could not connect to PostgreSQL at postgres@127.0.0.1:{port}/netbox"
        )),
        "{e}"
    );
    assert!(e.contains("check DATABASE_URL"), "{e}");
    assert!(e.contains("is PostgreSQL running"), "{e}");
    let help = cli_env(&["--help"], &[]).await;
    assert!(
        out(&help).contains("4 database unreachable"),
        "--help documents the exit codes: {}",
        out(&help)
    );
}

/// The password cannot be wrong on the trust-authenticated test server, so the test uses a role
/// the server refuses; both give the role and what to check.
#[tokio::test]
async fn wrong_password_or_role() {
    let db = TestDb::migrated().await;
    let url = db.url().replace("postgres@", "no_such_role:pw-xyzzy@");
    let o = cli_env(&["run"], &[("DATABASE_URL", &url)]).await;
    assert_eq!(o.status.code(), Some(4), "{}", err(&o));
    let e = err(&o);
    assert!(e.contains("role \"no_such_role\""), "{e}");
    assert!(e.contains("check the user name and password"), "{e}");
    assert!(!e.contains("xyzzy"), "the password is never printed: {e}");
}

/// A TCP proxy in front of PostgreSQL that the test can cut (every connection dropped, new ones
/// refused) and restore: the database lost and back, without touching the shared server.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    live: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let refused = Arc::new(AtomicUsize::new(0));
        let live: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (u, r, l) = (up.clone(), refused.clone(), live.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    r.fetch_add(1, Ordering::SeqCst);
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy {
            port,
            up,
            refused,
            live,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.live.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The database lost mid-run: the sidecar keeps trying (it never exits) and, once the database
/// is back, delivers what was committed meanwhile.
#[tokio::test]
async fn database_lost_mid_run() {
    let scene = scene().await;
    let proxy = Proxy::start().await;
    let through = Database::parse(
        &scene
            .db
            .url()
            .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port)),
    )
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone();
    let sidecar = tokio::spawn(netbox_outbox::sidecar::run(
        test_config(""),
        through,
        async move { signal.cancelled().await },
    ));
    scene.site_delivers("before").await;
    proxy.cut();
    insert_site(&scene.client, "during").await;
    eventually("the sidecar to keep trying", WAIT, || async {
        (proxy.refused.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    assert!(!sidecar.is_finished(), "the sidecar does not give up");
    proxy.restore();
    eventually(
        "the change made while the database was away",
        WAIT,
        || async {
            scene
                .receiver
                .received()
                .iter()
                .any(|r| r.json()["data"]["name"] == "during")
                .then_some(())
        },
    )
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(WAIT, sidecar).await;
}

// ---- configuration files -------------------------------------------------------------------

fn config_file(toml: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("nbo-bad-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, toml).unwrap();
    path
}

/// `run` with this config file: exits 3 before touching the database, stderr holding each
/// fragment.
async fn config_refused(toml: &str, env: &[(&str, &str)], expected: &[&str]) {
    let path = config_file(toml);
    let mut vars = vec![("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")];
    vars.extend_from_slice(env);
    let o = cli_env(&["run", "--config", path.to_str().unwrap()], &vars).await;
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    for fragment in expected {
        assert!(
            err(&o).contains(fragment),
            "{fragment:?} missing from {}",
            err(&o)
        );
    }
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn config_with_an_unknown_key() {
    config_refused(
        "[delivery]\nconcurency = 3\n",
        &[],
        &[
            "unknown key `concurency` in [delivery]",
            "did you mean `concurrency`",
            "valid keys: concurrency, per_webhook_concurrency",
        ],
    )
    .await;
}

#[tokio::test]
async fn config_with_a_bad_duration() {
    config_refused(
        "[delivery]\npoll_interval = \"5 parsecs\"\n",
        &[],
        &[
            "delivery.poll_interval: \"5 parsecs\" is not a duration",
            "500ms, 30s, 5m, 2h or 1d",
        ],
    )
    .await;
}

#[tokio::test]
async fn config_with_a_zero_poll_interval() {
    config_refused(
        "[assembly]\npoll_interval = \"0s\"\n",
        &[],
        &["assembly.poll_interval: must be more than zero"],
    )
    .await;
}

#[tokio::test]
async fn config_with_conflicting_options() {
    config_refused(
        "[delivery]\nconcurrency = 4\nper_webhook_concurrency = 8\n",
        &[],
        &["delivery.per_webhook_concurrency: 8 exceeds delivery.concurrency (4)"],
    )
    .await;
    // two sources for the database, disagreeing: which one is meant is anyone's guess
    config_refused(
        "",
        &[(
            "NETBOX_OUTBOX_DATABASE_URL",
            "postgres://other@127.0.0.1:1/x",
        )],
        &[
            "database_url",
            "DATABASE_URL",
            "NETBOX_OUTBOX_DATABASE_URL",
            "set only one",
        ],
    )
    .await;
}

// ---- event rules -------------------------------------------------------------------------------

/// A running sidecar binary whose log goes to a file.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(db: &TestDb, toml: &str) -> Running {
        let config = config_file(toml);
        let log = std::env::temp_dir().join(format!("nbo-log-{}.txt", uuid::Uuid::new_v4()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_netbox-outbox"))
            .args(["run", "--config"])
            .arg(&config)
            .env("DATABASE_URL", db.url())
            .env("NETBOX_OUTBOX_LOG__LEVEL", "warn")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the sidecar binary");
        Running { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

const FAST: &str = "[delivery]\npoll_interval = \"50ms\"\nretry_schedule = [\"200ms\"]\nretry_jitter = 0.0\n\
                    [assembly]\npoll_interval = \"50ms\"\n[rules]\nrefresh_interval = \"0s\"\n\
                    [metrics]\nlisten = \"\"\n";

/// Event rule rows NetBox's UI would never save (NULL event_types, a netbox-outbox action type
/// that does not exist, action data that is not an object): each is skipped with one log line
/// naming it; the other rules load and deliver.
#[tokio::test]
async fn bad_event_rule_rows_are_skipped() {
    let scene = scene().await;
    let client = &scene.client;
    client
        .batch_execute("alter table extras_eventrule alter column event_types drop not null")
        .await
        .unwrap();
    let hook = webhook(client, "other", &scene.receiver.url("/other"), &[]).await;
    let null_events = Rule::to_webhook("null events", hook)
        .create(client)
        .await
        .rule;
    client
        .execute(
            "update extras_eventrule set event_types = null where id = $1",
            &[&null_events],
        )
        .await
        .unwrap();
    let typo = Rule::to_webhook("typo", hook).create(client).await.rule;
    client
        .execute(
            "update extras_eventrule set action_type = 'netbox_outbox.webhok' where id = $1",
            &[&typo],
        )
        .await
        .unwrap();
    Rule::to_webhook("odd data", hook)
        .action_data("'\"text\"'")
        .create(client)
        .await
        .rule;
    let running = Running::start(&scene.db, FAST);
    scene.site_delivers("alpha").await;
    eventually("the rule with odd action data to deliver", WAIT, || async {
        scene
            .receiver
            .received()
            .iter()
            .any(|r| r.path == "/other")
            .then_some(())
    })
    .await;
    let log = eventually("the skipped rules' log lines", WAIT, || async {
        let log = running.log();
        (log.contains("null events") && log.contains("typo")).then_some(log)
    })
    .await;
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("event rule skipped"))
        .collect();
    assert_eq!(lines.len(), 2, "one line per bad rule: {log}");
    let null_line = lines.iter().find(|l| l.contains("null events")).unwrap();
    assert!(null_line.contains("event_types"), "{null_line}");
    let typo_line = lines.iter().find(|l| l.contains("typo")).unwrap();
    assert!(
        typo_line.contains("netbox_outbox.webhok") && typo_line.contains("netbox_outbox.webhook"),
        "{typo_line}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal: {log:?}"
    );
    drop(running);
}

/// A rejection's log line names the webhook, rule and field but never the rendered URL (which
/// may carry a token); the delivery row keeps the detail.
#[tokio::test]
async fn rejection_logs_hold_no_url_tokens() {
    let scene = scene().await;
    scene
        .bad(
            "ftp://127.0.0.1/hook?token=TOPSECRET{{ data.id }}",
            &[],
            "null",
        )
        .await;
    let running = Running::start(&scene.db, FAST);
    scene.site_delivers("alpha").await;
    let d = scene.finished("bad").await;
    assert_eq!(d.state, "rejected");
    assert!(
        d.error.contains("TOPSECRET"),
        "the row keeps the detail: {}",
        d.error
    );
    let log = eventually("the rejection's log line", WAIT, || async {
        let log = running.log();
        log.contains("delivery rejected").then_some(log)
    })
    .await;
    assert!(!log.contains("TOPSECRET"), "{log}");
    assert!(log.contains("payload_url") && log.contains("bad"), "{log}");
    assert!(
        log.contains("netbox_outbox.failed"),
        "the line says where the detail is: {log}"
    );
}

// ---- check -------------------------------------------------------------------------------------

/// `check --offline` names each misconfiguration that can be found before delivery, and exits 5.
#[tokio::test]
async fn check_catches_each_misconfiguration() {
    let scene = scene().await;
    let client = &scene.client;
    let not_a_cert = std::env::temp_dir().join(format!("not-a-cert-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&not_a_cert, "nope\n").unwrap();
    let not_a_cert = format!("'{}'", not_a_cert.display());
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "t-parse",
            "http://127.0.0.1:1/",
            vec![("body_template", "'{% if %}'")],
            "body_template does not parse",
        ),
        (
            "t-undefined",
            "http://127.0.0.1:1/",
            vec![("body_template", "'{{ nothing.here }}'")],
            "nothing.here",
        ),
        (
            "u-scheme",
            "ftp://127.0.0.1/x",
            vec![],
            "unsupported scheme",
        ),
        ("u-invalid", "http://exa mple/", vec![], "not a valid URL"),
        (
            "ca-missing",
            "https://127.0.0.1:1/",
            vec![("ca_file_path", "'/nonexistent/ca.pem'")],
            "cannot read it",
        ),
        (
            "ca-invalid",
            "https://127.0.0.1:1/",
            vec![("ca_file_path", &not_a_cert)],
            "no PEM certificate",
        ),
        (
            "h-colon",
            "http://127.0.0.1:1/",
            vec![("additional_headers", "'X-Token abc'")],
            "line 1 has no colon",
        ),
        (
            "h-control",
            "http://127.0.0.1:1/",
            vec![("additional_headers", "E'X-A: b\\x07'")],
            "control character",
        ),
    ];
    for (name, url, extra, _) in &cases {
        Rule::new(name, url)
            .webhook_columns(extra)
            .create(client)
            .await;
    }
    let good: i64 = client
        .query_one("select id from extras_webhook where name = 'good'", &[])
        .await
        .unwrap()
        .get(0);
    Rule::to_webhook("c-operator", good)
        .conditions(r#"'{"attr": "name", "op": "neq", "value": 1}'"#)
        .create(client)
        .await
        .rule;
    Rule::to_webhook("c-shape", good)
        .conditions("'[1, 2]'")
        .create(client)
        .await
        .rule;
    let dangling = Rule::to_webhook("dangling", good).create(client).await.rule;
    client
        .execute(
            "update extras_eventrule set action_object_id = 999999 where id = $1",
            &[&dangling],
        )
        .await
        .unwrap();
    let typo = Rule::to_webhook("typo", good).create(client).await.rule;
    client
        .execute(
            "update extras_eventrule set action_type = 'netbox_outbox.webhok' where id = $1",
            &[&typo],
        )
        .await
        .unwrap();

    let o = cli(&scene.db, &["check", "--offline"]).await;
    assert_eq!(o.status.code(), Some(5), "{}{}", out(&o), err(&o));
    let text = out(&o);
    let problems: Vec<&str> = text.lines().filter(|l| l.starts_with("PROBLEM")).collect();
    for (name, _, _, expected) in &cases {
        assert!(
            problems
                .iter()
                .any(|l| l.contains(&format!("webhook \"{name}\"")) && l.contains(expected)),
            "{name}: {expected:?} not reported as a problem:\n{text}"
        );
    }
    for (rule_name, expected) in [
        ("c-operator", "unknown operator \"neq\""),
        ("c-shape", "must be a JSON object"),
        ("dangling", "webhook 999999, which does not exist"),
        ("typo", "netbox_outbox.webhok"),
    ] {
        assert!(
            problems.iter().any(|l| l.contains(&format!("event rule \"{rule_name}\"")) && l.contains(expected)),
            "{rule_name}: {expected:?} not reported as a problem:\n{text}"
        );
    }

    // configuration errors end check before the database, with the configuration's exit code
    let path = config_file("[delivery]\nretry_schedule = [\"5s\", \"soon\"]\n");
    let o = cli(&scene.db, &["check", "--config", path.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    assert!(
        err(&o).contains("delivery.retry_schedule[1]: \"soon\" is not a duration"),
        "{}",
        err(&o)
    );
    let _ = std::fs::remove_file(path);
}

// ---- after the fix ------------------------------------------------------------------------------

/// A delivery rejected for a bad template is not lost: after the webhook is fixed,
/// `replay --rerender` renders it again from the object as it stands now, and it goes out.
#[tokio::test]
async fn rejected_delivery_is_sent_after_the_fix() {
    let mut scene = scene().await;
    let hook = scene.receiver.url("/bad");
    let bad = scene
        .bad(
            &hook,
            &[("body_template", "'{{ data.name | nosuchfilter }}'")],
            "null",
        )
        .await;
    scene.start();
    scene.site_delivers("alpha").await;
    let d = scene.finished("bad").await;
    assert_eq!(d.state, "rejected");
    scene
        .client
        .execute(
            "update extras_webhook set body_template = '{{ event }} {{ data.name }}' where id = $1",
            &[&bad],
        )
        .await
        .unwrap();
    // replay copies frozen requests: a rejected delivery has none, so plain replay finds nothing
    let plain = cli(&scene.db, &["replay", "--delivery", &d.id.to_string()]).await;
    assert!(
        out(&plain).contains("0 deliveries replayed"),
        "{}{}",
        out(&plain),
        err(&plain)
    );
    let o = cli(
        &scene.db,
        &["replay", "--rerender", "--delivery", &d.id.to_string()],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("1 deliveries re-rendered"), "{}", out(&o));
    let got = eventually("the re-rendered request", WAIT, || async {
        scene
            .receiver
            .received()
            .into_iter()
            .find(|r| r.path == "/bad")
    })
    .await;
    assert_eq!(String::from_utf8_lossy(&got.body), "created alpha");
    eventually("the re-rendered delivery to be recorded", WAIT, || async {
        let state: String = scene
            .client
            .query_one(
                "select state from netbox_outbox.delivery where replay_of = $1",
                &[&d.id],
            )
            .await
            .unwrap()
            .get(0);
        (state == "delivered").then_some(())
    })
    .await;
    scene.stop().await;
}

/// A batch that fails every time (here: the read position's table is missing) backs off further
/// each time, up to the cap, instead of retrying at full speed; once the cause is fixed, delivery
/// resumes.
#[tokio::test]
async fn a_batch_that_keeps_failing_backs_off_further() {
    let scene = scene().await;
    scene
        .client
        .batch_execute("alter table netbox_outbox.cursor rename to cursor_away")
        .await
        .unwrap();
    let running = Running::start(&scene.db, FAST);
    let delays = eventually("four failed batches", WAIT, || async {
        let delays: Vec<u64> = running
            .log()
            .lines()
            .filter(|l| l.contains("processing a batch of changes failed"))
            .filter_map(|l| {
                let (_, rest) = l.split_once("retry_in_ms=")?;
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        (delays.len() >= 4).then_some(delays)
    })
    .await;
    assert!(
        delays.windows(2).all(|w| w[1] > w[0] || w[1] == 5000),
        "the backoff grows: {delays:?}"
    );
    assert!(
        running.log().contains("cursor"),
        "the log line holds the cause: {}",
        running.log()
    );
    scene
        .client
        .batch_execute("alter table netbox_outbox.cursor_away rename to cursor")
        .await
        .unwrap();
    scene.site_delivers("after").await;
    drop(running);
}

/// Deliveries rejected because the rule's webhook was deleted are sent once the rule points at a
/// webhook again: `replay --rerender` follows the rule to its current webhook.
#[tokio::test]
async fn rejected_for_a_deleted_webhook_is_sent_after_the_rule_is_repointed() {
    let mut scene = scene().await;
    let hook = scene.receiver.url("/old");
    let old = scene.bad(&hook, &[], "null").await;
    scene
        .client
        .execute("delete from extras_webhook where id = $1", &[&old])
        .await
        .unwrap();
    scene.start();
    scene.site_delivers("alpha").await;
    let d = scene.finished("bad").await;
    assert_eq!(d.state, "rejected");
    let new = webhook(&scene.client, "new", &scene.receiver.url("/new"), &[]).await;
    scene
        .client
        .execute(
            "update extras_eventrule set action_object_id = $1 where name = 'bad'",
            &[&new],
        )
        .await
        .unwrap();
    let o = cli(
        &scene.db,
        &["replay", "--rerender", "--webhook", &old.to_string()],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    let got = eventually("the re-rendered request", WAIT, || async {
        scene
            .receiver
            .received()
            .into_iter()
            .find(|r| r.path == "/new")
    })
    .await;
    assert_eq!(got.json()["data"]["name"], "alpha");
    assert_eq!(got.json()["event"], "created");
    scene.stop().await;
}
