//! Nothing is lost: rejected deliveries sent after the fix, and backoff while a batch keeps failing.

use super::*;

/// A delivery rejected for a bad template is not lost: after the webhook is fixed,
/// `replay --rerender` renders it again from the object as it stands now, and it goes out with
/// the rejected delivery's id; the rejected one becomes `replayed` and is not re-rendered twice.
#[tokio::test]
async fn rejected_delivery_is_sent_after_the_fix() {
    let mut scene = scene().await;
    let (bad, d) = scene.rejected_for_a_bad_template().await;
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
    let got = scene.re_rendered("/bad").await;
    assert_eq!(String::from_utf8_lossy(&got.body), "created alpha");
    // the receiver sees the rejected delivery's id; the rejected one is replayed, once
    assert_eq!(
        got.header("x-netbox-outbox-delivery"),
        Some(d.id.to_string().as_str())
    );
    let original: String = scene
        .client
        .query_one(
            "select state from netbox_outbox.delivery where id = $1",
            &[&d.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(original, "replayed");
    let again = cli(
        &scene.db,
        &["replay", "--rerender", "--delivery", &d.id.to_string()],
    )
    .await;
    assert!(
        out(&again).contains("0 deliveries re-rendered"),
        "{}",
        out(&again)
    );
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

/// `replay --rerender --webhook` names the webhook as `replay` does (its current name, or its
/// id): a webhook fixed and renamed is found by its new name, its rejected delivery goes out.
#[tokio::test]
async fn rejected_delivery_is_re_rendered_by_its_webhooks_new_name() {
    let mut scene = scene().await;
    let (bad, _) = scene.rejected_for_a_bad_template().await;
    scene
        .client
        .execute(
            "update extras_webhook set name = 'fixed', body_template = '{{ data.name }}' \
             where id = $1",
            &[&bad],
        )
        .await
        .unwrap();
    let o = cli(&scene.db, &["replay", "--rerender", "--webhook", "fixed"]).await;
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("1 deliveries re-rendered"), "{}", out(&o));
    let got = scene.re_rendered("/bad").await;
    assert_eq!(String::from_utf8_lossy(&got.body), "alpha");
    scene.stop().await;
}

/// `replay --rerender` with a model NetBox does not have is a usage error naming it (as for
/// `replay`), not an empty selection that looks like "nothing to do"; the rejected delivery
/// stays for a corrected call.
#[tokio::test]
async fn rerender_of_an_unknown_model_names_it() {
    let mut scene = scene().await;
    scene.rejected_for_a_bad_template().await;
    let o = cli(
        &scene.db,
        &["replay", "--rerender", "--object", "dcim.sitee:1"],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}{}", out(&o), err(&o));
    assert!(
        err(&o).contains("dcim.sitee is not a NetBox model"),
        "{}",
        err(&o)
    );
    assert_eq!(
        scene.finished("bad").await.state,
        "rejected",
        "nothing is lost"
    );
    scene.site_delivers("beta").await;
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
    let running = SidecarBinary::start(&scene.db, &config_file(FAST));
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
    let got = scene.re_rendered("/new").await;
    assert_eq!(got.json()["data"]["name"], "alpha");
    assert_eq!(got.json()["event"], "created");
    scene.stop().await;
}
