//! Configuration changing under the sidecar: webhooks deleted, rules disabled, tables recreated or truncated.

use super::*;

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

/// A running scene whose "bad" webhook is paused with one delivery pending; its id.
async fn bad_one_pending() -> (Scene, i64) {
    let mut scene = scene().await;
    let hook = scene.receiver.url("/bad");
    let bad = scene.bad(&hook, &[], "null").await;
    pause_bad(&scene.client).await;
    scene.start();
    scene.site_delivers("alpha").await;
    assert_eq!(scene.deliveries("bad").await[0].state, "pending");
    (scene, bad)
}

/// A webhook deleted while its delivery is pending: the frozen request still goes out (NetBox
/// pickles the webhook into its job); later events for its rule are rejected, saying what to do.
#[tokio::test]
async fn webhook_deleted_while_deliveries_are_pending() {
    let (mut scene, bad) = bad_one_pending().await;
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
    let (mut scene, bad) = bad_one_pending().await;
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
