//! Bounded batches: a backlog larger than `assembly.batch_changes` is read in several batches,
//! each event still showing its object as of its own transaction's commit, one transaction's
//! changes still merging into one event per object, and each object's events in commit order
//! even where transaction ids and commit order disagree.

use std::collections::BTreeMap;

use netbox_outbox::commands::receive::Receiver;
use serde_json::{Value, json};

use crate::support::db::{TestDb, content_type, insert_site};
use crate::support::rules::{Rule, webhook};
use crate::support::sidecar::{Sidecar, test_config};
use crate::support::wait::exactly;

struct Setup {
    db: TestDb,
    client: tokio_postgres::Client,
    receiver: Receiver,
}

/// A database with a rule sending every site event to a receiver; no sidecar runs yet, so
/// everything committed before [`drain`] is a backlog.
async fn setup() -> Setup {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(&client, "crm", &receiver.url("/hook"), &[]).await;
    Rule::to_webhook("sites", hook)
        .models(&["dcim.site"])
        .create(&client)
        .await;
    Setup {
        db,
        client,
        receiver,
    }
}

/// Starts a sidecar reading `batch_changes` changes per batch, waits for exactly `n` webhooks,
/// and returns their bodies per site id, in the order they arrived, and how many batch
/// transactions wrote events.
async fn drain(s: &Setup, batch_changes: usize, n: usize) -> (BTreeMap<i64, Vec<Value>>, i64) {
    let sidecar = Sidecar::start(
        &s.db,
        test_config(&format!("[assembly]\nbatch_changes = {batch_changes}\n")),
    );
    let got = exactly(&s.receiver, &s.client, n).await;
    sidecar.stop().await;
    let mut by_site: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
    for request in got {
        let body = request.json();
        let id = body["data"]["id"].as_i64().expect("data.id");
        by_site.entry(id).or_default().push(body);
    }
    // Events written by one batch share its transaction id (xmin).
    let batches: i64 = s
        .client
        .query_one(
            "select count(distinct xmin::text) from netbox_outbox.event",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (by_site, batches)
}

fn description(body: &Value, snapshot: &str) -> Value {
    body["snapshots"][snapshot]["description"].clone()
}

/// After an outage: 3 sites and 30 committed updates (some with a tag) read 3 changes at a
/// time. Every update arrives, in order per site, each showing the site as its own commit left
/// it, although later transactions changed the site again before the batch was read.
#[tokio::test]
async fn a_backlog_larger_than_a_batch_arrives_in_order_as_of_each_commit() {
    let s = setup().await;
    let site_ct = content_type(&s.client, "dcim.site").await;
    s.client
        .batch_execute("insert into extras_tag (name, slug, weight) values ('gold', 'gold', 10)")
        .await
        .unwrap();
    let mut sites = Vec::new();
    for name in ["s0", "s1", "s2"] {
        sites.push(insert_site(&s.client, name).await);
    }
    for round in 0..30 {
        let site = sites[round % 3];
        let tag = if round == 13 {
            format!(
                "insert into extras_taggeditem (object_id, content_type_id, tag_id) values ({site}, {site_ct}, 1);"
            )
        } else if round == 22 {
            format!("delete from extras_taggeditem where object_id = {site};")
        } else {
            String::new()
        };
        s.client
            .batch_execute(&format!(
                "begin;
                 update dcim_site set description = 'round {round}', last_updated = now() where id = {site};
                 {tag}
                 commit;"
            ))
            .await
            .unwrap();
    }

    let (by_site, batches) = drain(&s, 3, 33).await;
    assert!(
        batches >= 5,
        "33 events over 36 changes, 3 changes per batch, came from {batches} batch transactions"
    );
    for (i, site) in sites.iter().enumerate() {
        let bodies = &by_site[site];
        assert_eq!(bodies.len(), 11, "site {i}: a create and 10 updates");
        assert_eq!(bodies[0]["event"], "created");
        let mut previous = description(&bodies[0], "postchange");
        for (k, body) in bodies[1..].iter().enumerate() {
            let round = i + 3 * k;
            assert_eq!(body["event"], "updated");
            assert_eq!(
                description(body, "postchange"),
                json!(format!("round {round}")),
                "site {i}, update {k}: as its own commit left it"
            );
            assert_eq!(body["data"]["description"], json!(format!("round {round}")));
            assert_eq!(
                description(body, "prechange"),
                previous,
                "site {i}, update {k}: prechange is the previous postchange"
            );
            previous = description(body, "postchange");
            // Site 1 is tagged in round 13 and untagged in round 22.
            let tagged = i == 1 && (13..22).contains(&round);
            let expected = if tagged { json!(["gold"]) } else { json!([]) };
            assert_eq!(
                body["snapshots"]["postchange"]["tags"], expected,
                "site {i}, round {round}: tags as of the commit"
            );
        }
    }
}

/// One transaction larger than a batch is read whole: its six updates of one site are one
/// event, from the first prechange to the last postchange, and a later transaction that
/// changed the site again (read in the next batch) does not leak into it.
#[tokio::test]
async fn a_transaction_larger_than_a_batch_is_one_event_per_object() {
    let s = setup().await;
    let site = insert_site(&s.client, "big").await;
    let mut statements = String::from("begin;");
    for n in 1..=6 {
        statements.push_str(&format!(
            "update dcim_site set description = 'step {n}', last_updated = now() where id = {site};"
        ));
    }
    statements.push_str(
        "insert into dcim_site (name, slug) values ('x1', 'x1'), ('x2', 'x2'), ('x3', 'x3'); commit;",
    );
    s.client.batch_execute(&statements).await.unwrap();
    s.client
        .batch_execute(&format!(
            "update dcim_site set description = 'later', last_updated = now() where id = {site}"
        ))
        .await
        .unwrap();

    let (by_site, batches) = drain(&s, 1, 6).await;
    assert!(
        batches >= 3,
        "3 transactions, 1 change per batch: {batches} batches"
    );
    let bodies = &by_site[&site];
    assert_eq!(
        bodies.len(),
        3,
        "created, one merged update, the later update"
    );
    assert_eq!(bodies[1]["event"], "updated");
    assert_eq!(description(&bodies[1], "prechange"), json!(""));
    assert_eq!(description(&bodies[1], "postchange"), json!("step 6"));
    assert_eq!(bodies[1]["data"]["description"], json!("step 6"));
    assert_eq!(description(&bodies[2], "prechange"), json!("step 6"));
    assert_eq!(description(&bodies[2], "postchange"), json!("later"));
}

/// Transaction ids are handed out at a transaction's first write, not at its commit: here the
/// older transaction (t1) changes each site after a younger one (t2) did and committed. A batch
/// that ends between the two must not send t1's change before t2's.
#[tokio::test]
async fn a_younger_transaction_that_committed_first_is_sent_first() {
    let s = setup().await;
    let first = s.db.client().await;
    let second = s.db.client().await;
    let mut sites = Vec::new();
    for round in 0..8 {
        let other = insert_site(&s.client, &format!("other-{round}")).await;
        let site = insert_site(&s.client, &format!("site-{round}")).await;
        sites.push(site);
        first
            .batch_execute(&format!(
                "begin; update dcim_site set description = 't1 first', last_updated = now() where id = {other};"
            ))
            .await
            .unwrap();
        second
            .batch_execute(&format!(
                "begin; update dcim_site set description = 'by t2', last_updated = now() where id = {site}; commit;"
            ))
            .await
            .unwrap();
        first
            .batch_execute(&format!(
                "update dcim_site set description = 'by t1', last_updated = now() where id = {site}; commit;"
            ))
            .await
            .unwrap();
    }

    let (by_site, _) = drain(&s, 1, 8 * 5).await;
    for (round, site) in sites.iter().enumerate() {
        let order: Vec<Value> = by_site[site]
            .iter()
            .map(|b| description(b, "postchange"))
            .collect();
        assert_eq!(
            order,
            vec![json!(""), json!("by t2"), json!("by t1")],
            "round {round}: commit order"
        );
    }
}
