//! The heads of the per-object queues (migration V9): claims that cost what they return, deep
//! queues delivered in order by several sidecars, and what releases or blocks a queue.

use std::collections::HashMap;
use std::time::Duration;

use netbox_outbox::commands::receive::{Receiver, Reply};
use tokio_postgres::Client;

use crate::support::db::{TestDb, content_type, insert_site};
use crate::support::rules::{Rule, webhook};
use crate::support::sidecar::{Sidecar, test_config};
use crate::support::wait::eventually;

const WAIT: Duration = Duration::from_secs(60);

/// Queues pending deliveries straight into the outbox, each with a request to nowhere: `rows`
/// is a query of (event id, webhook id, webhook name, object id, seq), in insertion order.
async fn queue(client: &Client, rows: &str) {
    client
        .batch_execute(&format!(
            "insert into netbox_outbox.delivery (event_id, event_rule_id, event_rule_name, webhook_id,
                 webhook_name, content_type_id, object_id, seq, timeout_ms, ssl_verification)
             select q.e, 1, 'r', q.w, q.wn, 7, q.o, q.s, 10000, true from ({rows}) as q(e, w, wn, o, s);
             insert into netbox_outbox.request (delivery_id, method, url, headers, body)
             select d.id, 'POST', 'http://127.0.0.1:1/', '[]', ''
             from netbox_outbox.delivery d
             where not exists (select from netbox_outbox.request r where r.delivery_id = d.id);
             analyze netbox_outbox.delivery;"
        ))
        .await
        .unwrap();
}

/// Waits until no delivery is pending.
async fn all_recorded(client: &Client) {
    eventually("every outcome recorded", WAIT, || async {
        let pending: i64 = client
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

/// Makes this session's statistics visible to others now, not at its next report.
async fn flush_stats(client: &Client) {
    client
        .batch_execute("select pg_stat_force_next_flush()")
        .await
        .unwrap();
}

/// Index tuples read so far in schema netbox_outbox, by every session (flushed by the caller).
async fn index_tuples_read(client: &Client) -> i64 {
    index_counter(client, "idx_tup_read", "pg_stat_user_indexes").await
}

/// Index blocks touched so far in schema netbox_outbox, by every session (flushed by the caller).
async fn index_blocks_touched(client: &Client) -> i64 {
    index_counter(
        client,
        "idx_blks_hit + idx_blks_read",
        "pg_statio_user_indexes",
    )
    .await
}

/// The sum of a statistics view's `counter` over schema netbox_outbox's indexes.
async fn index_counter(client: &Client, counter: &str, view: &str) -> i64 {
    client
        .batch_execute("select pg_stat_clear_snapshot()")
        .await
        .unwrap();
    client
        .query_one(
            &format!(
                "select coalesce(sum({counter}), 0)::bigint from {view}
                 where schemaname = 'netbox_outbox'"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Claims with `quota` in `claimer`'s session; returns the claimed ids and the index tuples the
/// claim read.
async fn claim_measured(claimer: &Client, observer: &Client, quota: i64) -> (Vec<i64>, i64) {
    flush_stats(claimer).await;
    let before = index_tuples_read(observer).await;
    let ids: Vec<i64> = claimer
        .query(
            "select id from netbox_outbox.claim(array[1]::bigint[], array[$1]::bigint[], 60000, gen_random_uuid())",
            &[&quota],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    flush_stats(claimer).await;
    (ids, index_tuples_read(observer).await - before)
}

/// 400 pending deliveries for each of 51 objects (the backlog of issue 12): a claim reads about
/// what it returns, not the 20,400 pending, both when the heads are free and when every head is
/// in flight; finishing the heads makes each object's next delivery its head.
#[tokio::test]
async fn a_claim_reads_only_the_heads_it_returns() {
    let db = TestDb::migrated().await;
    let claimer = db.client().await;
    let observer = db.client().await;
    queue(
        &claimer,
        "select n * 51 + o, 1, 'w', o, n * 51 + o
         from generate_series(0, 399) n, generate_series(1, 51) o order by n, o",
    )
    .await;

    let (first, read) = claim_measured(&claimer, &observer, 100).await;
    assert_eq!(first.len(), 51, "one head per object");
    assert!(read < 1_000, "a claim of 51 read {read} index tuples");

    let (none, read) = claim_measured(&claimer, &observer, 100).await;
    assert!(none.is_empty(), "every head is leased: {none:?}");
    assert!(
        read < 1_000,
        "a claim finding every head in flight read {read} index tuples"
    );

    claimer
        .batch_execute(
            "update netbox_outbox.delivery set state = 'delivered', finished_at = now(),
                 leased_by = null, leased_until = '-infinity'
             where leased_by is not null",
        )
        .await
        .unwrap();
    let (second, read) = claim_measured(&claimer, &observer, 100).await;
    let expected: Vec<i64> = claimer
        .query(
            "select min(id) from netbox_outbox.delivery where state = 'pending'
             group by object_id order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut second_sorted = second.clone();
    second_sorted.sort();
    assert_eq!(
        second_sorted, expected,
        "each object's second delivery is its head"
    );
    assert!(read < 1_000, "the next claim read {read} index tuples");
}

/// The descriptions each site's webhooks carried, in the order they arrived.
fn by_site(receiver: &Receiver) -> HashMap<String, Vec<String>> {
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for r in receiver.received() {
        let body = r.json();
        seen.entry(body["data"]["name"].as_str().unwrap_or("").to_string())
            .or_default()
            .push(
                body["data"]["description"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            );
    }
    seen
}

/// The (webhook, site) queue's head delivery, if the queue has one.
async fn head_of(client: &Client, webhook_id: i64, site: i64) -> Option<i64> {
    let site_type = content_type(client, "dcim.site").await;
    client
        .query_opt(
            "select delivery_id from netbox_outbox.queue_head
             where webhook_id = $1 and content_type_id = $2 and object_id = $3",
            &[&webhook_id, &site_type, &site],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Deep queues (50 updates of each of 6 sites, all queued before any sidecar runs) drained by
/// three sidecars: each site's webhooks arrive in commit order, each delivery once, and no head
/// is left behind.
#[tokio::test]
async fn deep_queues_go_out_in_order_with_several_sidecars() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(&client, "crm", &receiver.url("/hook"), &[]).await;
    Rule::to_webhook("updates", hook)
        .models(&["dcim.site"])
        .events(&["object_updated"])
        .create(&client)
        .await;
    let sites = ["s1", "s2", "s3", "s4", "s5", "s6"];
    for name in sites {
        insert_site(&client, name).await;
    }
    for n in 1..=50 {
        client
            .batch_execute(&format!(
                "update dcim_site set description = name || '-{n}'"
            ))
            .await
            .unwrap();
    }
    let config = "[delivery]\nconcurrency = 4\n";
    let sidecars: Vec<Sidecar> = (0..3)
        .map(|_| Sidecar::start(&db, test_config(config)))
        .collect();
    let got = receiver.wait_for(300, WAIT).await.unwrap();
    assert_eq!(got.len(), 300);
    let seen = by_site(&receiver);
    for name in sites {
        let expected: Vec<String> = (1..=50).map(|n| format!("{name}-{n}")).collect();
        assert_eq!(seen[name], expected, "{name}'s webhooks in commit order");
    }
    let mut ids: Vec<&str> = got
        .iter()
        .map(|r| r.header("x-netbox-outbox-delivery").unwrap_or(""))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 300, "each delivery sent once");
    all_recorded(&client).await;
    let heads: i64 = client
        .query_one("select count(*) from netbox_outbox.queue_head", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(heads, 0, "nothing pending, no head left");
    for sidecar in sidecars {
        sidecar.stop().await;
    }
}

/// A head that is retrying holds back only its own object: site a's first webhook fails again
/// and again (its attempts logged, the queue's head still it), while site b's and an unrelated
/// webhook's deliveries all go out meanwhile.
#[tokio::test]
async fn a_retrying_head_blocks_only_its_own_object() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let unrelated = Receiver::start().await.unwrap();
    let hook = webhook(&client, "crm", &receiver.url("/hook/{{ data.name }}"), &[]).await;
    let other = webhook(&client, "other", &unrelated.url("/other"), &[]).await;
    Rule::to_webhook("crm", hook)
        .models(&["dcim.site"])
        .events(&["object_updated"])
        .create(&client)
        .await;
    Rule::to_webhook("other", other)
        .models(&["dcim.site"])
        .events(&["object_updated"])
        .create(&client)
        .await;
    let a = insert_site(&client, "a").await;
    insert_site(&client, "b").await;
    receiver.script_path("/hook/a", std::iter::repeat_n(Reply::Status(500), 1000));
    for n in 1..=3 {
        client
            .batch_execute(&format!("update dcim_site set description = name || '{n}'"))
            .await
            .unwrap();
    }
    let sidecar = Sidecar::start(
        &db,
        test_config(
            "[delivery]\nretry_schedule = [\"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\"]\n",
        ),
    );
    unrelated.wait_for(6, WAIT).await.unwrap();
    eventually(
        "b's three webhooks and three failed attempts for a",
        WAIT,
        || async {
            let seen = by_site(&receiver);
            (seen.get("b").map_or(0, Vec::len) == 3 && seen.get("a").map_or(0, Vec::len) >= 3)
                .then_some(())
        },
    )
    .await;
    // the receiver saw them; their outcomes are recorded just after
    eventually("three failed attempts for a logged", WAIT, || async {
        let logged: i64 = client
            .query_one(
                "select count(*) from netbox_outbox.attempt t
                 join netbox_outbox.delivery d on d.id = t.delivery_id
                 where d.webhook_id = $1 and d.object_id = $2 and t.status = 500",
                &[&hook, &a],
            )
            .await
            .unwrap()
            .get(0);
        (logged >= 3).then_some(())
    })
    .await;
    let seen = by_site(&receiver);
    assert_eq!(seen["b"], ["b1", "b2", "b3"]);
    assert!(
        seen["a"].iter().all(|d| d == "a1"),
        "only a's first webhook was tried: {:?}",
        seen["a"]
    );
    let rows = client
        .query(
            "select d.id, d.state, d.attempts, d.last_status,
                    (select count(*) from netbox_outbox.attempt t where t.delivery_id = d.id and t.status = 500),
                    (select count(*) from netbox_outbox.attempt t where t.delivery_id = d.id)
             from netbox_outbox.delivery d where d.webhook_id = $1 and d.object_id = $2 order by d.seq",
            &[&hook, &a],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let (head, state, last_status, failures): (i64, String, Option<i32>, i64) = (
        rows[0].get(0),
        rows[0].get(1),
        rows[0].get(3),
        rows[0].get(4),
    );
    assert_eq!(state, "pending", "a1 is still being retried");
    assert_eq!(last_status, Some(500));
    assert!(failures >= 3, "each failed attempt is logged: {failures}");
    // Never sent: no attempt logged. (`attempts` counts leases: a claim may take a2 and a3 in
    // a run behind a1's retry and release them, unsent, when a1 fails.)
    for later in &rows[1..] {
        assert_eq!(later.get::<_, i64>(5), 0, "a2 and a3 wait behind a1");
    }
    assert_eq!(
        head_of(&client, hook, a).await,
        Some(head),
        "a1 is a's head"
    );
    sidecar.stop().await;
}

/// A dead head and a rejected delivery both let the next one go: a1 fails until it is dead, a2
/// is rejected (its template fails for it alone), a3 is delivered; an unrelated webhook is
/// delivered meanwhile.
#[tokio::test]
async fn dead_and_rejected_heads_release_the_next() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let unrelated = Receiver::start().await.unwrap();
    let template = "'{% if data.description == \"a2\" %}{{ data.nosuch.field }}{% endif %}{\"d\": \"{{ data.description }}\"}'";
    let hook = webhook(
        &client,
        "crm",
        &receiver.url("/hook/{{ data.name }}"),
        &[("body_template", template)],
    )
    .await;
    let other = webhook(&client, "other", &unrelated.url("/other"), &[]).await;
    Rule::to_webhook("crm", hook)
        .models(&["dcim.site"])
        .events(&["object_updated"])
        .create(&client)
        .await;
    Rule::to_webhook("other", other)
        .models(&["dcim.site"])
        .events(&["object_updated"])
        .create(&client)
        .await;
    let a = insert_site(&client, "a").await;
    receiver.script_path("/hook/a", [Reply::Status(500), Reply::Status(500)]);
    for n in 1..=3 {
        client
            .batch_execute(&format!("update dcim_site set description = 'a{n}'"))
            .await
            .unwrap();
    }
    let sidecar = Sidecar::start(
        &db,
        test_config("[delivery]\nretry_schedule = [\"100ms\"]\n"),
    );
    unrelated.wait_for(3, WAIT).await.unwrap();
    let got = receiver.wait_for(3, WAIT).await.unwrap();
    let bodies: Vec<String> = got
        .iter()
        .map(|r| r.json()["d"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        bodies,
        ["a1", "a1", "a3"],
        "a1 tried twice, a2 never, then a3"
    );
    let states: Vec<(String, Option<String>)> = eventually("a3 recorded", WAIT, || async {
        let rows = client
            .query(
                "select state, last_error from netbox_outbox.delivery
                 where webhook_id = $1 and object_id = $2 order by seq",
                &[&hook, &a],
            )
            .await
            .unwrap();
        let states: Vec<(String, Option<String>)> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        (states.last().map(|s| s.0.as_str()) == Some("delivered")).then_some(states)
    })
    .await;
    assert_eq!(states[0].0, "dead");
    assert_eq!(states[1].0, "rejected");
    assert!(
        states[1]
            .1
            .as_deref()
            .unwrap_or("")
            .contains("data.nosuch.field"),
        "{:?}",
        states[1]
    );
    let failed: i64 = client
        .query_one(
            "select count(*) from netbox_outbox.failed where webhook_name = 'crm'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        failed, 2,
        "the dead and the rejected delivery are visible in failed"
    );
    assert_eq!(head_of(&client, hook, a).await, None, "a's queue is empty");
    sidecar.stop().await;
}

/// Replaying a dead delivery puts the copy at the end of its object's queue: queued while the
/// webhook is paused, a2 and a3 go out before the replayed a1.
#[tokio::test]
async fn a_replayed_delivery_joins_the_end_of_its_queue() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(&client, "crm", &receiver.url("/hook"), &[]).await;
    Rule::to_webhook("crm", hook)
        .models(&["dcim.site"])
        .events(&["object_updated"])
        .create(&client)
        .await;
    let a = insert_site(&client, "a").await;
    receiver.script([Reply::Status(500), Reply::Status(500)]);
    let sidecar = Sidecar::start(
        &db,
        test_config("[delivery]\nretry_schedule = [\"100ms\"]\n"),
    );
    client
        .batch_execute("update dcim_site set description = 'a1'")
        .await
        .unwrap();
    let dead: i64 = eventually("a1 dead", WAIT, || async {
        client
            .query_opt(
                "select id from netbox_outbox.delivery where webhook_id = $1 and state = 'dead'",
                &[&hook],
            )
            .await
            .unwrap()
            .map(|r| r.get(0))
    })
    .await;
    client
        .batch_execute("select netbox_outbox.pause_webhook('crm')")
        .await
        .unwrap();
    for description in ["a2", "a3"] {
        client
            .execute("update dcim_site set description = $1", &[&description])
            .await
            .unwrap();
    }
    let a2: i64 = eventually("a2 and a3 queued", WAIT, || async {
        let rows = client
            .query(
                "select id from netbox_outbox.delivery where webhook_id = $1 and state = 'pending'
                 order by seq",
                &[&hook],
            )
            .await
            .unwrap();
        (rows.len() == 2).then(|| rows[0].get(0))
    })
    .await;
    client
        .execute("select netbox_outbox.replay(delivery_id => $1)", &[&dead])
        .await
        .unwrap();
    assert_eq!(
        head_of(&client, hook, a).await,
        Some(a2),
        "a2 stays a's head"
    );
    client
        .batch_execute("select netbox_outbox.resume_webhook('crm')")
        .await
        .unwrap();
    let got = receiver.wait_for(5, WAIT).await.unwrap();
    let order: Vec<String> = got[2..]
        .iter()
        .map(|r| {
            r.json()["data"]["description"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(order, ["a2", "a3", "a1"], "the replay goes out last");
    sidecar.stop().await;
}

/// Claims a run of each queue: each head with up to `run_length - 1` deliveries right behind
/// it, in queue order, cut before the first one that is not due, is leased, or is locked by
/// another transaction, and no more in all than the claim's limit; what a claim reads stays
/// about what it returns.
#[tokio::test]
async fn a_claim_leases_a_run_of_each_queue_in_order() {
    let db = TestDb::migrated().await;
    let claimer = db.client().await;
    let observer = db.client().await;
    let mut locker = db.client().await;
    // 10 pending deliveries for each of objects 1-4, interleaved as commits would be, and
    // 5,000 of another webhook, which the claim must not read
    queue(
        &claimer,
        "select n * 4 + o, 1, 'w', o, n * 4 + o
         from generate_series(0, 9) n, generate_series(1, 4) o order by n, o",
    )
    .await;
    queue(
        &claimer,
        "select 100 + o, 2, 'other', o, 100 + o from generate_series(1, 5000) o",
    )
    .await;
    claimer
        .batch_execute(
            "-- object 2: its 4th delivery is not due yet (as after a reschedule by hand)
             update netbox_outbox.delivery set next_attempt_at = now() + interval '1 hour'
              where object_id = 2 and seq = 3 * 4 + 2;
             -- object 3: its 3rd delivery is leased to another sidecar
             update netbox_outbox.delivery set leased_until = now() + interval '1 hour',
                    leased_by = gen_random_uuid()
              where object_id = 3 and seq = 2 * 4 + 3;",
        )
        .await
        .unwrap();
    // object 4: its 2nd delivery is locked by another transaction
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute(
        "select 1 from netbox_outbox.delivery where object_id = 4 and seq = 1 * 4 + 4 for update",
    )
    .await
    .unwrap();

    flush_stats(&claimer).await;
    let before = index_tuples_read(&observer).await;
    let rows = claimer
        .query(
            "select d.object_id, d.seq, c.head_id, c.run_position
             from netbox_outbox.claim_runs(array[1]::bigint[], array[10]::bigint[], array[6]::bigint[],
                                           1000, 60000, gen_random_uuid()) c
             join netbox_outbox.delivery d using (id)",
            &[],
        )
        .await
        .unwrap();
    flush_stats(&claimer).await;
    let read = index_tuples_read(&observer).await - before;
    lock.rollback().await.unwrap();

    let mut runs: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
    let mut heads: HashMap<i64, i64> = HashMap::new();
    for r in &rows {
        let object: i64 = r.get(0);
        runs.entry(object)
            .or_default()
            .push((r.get::<_, i64>(1), r.get::<_, i64>(3)));
        assert_eq!(
            *heads.entry(object).or_insert(r.get(2)),
            r.get::<_, i64>(2),
            "one run per object"
        );
    }
    let seqs =
        |object: i64, n: i64| -> Vec<(i64, i64)> { (0..n).map(|k| (k * 4 + object, k)).collect() };
    assert_eq!(
        runs[&1],
        seqs(1, 6),
        "object 1: its head and the 5 behind it"
    );
    assert_eq!(
        runs[&2],
        seqs(2, 3),
        "object 2: cut before the delivery not due"
    );
    assert_eq!(
        runs[&3],
        seqs(3, 2),
        "object 3: cut before the leased delivery"
    );
    assert_eq!(
        runs[&4],
        seqs(4, 1),
        "object 4: cut before the locked delivery"
    );
    assert!(read < 200, "a claim of 12 read {read} index tuples");

    // what the claim leased and counted is exactly what it returned
    let leased: i64 = claimer
        .query_one(
            "select count(*) from netbox_outbox.delivery
             where attempts = 1 and leased_by is not null and webhook_id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leased, 12);

    // the claim's limit is shared among the heads it found: 9 over 3 queues, 3 each
    queue(
        &claimer,
        "select 10000 + n * 3 + o, 3, 'third', o, 10000 + n * 3 + o
         from generate_series(0, 9) n, generate_series(1, 3) o order by n, o",
    )
    .await;
    let per_head: Vec<i64> = claimer
        .query(
            "select count(*) from netbox_outbox.claim_runs(array[3]::bigint[], array[10]::bigint[],
                 array[10]::bigint[], 9, 60000, gen_random_uuid())
             group by head_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(per_head, [3, 3, 3]);
}

/// A run is sent strictly one after another: with 12 updates of two sites queued, some of each
/// site's webhooks go out before the one before them was recorded (a run, no claim between
/// them), and when one fails the rest of its run waits: site a's third webhook fails once and
/// is retried before a4 is sent, and a4 onwards were given back their attempt.
#[tokio::test]
async fn a_run_goes_out_in_order_and_a_failure_ends_it() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(&client, "crm", &receiver.url("/hook/{{ data.name }}"), &[]).await;
    Rule::to_webhook("crm", hook)
        .models(&["dcim.site"])
        .events(&["object_updated"])
        .create(&client)
        .await;
    let a = insert_site(&client, "a").await;
    let b = insert_site(&client, "b").await;
    receiver.script_path(
        "/hook/a",
        [Reply::Status(200), Reply::Status(200), Reply::Status(500)],
    );
    for n in 1..=12 {
        client
            .batch_execute(&format!("update dcim_site set description = name || '{n}'"))
            .await
            .unwrap();
    }
    let sidecar = Sidecar::start(
        &db,
        test_config("[delivery]\nrun_length = 8\nretry_schedule = [\"100ms\"]\n"),
    );
    receiver.wait_for(25, WAIT).await.unwrap();
    let seen = by_site(&receiver);
    let expected = |site: &str, n: std::ops::RangeInclusive<i32>| -> Vec<String> {
        n.map(|k| format!("{site}{k}")).collect()
    };
    assert_eq!(
        seen["b"],
        expected("b", 1..=12),
        "b's webhooks in commit order"
    );
    let mut a_expected = expected("a", 1..=3);
    a_expected.extend(expected("a", 3..=12));
    assert_eq!(
        seen["a"], a_expected,
        "a3 failed once and was retried before a4 went out"
    );
    all_recorded(&client).await;
    let attempts: Vec<i32> = client
        .query(
            "select attempts from netbox_outbox.delivery where object_id = $1 order by seq",
            &[&a],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut a_attempts = vec![1; 12];
    a_attempts[2] = 2;
    assert_eq!(attempts, a_attempts, "one attempt each, two for a3");
    // sent before the delivery ahead of it was recorded: only a run does that
    let early: i64 = client
        .query_one(
            "select count(*)
             from netbox_outbox.delivery d
             join netbox_outbox.attempt t on t.delivery_id = d.id
             join lateral (select p.finished_at from netbox_outbox.delivery p
                           where p.webhook_id = d.webhook_id and p.object_id = d.object_id
                             and p.seq < d.seq order by p.seq desc limit 1) p on true
             where d.object_id = $1 and t.started_at < p.finished_at",
            &[&b],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        early >= 1,
        "no webhook of b was sent before the one ahead of it was recorded"
    );
    sidecar.stop().await;
}

/// Object 1's queue head.
async fn first_head(client: &impl tokio_postgres::GenericClient) -> i64 {
    client
        .query_one(
            "select delivery_id from netbox_outbox.queue_head where object_id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Recording a run's outcomes moves its queue's head past all of them at once (record_batch()
/// refreshes each queue once, the row trigger standing aside), and the row trigger is back for
/// the rest of the transaction: a delivery finished by hand right after moves the head again.
#[tokio::test]
async fn recording_a_run_moves_the_head_past_it() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    queue(
        &client,
        "select n, 1, 'w', 1, n from generate_series(1, 6) n",
    )
    .await;
    let ids: Vec<i64> = client
        .query("select id from netbox_outbox.delivery order by seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(first_head(&client).await, ids[0]);
    let sidecar = uuid::Uuid::new_v4();
    let tx = client.transaction().await.unwrap();
    let run: Vec<i64> = tx
        .query(
            "select id from netbox_outbox.claim_runs(array[1]::bigint[], array[1]::bigint[],
                 array[3]::bigint[], 100, 60000, $1)",
            &[&sidecar],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(run, ids[0..3]);
    tx.execute(
        "select netbox_outbox.record($1, array[1, 1, 1], array[5, 3, 1]::bigint[], array[1, 1, 1],
             array[200, 200, 200], array[null, null, null]::text[], array[null, null, null]::text[],
             array['delivered', 'delivered', 'delivered'], array[null, null, null]::bigint[],
             array[null, null, null]::timestamptz[], 0, $2)",
        &[&run, &sidecar],
    )
    .await
    .unwrap();
    assert_eq!(first_head(&tx).await, ids[3], "past the recorded run");
    tx.execute(
        "update netbox_outbox.delivery set state = 'dead', finished_at = now() where id = $1",
        &[&ids[3]],
    )
    .await
    .unwrap();
    assert_eq!(
        first_head(&tx).await,
        ids[4],
        "the row trigger moved it again"
    );
    tx.commit().await.unwrap();
    assert_eq!(first_head(&client).await, ids[4]);
}

/// The assembler inserts deliveries in a REPEATABLE READ transaction. When the recorder has
/// locked a queue's head to empty the queue (as `refresh_queue_head()` does) and the insert
/// waits for that lock, the head it waited for is gone once the recorder commits: the insert
/// gives the queue a new head (V19) rather than failing with "could not serialize access due
/// to concurrent delete" and taking the assembler's whole batch with it.
#[tokio::test]
async fn a_head_deleted_under_a_repeatable_read_insert_is_made_again() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    queue(&client, "select 1, 1, 'w', 1, 1").await;
    let first: i64 = first_head(&client).await;

    // The recorder: locks the head, as refresh_queue_head() does before it looks.
    let mut recorder = db.client().await;
    let recording = recorder.transaction().await.unwrap();
    recording
        .execute(
            "select 1 from netbox_outbox.queue_head where object_id = 1 for update",
            &[],
        )
        .await
        .unwrap();

    // The assembler: a REPEATABLE READ transaction that queues a second delivery of object 1.
    let assembler = db.client().await;
    let pid: i32 = assembler
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let inserting = tokio::spawn(async move {
        assembler
            .batch_execute(
                "begin isolation level repeatable read;
                 select count(*) from netbox_outbox.delivery;
                 insert into netbox_outbox.delivery (event_id, event_rule_id, event_rule_name,
                     webhook_id, webhook_name, content_type_id, object_id, seq, timeout_ms,
                     ssl_verification)
                 values (2, 1, 'r', 1, 'w', 7, 1, 2, 10000, true);
                 commit;",
            )
            .await
            .map_err(|e| netbox_outbox::error_chain(&e))?;
        Ok::<_, String>(assembler)
    });
    eventually("the insert to wait for the head", WAIT, || async {
        let waiting: bool = client
            .query_one(
                "select coalesce(bool_or(wait_event_type = 'Lock'), false) from pg_stat_activity where pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        waiting.then_some(())
    })
    .await;

    // The recorder delivers the only pending delivery: the queue is empty, its head deleted.
    recording
        .execute(
            "update netbox_outbox.delivery set state = 'delivered', finished_at = now() where id = $1",
            &[&first],
        )
        .await
        .unwrap();
    assert_eq!(
        recording
            .query_one("select count(*) from netbox_outbox.queue_head", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    recording.commit().await.unwrap();

    let assembler = inserting.await.unwrap().expect("the insert commits");
    let second: i64 = assembler
        .query_one("select id from netbox_outbox.delivery where seq = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        first_head(&client).await,
        second,
        "the new delivery heads its queue"
    );
}

/// Statistics that lag the backlog, as between two ANALYZEs while it grows: the outbox
/// analyzed when one delivery was pending (and its queue had the only head), autovacuum kept
/// away from it.
async fn analyzed_with_one_delivery(client: &Client) {
    client
        .batch_execute(
            "alter table netbox_outbox.delivery set (autovacuum_enabled = false);
             alter table netbox_outbox.queue_head set (autovacuum_enabled = false);",
        )
        .await
        .unwrap();
    queue(client, "select 1, 1, 'w', 1, 1").await;
    client
        .batch_execute("analyze netbox_outbox.queue_head")
        .await
        .unwrap();
}

/// A backlog that grew after the outbox was last analyzed (statistics that say one delivery is
/// pending, 3,001 are, 2,000 of them in flight): a claim still reads the heads first, from their
/// index, and each delivery by its key (V20). Otherwise the planner scanned the pending
/// deliveries again for each head it walked (measured in a drain: 256,559 buffers, 1.99 s).
#[tokio::test]
async fn a_claim_reads_the_heads_first_whatever_the_statistics_say() {
    let db = TestDb::migrated().await;
    let claimer = db.client().await;
    let observer = db.client().await;
    analyzed_with_one_delivery(&claimer).await;
    claimer
        .batch_execute(
            "insert into netbox_outbox.delivery (event_id, event_rule_id, event_rule_name, webhook_id,
                 webhook_name, content_type_id, object_id, seq, timeout_ms, ssl_verification)
             select o, 1, 'r', 1, 'w', 7, o, o, 10000, true from generate_series(2, 3001) o;
             insert into netbox_outbox.request (delivery_id, method, url, headers, body)
             select d.id, 'POST', 'http://127.0.0.1:1/', '[]', ''
             from netbox_outbox.delivery d
             where not exists (select from netbox_outbox.request r where r.delivery_id = d.id);
             -- the first 2,000 heads in flight, as during a drain
             update netbox_outbox.delivery set leased_until = now() + interval '1 hour'
             where object_id <= 2000;",
        )
        .await
        .unwrap();

    flush_stats(&claimer).await;
    let before = index_blocks_touched(&observer).await;
    let claimed: Vec<i64> = claimer
        .query(
            "select id from netbox_outbox.claim_runs(array[1]::bigint[], array[10]::bigint[],
                 array[1]::bigint[], 10, 60000, gen_random_uuid())",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    flush_stats(&claimer).await;
    let touched = index_blocks_touched(&observer).await - before;
    assert_eq!(claimed.len(), 10, "ten heads claimed: {claimed:?}");
    // V20: about 5,600 (the 2,000 heads in flight are walked, each with one key probe);
    // driven from the deliveries, 72,000 and 1.8 s
    assert!(
        touched < 20_000,
        "a claim of 10 free heads behind 2,000 in flight touched {touched} index blocks"
    );
}

/// Recording outcomes moves their queues' heads, found from each outcome's delivery by its key
/// (V21), whatever the statistics say. Analyzed with one head, then 3,000 queues of 10: with
/// V20's join the planner walked every head and probed the deliveries for each, twice per call
/// (14,880 index blocks for 100 outcomes; V21: 3,328).
#[tokio::test]
async fn recorded_outcomes_find_their_heads_by_key_whatever_the_statistics_say() {
    let db = TestDb::migrated().await;
    let recorder = db.client().await;
    let observer = db.client().await;
    analyzed_with_one_delivery(&recorder).await;
    recorder
        .batch_execute(
            "insert into netbox_outbox.delivery (event_id, event_rule_id, event_rule_name, webhook_id,
                 webhook_name, content_type_id, object_id, seq, timeout_ms, ssl_verification)
             select o, 1, 'r', 1, 'w', 7, 2 + o % 3000, o, 10000, true from generate_series(2, 30001) o;
             -- 100 heads leased by one sidecar, as a claim leaves them
             update netbox_outbox.delivery
                set leased_until = now() + interval '1 hour', attempts = 1,
                    leased_by = '00000000-0000-0000-0000-000000000001'
              where id in (select id from netbox_outbox.delivery where id > 1 order by id limit 100);",
        )
        .await
        .unwrap();

    flush_stats(&recorder).await;
    let before = index_blocks_touched(&observer).await;
    recorder
        .batch_execute(
            "select netbox_outbox.record_batch(
                 (select array_agg(id order by id) from netbox_outbox.delivery where leased_by is not null),
                 array_fill(1, array[100]), array_fill(5::bigint, array[100]),
                 array_fill(1, array[100]), array_fill(200, array[100]),
                 array_fill(null::text, array[100]), array_fill(null::text, array[100]),
                 array_fill('delivered'::text, array[100]), array_fill(null::bigint, array[100]),
                 array_fill(null::timestamptz, array[100]), 1000,
                 '00000000-0000-0000-0000-000000000001')",
        )
        .await
        .unwrap();
    flush_stats(&recorder).await;
    let touched = index_blocks_touched(&observer).await - before;

    let (delivered, heads): (i64, i64) = {
        let row = observer
            .query_one(
                "select (select count(*) from netbox_outbox.delivery where state = 'delivered'),
                        (select count(*) from netbox_outbox.queue_head)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(delivered, 100, "the 100 outcomes recorded");
    assert_eq!(
        heads, 3001,
        "every queue keeps a head (each had more behind the recorded one)"
    );
    // V21: 3,328; V20's walk of every head: 14,880
    assert!(
        touched < 8_000,
        "recording 100 outcomes among 3,001 queues touched {touched} index blocks"
    );
}
