//! End to end: changes in the database become NetBox webhooks at a real HTTP receiver.

use std::time::Duration;

use netbox_outbox::commands::receive::{Receiver, Reply};

use crate::support::db::{TestDb, insert_site};
use crate::support::rules::{Rule, webhook};
use crate::support::sidecar::{Sidecar, test_config};
use crate::support::wait::exactly;

const WAIT: Duration = Duration::from_secs(15);

/// A site created, updated and deleted with plain SQL gives created, updated and deleted
/// webhooks with NetBox's envelope, data and snapshots, signed.
#[tokio::test]
async fn create_update_delete_reach_the_receiver() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(
        &client,
        "crm",
        &receiver.url("/hook"),
        &[("secret", "'s3cret'")],
    )
    .await;
    Rule::to_webhook("sites", hook).create(&client).await;
    let sidecar = Sidecar::start(&db, test_config(""));

    let id = insert_site(&client, "alpha").await;
    client
        .execute(
            "update dcim_site set description = 'edge', last_updated = now() where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    client
        .execute("delete from dcim_site where id = $1", &[&id])
        .await
        .unwrap();

    let got = exactly(&receiver, &client, 3).await;
    let bodies: Vec<serde_json::Value> = got.iter().map(|r| r.json()).collect();
    assert_eq!(
        bodies
            .iter()
            .map(|b| b["event"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["created", "updated", "deleted"]
    );
    for (r, b) in got.iter().zip(&bodies) {
        assert!(
            r.signature_valid("s3cret"),
            "signature of {} {} (delivery {:?}): {}",
            r.method,
            r.path,
            r.header("x-netbox-outbox-delivery"),
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(b["object_type"], "dcim.site");
        assert_eq!(b["data"]["id"], id);
        assert_eq!(b["data"]["url"], format!("/api/dcim/sites/{id}/"));
        assert_eq!(b["data"]["display"], "alpha");
        let keys: Vec<&String> = b.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "event",
                "timestamp",
                "object_type",
                "data",
                "request",
                "snapshots"
            ]
        );
        assert!(r.header("x-netbox-outbox-delivery").is_some());
    }
    assert_eq!(bodies[0]["snapshots"]["prechange"], serde_json::Value::Null);
    assert_eq!(bodies[0]["snapshots"]["postchange"]["name"], "alpha");
    assert_eq!(bodies[1]["snapshots"]["prechange"]["description"], "");
    assert_eq!(bodies[1]["snapshots"]["postchange"]["description"], "edge");
    assert_eq!(bodies[1]["data"]["description"], "edge");
    assert_eq!(
        bodies[2]["snapshots"]["postchange"],
        serde_json::Value::Null
    );
    assert_eq!(bodies[2]["data"]["description"], "edge");
    sidecar.stop().await;
}

/// A receiver answering 503 then 200 gets the same request twice; the delivery log shows both.
#[tokio::test]
async fn a_failed_attempt_is_retried_with_the_same_body() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    receiver.script([Reply::Status(503)]);
    let hook = webhook(&client, "crm", &receiver.url("/hook"), &[]).await;
    Rule::to_webhook("sites", hook).create(&client).await;
    let sidecar = Sidecar::start(&db, test_config(""));
    insert_site(&client, "alpha").await;
    let got = exactly(&receiver, &client, 2).await;
    assert_eq!(got[0].body, got[1].body);
    assert_eq!(
        got[0].header("x-netbox-outbox-delivery"),
        got[1].header("x-netbox-outbox-delivery")
    );
    crate::support::wait::eventually("the delivery to be recorded as delivered", WAIT, || async {
        let row = client
            .query_opt("select state, attempts, (select count(*) from netbox_outbox.attempt) from netbox_outbox.delivery", &[])
            .await
            .unwrap()?;
        let (state, attempts, logged): (String, i32, i64) = (row.get(0), row.get(1), row.get(2));
        (state == "delivered" && attempts == 2 && logged == 2).then_some(())
    })
    .await;
    sidecar.stop().await;
}

/// A receiver that never answers 2xx: every attempt of the (short) schedule is made, then the
/// delivery is dead, with its reason; the log holds every attempt.
#[tokio::test]
async fn a_receiver_that_never_succeeds_ends_dead() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    receiver.default_reply(Reply::Status(500));
    let hook = webhook(&client, "crm", &receiver.url("/hook"), &[]).await;
    Rule::to_webhook("sites", hook).create(&client).await;
    let sidecar = Sidecar::start(&db, test_config(""));
    insert_site(&client, "alpha").await;
    let (attempts, error) = crate::support::wait::eventually("the delivery to die", WAIT, || async {
        let row = client
            .query_opt("select state, attempts, last_error, finished_at is not null from netbox_outbox.delivery", &[])
            .await
            .unwrap()?;
        let (state, attempts, error, finished): (String, i32, Option<String>, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        (state == "dead" && finished).then_some((attempts, error))
    })
    .await;
    assert_eq!(attempts, 3, "one attempt and two retries");
    assert_eq!(error.as_deref(), Some("HTTP 500"));
    assert_eq!(receiver.count(), 3);
    let logged: Vec<(i32, Option<i32>)> = client
        .query(
            "select attempt, status from netbox_outbox.attempt order by attempt",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(logged, [(1, Some(500)), (2, Some(500)), (3, Some(500))]);
    sidecar.stop().await;
}

/// A 429 with Retry-After is retried no sooner than asked, whatever the schedule says.
#[tokio::test]
async fn retry_after_is_honoured() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    receiver.script([Reply::WithHeaders(
        429,
        vec![("Retry-After".into(), "2".into())],
    )]);
    let hook = webhook(&client, "crm", &receiver.url("/hook"), &[]).await;
    Rule::to_webhook("sites", hook).create(&client).await;
    let sidecar = Sidecar::start(&db, test_config(""));
    insert_site(&client, "alpha").await;
    let got = exactly(&receiver, &client, 2).await;
    let waited = got[1].at.duration_since(got[0].at).unwrap();
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}, the schedule says 200ms"
    );
    sidecar.stop().await;
}

/// TLS: a private CA given in ca_file_path is trusted; without it, verification fails with a
/// clear error in the delivery log; with ssl_verification off, the request goes through.
#[tokio::test]
async fn tls_verification_and_private_cas() {
    use crate::support::tls::TlsReceiver;
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let tls = TlsReceiver::start(&db.name).await;
    let ca = tls.ca_file.display().to_string();
    let trusted = webhook(
        &client,
        "trusted",
        &tls.url("/trusted"),
        &[("ca_file_path", &format!("'{ca}'"))],
    )
    .await;
    let untrusted = webhook(&client, "untrusted", &tls.url("/untrusted"), &[]).await;
    let unverified = webhook(
        &client,
        "unverified",
        &tls.url("/unverified"),
        &[("ssl_verification", "false")],
    )
    .await;
    let missing = webhook(
        &client,
        "missing ca",
        &tls.url("/missing"),
        &[("ca_file_path", "'/nonexistent/ca.pem'")],
    )
    .await;
    for (name, hook) in [
        ("a", trusted),
        ("b", untrusted),
        ("c", unverified),
        ("d", missing),
    ] {
        Rule::to_webhook(name, hook)
            .events(&["object_created"])
            .create(&client)
            .await;
    }
    let sidecar = Sidecar::start(&db, test_config("[delivery]\nretry_schedule = [\"10s\"]\n"));
    insert_site(&client, "alpha").await;
    let got = tls.receiver.wait_for(2, WAIT).await.unwrap();
    let mut paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/trusted", "/unverified"]);
    let errors: Vec<(String, String)> = crate::support::wait::eventually("both failures to be logged", WAIT, || async {
        let rows = client
            .query(
                "select d.webhook_name, a.error from netbox_outbox.attempt a
                 join netbox_outbox.delivery d on d.id = a.delivery_id where a.error is not null order by 1",
                &[],
            )
            .await
            .unwrap();
        (rows.len() == 2).then(|| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    })
    .await;
    assert_eq!(errors[0].0, "missing ca");
    assert!(
        errors[0]
            .1
            .contains("ca_file_path /nonexistent/ca.pem: cannot read it"),
        "{errors:?}"
    );
    assert_eq!(errors[1].0, "untrusted");
    assert!(errors[1].1.contains("certificate"), "{errors:?}");
    sidecar.stop().await;
    std::fs::remove_file(&tls.ca_file).ok();
}

/// Poll-only mode (behind PgBouncer in transaction mode, where LISTEN does not work): no
/// notification is ever needed.
#[tokio::test]
async fn poll_only_mode_delivers() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(&client, "crm", &receiver.url("/hook"), &[]).await;
    Rule::to_webhook("sites", hook).create(&client).await;
    let sidecar = Sidecar::start(&db, test_config("[assembly]\nlisten = false\n"));
    insert_site(&client, "alpha").await;
    exactly(&receiver, &client, 1).await;
    let listeners: i64 = client
        .query_one("select count(*) from pg_stat_activity where datname = current_database() and query ilike 'listen%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(listeners, 0);
    sidecar.stop().await;
}
