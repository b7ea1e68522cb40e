//! What the NetBox plugin's pages read and do (migration V13): views without secrets, the
//! reader's states, and NetBox's role granted exactly the views and the owner-rights actions.

use tokio_postgres::Client;

use crate::support::db::{TestDb, content_type};
use crate::support::rules::webhook;

/// One event and its delivery to `hook`, in `state` after `attempts` attempts, with a frozen
/// request that carries credentials; returns the delivery's id.
async fn delivery(client: &Client, hook: i64, object_id: i64, state: &str, attempts: i32) -> i64 {
    let site = content_type(client, "dcim.site").await;
    client
        .query_one(
            "with e as (
                 insert into netbox_outbox.event (txid, seq, content_type_id, object_type, object_id,
                     event, request_id, user_name, origin, committed_at, deliveries)
                 values (1, nextval('netbox_outbox.change_id_seq'), $1, 'dcim.site', $2, 'updated',
                         gen_random_uuid(), 'admin', 'netbox', now(), 1)
                 returning id, seq)
             , d as (
                 insert into netbox_outbox.delivery (event_id, event_rule_id, event_rule_name, webhook_id,
                     webhook_name, content_type_id, object_id, seq, state, timeout_ms, ssl_verification,
                     attempts, last_status, last_error, finished_at)
                 select e.id, 1, 'rule', $3, 'crm', $1, $2, e.seq, $4, 1000, true, $5,
                        case when $5 > 0 then 503 end,
                        case when $5 > 0 then 'HTTP 503 Service Unavailable' end,
                        case when $4 <> 'pending' then now() end
                 from e returning id)
             , r as (
                 insert into netbox_outbox.request (delivery_id, method, url, headers, body)
                 select d.id, 'POST', 'https://crm:hunter2@crm.example/hook?x=1',
                        '[[\"Content-Type\", \"application/json\"], [\"X-Hook-Signature\", \"abc123\"],
                          [\"Authorization\", \"Token s3cr3t\"], [\"X-Api-Key\", \"k3y\"]]'::jsonb,
                        convert_to('{\"event\": \"updated\"}', 'UTF8')
                 from d)
             select id from d",
            &[&site, &object_id, &hook, &state, &attempts],
        )
        .await
        .unwrap()
        .get(0)
}

/// NetBox's role, granted with grant_netbox(), reads the pages' views and acts through the ui_*
/// functions, and nothing else of ours: not the tables, not the unmasked requests, not replay()
/// or pause_webhook() themselves. A second grant_netbox() changes nothing.
#[tokio::test]
async fn netbox_role_reads_the_views_and_acts_only_through_the_functions() {
    let db = TestDb::migrated().await;
    let owner = db.client().await;
    let role = format!("nbo_netbox_{}", db.name);
    owner
        .batch_execute(&format!("create role {role} login"))
        .await
        .unwrap();
    let hook = webhook(&owner, "crm", "https://crm.example/hook", &[]).await;
    let dead = delivery(&owner, hook, 1, "dead", 3).await;
    // still being sent: never replayed from NetBox
    let pending = delivery(&owner, hook, 2, "pending", 0).await;

    let granted = owner
        .query("select * from netbox_outbox.grant_netbox($1)", &[&role])
        .await
        .unwrap();
    assert!(!granted.is_empty(), "the first run grants");
    let again = owner
        .query("select * from netbox_outbox.grant_netbox($1)", &[&role])
        .await
        .unwrap();
    assert!(again.is_empty(), "a second run changes nothing");

    let netbox = TestDb::attach(&db, &role).client().await;
    for view in [
        "ui_delivery",
        "ui_request",
        "ui_attempt",
        "ui_webhook_health",
        "ui_webhook_hourly",
        "ui_sidecar",
    ] {
        netbox
            .query(&format!("select * from netbox_outbox.{view}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{view}: {e}"));
    }
    for refused in [
        "select * from netbox_outbox.request",
        "select * from netbox_outbox.delivery",
        "select * from netbox_outbox.attempt",
        "select * from netbox_outbox.webhook_state",
        "select * from netbox_outbox.event",
        "update netbox_outbox.delivery set state = 'pending'",
        "select netbox_outbox.replay(delivery_id => 1)",
        "select netbox_outbox.pause_webhook('crm')",
        "select netbox_outbox.resume_webhook('crm')",
        "select * from netbox_outbox.grant_sidecar('postgres')",
        "select * from netbox_outbox.refresh_grants()",
    ] {
        let error = netbox.query(refused, &[]).await.expect_err(refused);
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{refused}: {error}"
        );
    }

    // Replay: the count first, then the copy, which the owner sees as a new pending delivery.
    let would: i64 = netbox
        .query_one(
            "select netbox_outbox.ui_replay(array[$1, $2]::bigint[], dry_run => true)",
            &[&dead, &pending],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(would, 1, "the dead delivery, not the pending one");
    let replayed: i64 = netbox
        .query_one(
            "select netbox_outbox.ui_replay(array[$1, $2]::bigint[])",
            &[&dead, &pending],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(replayed, 1);
    let copies: i64 = owner
        .query_one(
            "select count(*) from netbox_outbox.delivery where replay_of = $1 and state = 'pending'",
            &[&dead],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(copies, 1, "the replay is a new pending delivery");
    let again: i64 = netbox
        .query_one(
            "select netbox_outbox.ui_replay(array[$1]::bigint[])",
            &[&pending],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, 0, "a pending delivery is not replayed");

    // Pause and resume, seen through the health view.
    netbox
        .execute(
            "select netbox_outbox.ui_pause_webhook($1, 'paused in NetBox by admin')",
            &[&hook],
        )
        .await
        .unwrap();
    let paused: (bool, bool, Option<String>, bool) = netbox
        .query_one(
            "select paused, paused_by_operator, pause_reason, paused_until is null
             from netbox_outbox.ui_webhook_health where webhook_id = $1",
            &[&hook],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .unwrap();
    assert_eq!(
        paused,
        (true, true, Some("paused in NetBox by admin".into()), true),
        "paused until resumed: no infinite timestamp for drivers to choke on"
    );
    let state: String = netbox
        .query_one(
            "select state from netbox_outbox.ui_delivery where replay_of = $1",
            &[&dead],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "paused", "a pending delivery of a paused webhook");
    netbox
        .execute("select netbox_outbox.ui_resume_webhook($1)", &[&hook])
        .await
        .unwrap();
    let resumed: bool = netbox
        .query_one(
            "select not paused and paused_until is null and not paused_by_operator from netbox_outbox.ui_webhook_health where webhook_id = $1",
            &[&hook],
        )
        .await
        .unwrap()
        .get(0);
    assert!(resumed);

    drop(netbox);
    owner
        .batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await
        .unwrap();
}

/// The request view masks credentials (the signature, Authorization, API keys, a URL's
/// password) and keeps everything else as sent, in order.
#[tokio::test]
async fn the_request_view_masks_credentials() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let hook = webhook(&client, "crm", "https://crm.example/hook", &[]).await;
    let id = delivery(&client, hook, 1, "dead", 3).await;
    let row = client
        .query_one(
            "select url, headers::text, convert_from(body, 'UTF8') from netbox_outbox.ui_request where delivery_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (url, headers, body): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(url, "https://********@crm.example/hook?x=1");
    assert_eq!(
        headers,
        r#"[["Content-Type", "application/json"], ["X-Hook-Signature", "********"], ["Authorization", "********"], ["X-Api-Key", "********"]]"#
    );
    assert_eq!(body, r#"{"event": "updated"}"#);
    for secret in ["hunter2", "abc123", "s3cr3t", "k3y"] {
        assert!(
            !url.contains(secret) && !headers.contains(secret),
            "{secret} shown"
        );
    }
}

/// The reader's states: a pending delivery after a failed attempt is retrying, and the one
/// queued behind it for the same object is blocked; the health view counts the blocked head.
#[tokio::test]
async fn retrying_heads_and_the_deliveries_they_block_are_visible() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let hook = webhook(&client, "crm", "https://crm.example/hook", &[]).await;
    let head = delivery(&client, hook, 7, "pending", 2).await;
    let behind = delivery(&client, hook, 7, "pending", 0).await;
    let other = delivery(&client, hook, 8, "pending", 0).await;
    let rows = client
        .query(
            "select id, state, blocked from netbox_outbox.ui_delivery order by id",
            &[],
        )
        .await
        .unwrap();
    let states: Vec<(i64, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        states,
        [
            (head, "retrying".to_string(), false),
            (behind, "pending".to_string(), true),
            (other, "pending".to_string(), false)
        ]
    );
    let health: (i64, i64, i64) = client
        .query_one(
            "select pending, retrying, blocked_heads from netbox_outbox.ui_webhook_health where webhook_id = $1",
            &[&hook],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(health, (3, 1, 1));
}

/// Skipping a blocked head from NetBox: ui_skip() calls V11's skip(), so the head becomes
/// skipped and the delivery behind it is no longer blocked.
#[tokio::test]
async fn skipping_a_blocked_head_calls_skip() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let hook = webhook(&client, "crm", "https://crm.example/hook", &[]).await;
    let head = delivery(&client, hook, 7, "pending", 2).await;
    let behind = delivery(&client, hook, 7, "pending", 0).await;
    let skipped: i64 = client
        .query_one(
            "select netbox_outbox.ui_skip($1, 'skipped in NetBox by admin')",
            &[&head],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(skipped, 1);
    let rows = client
        .query(
            "select id, state, blocked from netbox_outbox.ui_delivery where id in ($1, $2) order by id",
            &[&head, &behind],
        )
        .await
        .unwrap();
    let states: Vec<(i64, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        states,
        [
            (head, "skipped".to_string(), false),
            (behind, "pending".to_string(), false)
        ]
    );
}
