//! Which changes become webhooks, merged how, matched by which rules, rendered how.

use std::time::Duration;

use netbox_outbox::commands::receive::Receiver;
use serde_json::{Value, json};

use crate::support::db::{TestDb, content_type, insert_site};
use crate::support::rules::{Rule, webhook};
use crate::support::sidecar::{Sidecar, test_config};
use crate::support::wait::{eventually, exactly};

const WAIT: Duration = Duration::from_secs(15);

struct Setup {
    db: TestDb,
    client: tokio_postgres::Client,
    receiver: Receiver,
    hook: i64,
}

async fn setup() -> Setup {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(&client, "crm", &receiver.url("/hook"), &[]).await;
    Setup {
        db,
        client,
        receiver,
        hook,
    }
}

/// The events the sidecar stored, as (object_type, object_id, event, deliveries).
async fn events(client: &tokio_postgres::Client) -> Vec<(String, i64, String, i32)> {
    client
        .query(
            "select object_type, object_id, event, deliveries from netbox_outbox.event order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Waits until the sidecar has read everything committed so far (the read cursor passed it).
async fn caught_up(client: &tokio_postgres::Client) {
    let target: String = client
        .query_one("select pg_current_snapshot()::text", &[])
        .await
        .unwrap()
        .get(0);
    eventually(
        "the sidecar to read every committed change",
        WAIT,
        || async {
            let done: bool = client
                .query_one(
                    "select pg_snapshot_xmax(snapshot) >= pg_snapshot_xmax($1::text::pg_snapshot)
                 from netbox_outbox.cursor where name = 'changes'",
                    &[&target],
                )
                .await
                .unwrap()
                .get(0);
            done.then_some(())
        },
    )
    .await;
}

/// NetBox reads the rules when a request ends, so a rule created while the sidecar runs applies
/// to the very next change, however long `rules.refresh_interval` is.
#[tokio::test]
async fn a_new_rule_applies_to_the_next_change() {
    let s = setup().await;
    let sidecar = Sidecar::start(&s.db, test_config("[rules]\nrefresh_interval = \"1h\"\n"));
    insert_site(&s.client, "before").await;
    caught_up(&s.client).await;
    // As NetBox's API does it: the rule and its object types in one transaction.
    s.client.batch_execute("begin").await.unwrap();
    Rule::to_webhook("new", s.hook).create(&s.client).await;
    s.client.batch_execute("commit").await.unwrap();
    let after = insert_site(&s.client, "after").await;
    // The site created before the rule sends nothing: only the one after it arrives.
    let got = exactly(&s.receiver, &s.client, 1).await;
    assert_eq!(got[0].json()["data"]["id"], json!(after));
    sidecar.stop().await;
}

/// NetBox's merge rules within one transaction: create+update is one create with the final
/// state; update+delete is a delete with the first prechange; a tag added after a save merges
/// into it; a tag alone is an update.
#[tokio::test]
async fn changes_in_one_transaction_merge_like_netbox() {
    let s = setup().await;
    Rule::to_webhook("sites", s.hook).create(&s.client).await;
    let site_ct = content_type(&s.client, "dcim.site").await;
    s.client
        .batch_execute("insert into extras_tag (name, slug, weight) values ('gold', 'gold', 10), ('bronze', 'bronze', 100)")
        .await
        .unwrap();
    let kept = insert_site(&s.client, "kept").await;
    let doomed = insert_site(&s.client, "doomed").await;
    let sidecar = Sidecar::start(&s.db, test_config(""));
    exactly(&s.receiver, &s.client, 2).await;

    // create then update, in one transaction
    s.client
        .batch_execute(
            "begin;
             insert into dcim_site (name, slug, last_updated) values ('fresh', 'fresh', now());
             update dcim_site set description = 'final' where slug = 'fresh';
             commit;",
        )
        .await
        .unwrap();
    // update then delete
    s.client
        .batch_execute(&format!(
            "begin; update dcim_site set status = 'planned' where id = {doomed}; delete from dcim_site where id = {doomed}; commit;"
        ))
        .await
        .unwrap();
    // a save, then a tag, in one transaction
    s.client
        .batch_execute(&format!(
            "begin;
             update dcim_site set description = 'tagged', last_updated = now() where id = {kept};
             insert into extras_taggeditem (object_id, content_type_id, tag_id) values ({kept}, {site_ct}, 1);
             commit;"
        ))
        .await
        .unwrap();
    // a tag alone
    s.client
        .batch_execute(&format!(
            "insert into extras_taggeditem (object_id, content_type_id, tag_id) values ({kept}, {site_ct}, 2)"
        ))
        .await
        .unwrap();

    let got = exactly(&s.receiver, &s.client, 6).await;
    let bodies: Vec<Value> = got[2..].iter().map(|r| r.json()).collect();
    let find = |name: &str, event: &str| {
        bodies
            .iter()
            .find(|b| b["event"] == event && (b["data"]["name"] == name))
            .unwrap_or_else(|| panic!("no {event} webhook for {name}: {bodies:?}"))
            .clone()
    };
    let fresh = find("fresh", "created");
    assert_eq!(fresh["snapshots"]["prechange"], Value::Null);
    assert_eq!(fresh["data"]["description"], "final");
    assert_eq!(fresh["snapshots"]["postchange"]["description"], "final");

    let gone = find("doomed", "deleted");
    assert_eq!(gone["snapshots"]["prechange"]["status"], "active");
    assert_eq!(gone["snapshots"]["postchange"], Value::Null);
    assert_eq!(gone["data"]["status"]["value"], "planned");

    let updates: Vec<&Value> = bodies
        .iter()
        .filter(|b| b["data"]["name"] == "kept")
        .collect();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0]["snapshots"]["prechange"]["tags"], json!([]));
    assert_eq!(
        updates[0]["snapshots"]["postchange"]["tags"],
        json!(["gold"])
    );
    assert_eq!(
        updates[0]["snapshots"]["postchange"]["description"],
        "tagged"
    );
    assert_eq!(
        updates[1]["snapshots"]["prechange"]["tags"],
        json!(["gold"])
    );
    assert_eq!(
        updates[1]["snapshots"]["postchange"]["tags"],
        json!(["bronze", "gold"])
    );
    // full tag objects in data, by weight then name
    let data_tags: Vec<&str> = updates[1]["data"]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(data_tags, ["gold", "bronze"]);
    assert_eq!(updates[1]["data"]["tags"][0]["url"], "/api/extras/tags/1/");
    sidecar.stop().await;
}

/// Counter caches and other NetBox-internal columns change without a webhook, in either mode.
#[tokio::test]
async fn updates_of_ignored_columns_are_not_events() {
    let s = setup().await;
    Rule::to_webhook("sites", s.hook).create(&s.client).await;
    let id = insert_site(&s.client, "alpha").await;
    s.client
        .batch_execute(
            "insert into netbox_outbox.ignored_column (table_pattern, column_pattern, reason)
             values ('dcim_site', 'facility', 'a test of the list as data')",
        )
        .await
        .unwrap();
    let sidecar = Sidecar::start(&s.db, test_config(""));
    exactly(&s.receiver, &s.client, 1).await;
    s.client
        .execute(
            "update dcim_site set facility = 'DC1' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    s.client
        .execute(
            "update dcim_site set description = description where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    s.client
        .execute(
            "update dcim_site set comments = 'real' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let got = exactly(&s.receiver, &s.client, 2).await;
    assert_eq!(got[1].json()["data"]["comments"], "real");
    let stored: Vec<_> = events(&s.client)
        .await
        .into_iter()
        .filter(|e| e.0 == "dcim.site")
        .collect();
    assert_eq!(
        stored.len(),
        2,
        "the ignored and the no-op updates are not events: {stored:?}"
    );
    sidecar.stop().await;
}

/// In `netbox` mode only what NetBox would send is sent: changes NetBox logged, and saves (which
/// move last_updated) in a NetBox transaction; not plain SQL nor NetBox's own QuerySet.update().
#[tokio::test]
async fn netbox_mode_sends_only_what_netbox_would() {
    let s = setup().await;
    Rule::to_webhook("sites", s.hook).create(&s.client).await;
    let site_ct = content_type(&s.client, "dcim.site").await;
    s.client
        .batch_execute(
            "update netbox_outbox.setting set value = 'netbox' where name = 'capture_mode'",
        )
        .await
        .unwrap();
    let sidecar = Sidecar::start(&s.db, test_config(""));
    let plain = insert_site(&s.client, "plain sql").await;
    // a NetBox request: the save, its change log row, an untracked .update() of another site,
    // and a save that changes nothing (no change log row, as NetBox skips empty changes)
    let other = insert_site(&s.client, "other").await;
    let quiet = insert_site(&s.client, "quiet").await;
    s.client
        .batch_execute(&format!(
            "begin;
             insert into dcim_site (name, slug, last_updated) values ('by netbox', 'n', now());
             insert into core_objectchange (time, user_name, request_id, action, changed_object_id, object_repr,
                 postchange_data, changed_object_type_id)
                 select now(), 'alice', 'aedca68e-cdd1-4580-88c6-b3c964bf65e7', 'create', id, name,
                        '{{\"name\": \"by netbox\"}}', {site_ct} from dcim_site where slug = 'n';
             update dcim_site set description = 'via update()' where id = {other};
             update dcim_site set last_updated = now() + interval '1 second' where id = {quiet};
             commit;"
        ))
        .await
        .unwrap();
    let got = exactly(&s.receiver, &s.client, 2).await;
    let mut bodies: Vec<Value> = got.iter().map(|r| r.json()).collect();
    bodies.sort_by_key(|b| b["event"].as_str().unwrap().to_string());
    let names: Vec<(&str, &str)> = bodies
        .iter()
        .map(|b| {
            (
                b["event"].as_str().unwrap(),
                b["data"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, [("created", "by netbox"), ("updated", "quiet")]);
    assert_eq!(
        bodies[0]["request"]["id"],
        "aedca68e-cdd1-4580-88c6-b3c964bf65e7"
    );
    assert_eq!(bodies[0]["request"]["user"], "alice");
    assert_eq!(
        bodies[1]["request"]["id"],
        "aedca68e-cdd1-4580-88c6-b3c964bf65e7"
    );
    let _ = (plain, other);
    sidecar.stop().await;
}

/// Rules fire in name order, one delivery each, conditions evaluated on data plus snapshots;
/// action_data keys come first; a malformed or invalid condition shows as a rejected delivery.
#[tokio::test]
async fn rules_match_like_netbox() {
    let s = setup().await;
    let second = webhook(&s.client, "second", &s.receiver.url("/second"), &[]).await;
    Rule::to_webhook("b-active only", s.hook)
        .events(&["object_created"])
        .conditions(r#"'{"attr": "status.value", "value": "active"}'"#)
        .action_data(r#"'{"zz": 1, "id": 999, "a": "first"}'"#)
        .create(&s.client)
        .await;
    Rule::to_webhook("a-all", second)
        .events(&["object_created"])
        .create(&s.client)
        .await;
    Rule::to_webhook("c-regex", s.hook).events(&["object_created"]).conditions(r#"'{"and": [{"attr": "name", "value": "ed", "op": "regex", "negate": true}, {"attr": "tags.slug", "value": [], "op": "eq"}]}'"#).create(&s.client).await;
    Rule::to_webhook("d-malformed", s.hook)
        .events(&["object_created"])
        .conditions(r#"'{"attr": "name"}'"#)
        .create(&s.client)
        .await;
    Rule::to_webhook("e-invalid", s.hook)
        .events(&["object_created"])
        .conditions(r#"'{"attr": "tenant.name", "value": "x"}'"#)
        .create(&s.client)
        .await;
    Rule::to_webhook("f-updates only", s.hook)
        .events(&["object_updated"])
        .create(&s.client)
        .await;
    let sidecar = Sidecar::start(&s.db, test_config(""));
    s.client
        .batch_execute("insert into dcim_site (name, slug, status) values ('edge', 'edge', 'active'), ('core', 'core', 'planned')")
        .await
        .unwrap();
    caught_up(&s.client).await;
    let deliveries: Vec<(String, String, String, Option<String>)> = s
        .client
        .query(
            "select d.event_rule_name, e.object_type || ':' || e.object_id, d.state, d.last_error
             from netbox_outbox.delivery d join netbox_outbox.event e on e.id = d.event_id order by d.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let rules: Vec<(&str, &str)> = deliveries
        .iter()
        .map(|d| (d.0.as_str(), d.1.as_str()))
        .collect();
    assert_eq!(
        rules,
        [
            ("a-all", "dcim.site:1"),
            ("b-active only", "dcim.site:1"),
            ("d-malformed", "dcim.site:1"),
            ("e-invalid", "dcim.site:1"),
            ("a-all", "dcim.site:2"),
            ("c-regex", "dcim.site:2"),
            ("d-malformed", "dcim.site:2"),
            ("e-invalid", "dcim.site:2"),
        ]
    );
    let malformed = deliveries.iter().find(|d| d.0 == "d-malformed").unwrap();
    assert_eq!(malformed.2, "rejected");
    assert!(
        malformed
            .3
            .as_deref()
            .unwrap()
            .contains("malformed conditions"),
        "{malformed:?}"
    );
    let invalid = deliveries.iter().find(|d| d.0 == "e-invalid").unwrap();
    assert_eq!(invalid.2, "rejected");
    assert!(
        invalid
            .3
            .as_deref()
            .unwrap()
            .contains("invalid key path: tenant.name"),
        "{invalid:?}"
    );

    let got = s.receiver.wait_for(4, WAIT).await.unwrap();
    let with_action_data = got
        .iter()
        .map(|r| r.json())
        .find(|b| b["data"].get("zz").is_some())
        .expect("the rule with action_data fired");
    let keys: Vec<&String> = with_action_data["data"]
        .as_object()
        .unwrap()
        .keys()
        .take(4)
        .collect();
    // jsonb key order (shorter keys first), the object's values winning without moving the key
    assert_eq!(keys, ["a", "id", "zz", "url"]);
    assert_eq!(with_action_data["data"]["id"], 1);
    sidecar.stop().await;
}

/// NetBox's own `webhook` rules are left to NetBox unless the setting says otherwise.
#[tokio::test]
async fn netbox_webhook_rules_only_when_enabled() {
    let s = setup().await;
    Rule::to_webhook("native", s.hook)
        .action_type("webhook")
        .create(&s.client)
        .await;
    let sidecar = Sidecar::start(&s.db, test_config(""));
    insert_site(&s.client, "alpha").await;
    caught_up(&s.client).await;
    assert_eq!(
        events(&s.client).await[0].3,
        0,
        "no delivery for a NetBox webhook rule by default"
    );
    sidecar.stop().await;

    let sidecar = Sidecar::start(
        &s.db,
        test_config("[rules]\ndeliver_netbox_webhook_rules = true\n"),
    );
    insert_site(&s.client, "beta").await;
    let got = s.receiver.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got[0].json()["data"]["name"], "beta");
    sidecar.stop().await;
}

/// body_template, a templated payload_url and additional headers render with NetBox's context
/// and rules: lines without a colon skipped, empty values kept, later duplicates win.
#[tokio::test]
async fn templates_headers_and_url() {
    let s = setup().await;
    Rule::new(
        "templated",
        &s.receiver.url("/hook/{{ object_type }}/{{ data.id }}"),
    )
    .webhook_columns(&[
        ("http_method", "'PUT'"),
        ("http_content_type", "'text/plain; charset=utf-8'"),
        ("additional_headers", "E'X-Event: {{ event }}\\nno colon\\nX-Empty:   \\nx-event: {{ event | upper }}\\nX-Name: {{ data.name | header_safe }}'"),
        ("body_template", "'{{ event }} {{ object_type }} {{ data.name }} {{ snapshots.prechange }} {{ username }}|{{ data | tojson }}'"),
        ("secret", "'k'"),
    ])
    .events(&["object_created"])
    .create(&s.client)
    .await;
    let sidecar = Sidecar::start(&s.db, test_config(""));
    let id = insert_site(&s.client, "alpha").await;
    let got = s.receiver.wait_for(1, WAIT).await.unwrap();
    let r = &got[0];
    assert_eq!(r.method, "PUT");
    assert_eq!(r.path, format!("/hook/dcim.site/{id}"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("x-event"), Some("CREATED"));
    assert_eq!(r.header("x-empty"), Some(""));
    assert_eq!(r.header("x-name"), Some("alpha"));
    assert!(r.signature_valid("k"));
    let body = String::from_utf8(r.body.clone()).unwrap();
    assert!(
        body.starts_with("created dcim.site alpha None |{\""),
        "{body}"
    );
    let json_part: Value = serde_json::from_str(body.split_once('|').unwrap().1).unwrap();
    assert_eq!(json_part["name"], "alpha");
    sidecar.stop().await;
}

/// A webhook edited after the event does not change the queued delivery: it was frozen when
/// the event was processed (NetBox freezes the webhook into its job too).
#[tokio::test]
async fn a_queued_delivery_is_frozen() {
    let s = setup().await;
    s.client
        .execute(
            "update extras_webhook set secret = 'old' where id = $1",
            &[&s.hook],
        )
        .await
        .unwrap();
    Rule::to_webhook("sites", s.hook).create(&s.client).await;
    s.client
        .batch_execute("select netbox_outbox.pause_webhook('crm')")
        .await
        .unwrap();
    let sidecar = Sidecar::start(&s.db, test_config(""));
    insert_site(&s.client, "alpha").await;
    caught_up(&s.client).await;
    let elsewhere = Receiver::start().await.unwrap();
    s.client
        .execute(
            "update extras_webhook set payload_url = $1, secret = 'new', body_template = 'changed' where id = $2",
            &[&elsewhere.url("/"), &s.hook],
        )
        .await
        .unwrap();
    s.client
        .batch_execute("select netbox_outbox.resume_webhook('crm')")
        .await
        .unwrap();
    let got = exactly(&s.receiver, &s.client, 1).await;
    assert!(got[0].signature_valid("old"));
    assert_eq!(got[0].json()["data"]["name"], "alpha");
    assert_eq!(elsewhere.count(), 0);
    sidecar.stop().await;
}

/// The older payload layout, for receivers written for NetBox before 4.5.
#[tokio::test]
async fn legacy_payload_format() {
    let s = setup().await;
    Rule::to_webhook("sites", s.hook).create(&s.client).await;
    let sidecar = Sidecar::start(
        &s.db,
        test_config("[delivery.payload_format_by_webhook]\ncrm = \"legacy\"\n"),
    );
    insert_site(&s.client, "alpha").await;
    let got = s.receiver.wait_for(1, WAIT).await.unwrap();
    let body = got[0].json();
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "event",
            "timestamp",
            "model",
            "username",
            "request_id",
            "data",
            "snapshots"
        ]
    );
    assert_eq!(body["model"], "site");
    assert_eq!(body["username"], "postgres");
    sidecar.stop().await;
}
