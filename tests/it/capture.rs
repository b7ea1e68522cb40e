//! The SQL capture: what the triggers write into netbox_outbox.change, and what they leave out.

use netbox_outbox::commands::receive::Receiver;

use crate::support::db::{Captured, TestDb, captured, content_type, insert_site};
use crate::support::rules::{Rule, webhook};
use crate::support::sidecar::{Sidecar, test_config};
use crate::support::wait::exactly;

fn kinds(rows: &[Captured]) -> Vec<&str> {
    rows.iter().map(|r| r.kind.as_str()).collect()
}

/// An insert, an update and a delete each become one captured change, with the object's content
/// type and id, who made it, and the row before the change (the row after is read by the
/// sidecar: it is the row before the next change, or the row as it stands).
#[tokio::test]
async fn insert_update_delete_are_captured_with_their_rows() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let site_ct = content_type(&client, "dcim.site").await;

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

    let rows = captured(&client).await;
    assert_eq!(kinds(&rows), ["I", "U", "D"]);
    for row in &rows {
        assert_eq!(row.content_type_id, site_ct);
        assert_eq!(row.object_id, id);
        assert_eq!(row.db_user, "postgres");
        assert_eq!(row.application_name, "netbox-outbox");
        assert_eq!(row.request, None);
    }
    let (insert, update, delete) = (&rows[0], &rows[1], &rows[2]);
    assert!(insert.before.is_none());
    assert_eq!(update.before.as_ref().unwrap()["description"], "");
    assert_eq!(update.before.as_ref().unwrap()["name"], "alpha");
    assert_eq!(delete.before.as_ref().unwrap()["description"], "edge");
    // one transaction each (autocommit), in commit order
    assert!(insert.txid != update.txid && update.txid != delete.txid);
}

/// A statement touching several rows gives one change per row, all in one transaction.
#[tokio::test]
async fn multi_row_statements_capture_every_row() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute(
            "insert into dcim_site (name, slug) select 's' || n, 's' || n from generate_series(1, 5) n;
             update dcim_site set status = 'planned' where name in ('s1', 's2', 's3');
             delete from dcim_site where name in ('s4', 's5');",
        )
        .await
        .unwrap();
    let rows = captured(&client).await;
    assert_eq!(
        kinds(&rows),
        ["I", "I", "I", "I", "I", "U", "U", "U", "D", "D"]
    );
    assert!(rows[..5].iter().all(|r| r.txid == rows[0].txid));
    assert!(rows[5..8].iter().all(|r| r.txid == rows[5].txid));
}

/// A rolled-back transaction leaves no captured change, and neither does a rolled-back savepoint
/// inside a committed one.
#[tokio::test]
async fn rolled_back_changes_leave_nothing() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let id = insert_site(&client, "alpha").await;

    let tx = client.transaction().await.unwrap();
    tx.execute(
        "update dcim_site set description = 'lost' where id = $1",
        &[&id],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();

    let mut tx = client.transaction().await.unwrap();
    {
        let sp = tx.savepoint("nested").await.unwrap();
        sp.execute(
            "update dcim_site set description = 'lost too' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
        sp.rollback().await.unwrap();
    }
    tx.execute(
        "update dcim_site set description = 'kept' where id = $1",
        &[&id],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let rows = captured(&client).await;
    assert_eq!(kinds(&rows), ["I", "U"]);
    assert_eq!(rows[1].before.as_ref().unwrap()["description"], "");
}

/// Every real update is captured, including NetBox's counter-cache bumps (the sidecar drops
/// those, comparing images; comparing in the trigger would double the cost of every save). An
/// UPDATE that changes nothing at all is captured too, and dropped the same way.
#[tokio::test]
async fn every_update_is_captured_with_its_before_image() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute(
            "insert into dcim_manufacturer (name, slug) values ('m', 'm');
             insert into dcim_devicetype (model, slug, manufacturer_id) values ('t', 't', 1);
             insert into dcim_devicerole (name, slug) values ('r', 'r');
             insert into dcim_site (name, slug) values ('s', 's');
             insert into dcim_device (name, device_type_id, role_id, site_id, last_updated)
                 values ('d1', 1, 1, 1, now());
             truncate netbox_outbox.change;",
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "update dcim_device set interface_count = interface_count + 1;
             update dcim_device set serial = 'SN1', interface_count = 5;",
        )
        .await
        .unwrap();
    let rows = captured(&client).await;
    assert_eq!(kinds(&rows), ["U", "U"]);
    assert_eq!(rows[0].before.as_ref().unwrap()["interface_count"], 0);
    assert_eq!(rows[1].before.as_ref().unwrap()["interface_count"], 1);
    assert_eq!(rows[1].before.as_ref().unwrap()["serial"], "");
}

/// Adding or removing a tag is a change of the tagged object (NetBox reports an update).
#[tokio::test]
async fn tag_add_and_remove_are_changes_of_the_tagged_object() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let site_ct = content_type(&client, "dcim.site").await;
    let id = insert_site(&client, "alpha").await;
    client
        .batch_execute("insert into extras_tag (name, slug) values ('gold', 'gold')")
        .await
        .unwrap();
    client
        .execute(
            "insert into extras_taggeditem (object_id, content_type_id, tag_id) values ($1, $2, 1)",
            &[&(id as i32), &site_ct],
        )
        .await
        .unwrap();
    client
        .batch_execute("delete from extras_taggeditem")
        .await
        .unwrap();

    let rows: Vec<_> = captured(&client)
        .await
        .into_iter()
        .filter(|r| r.content_type_id == site_ct)
        .collect();
    assert_eq!(kinds(&rows), ["I", "T", "t"]);
    assert!(rows[1..].iter().all(|r| r.object_id == id));
    assert_eq!(rows[1].tag_id, Some(1));
    assert_eq!(rows[2].tag_id, Some(1));
}

/// NetBox's change log rows are copied with the transaction that wrote them, including their
/// in-place updates (NetBox rewrites postchange_data when tags change after a save).
#[tokio::test]
async fn netbox_changelog_rows_are_copied_in_the_same_transaction() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let site_ct = content_type(&client, "dcim.site").await;
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("insert into dcim_site (name, slug) values ('a', 'a')")
        .await
        .unwrap();
    tx.execute(
        "insert into core_objectchange (time, user_name, request_id, action, changed_object_id,
             object_repr, postchange_data, changed_object_type_id)
         values (now(), 'alice', 'aedca68e-cdd1-4580-88c6-b3c964bf65e7', 'create', 1, 'a',
                 '{\"name\": \"a\"}', $1)",
        &[&site_ct],
    )
    .await
    .unwrap();
    tx.batch_execute(
        "update core_objectchange set postchange_data = '{\"name\": \"a\", \"tags\": [\"x\"]}'",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let rows = client
        .query(
            "select l.txid = c.txid, l.content_type_id, l.object_id, l.entry->>'user_name',
                    l.entry->'postchange_data'->'tags'
             from netbox_outbox.changelog l, netbox_outbox.change c order by l.id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|r| r.get::<_, bool>(0)),
        "same transaction as the change"
    );
    assert_eq!(rows[0].get::<_, i32>(1), site_ct);
    assert_eq!(rows[0].get::<_, i64>(2), 1);
    assert_eq!(rows[0].get::<_, String>(3), "alice");
    assert_eq!(rows[0].get::<_, Option<serde_json::Value>>(4), None);
    assert_eq!(
        rows[1].get::<_, Option<serde_json::Value>>(4),
        Some(serde_json::json!(["x"]))
    );
}

/// The NetBox plugin hands the request to the capture through a session setting.
#[tokio::test]
async fn the_plugins_request_context_is_recorded() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let request = r#"{"id": "4bfd706a-df86-4366-8cec-147a285fcbba", "path": "/api/dcim/sites/", "path_info": "/api/dcim/sites/", "method": "POST", "GET": {}, "user": "admin"}"#;
    client
        .execute(
            "select set_config('netbox_outbox.request', $1, false)",
            &[&request],
        )
        .await
        .unwrap();
    insert_site(&client, "alpha").await;
    client
        .batch_execute("reset netbox_outbox.request")
        .await
        .unwrap();
    insert_site(&client, "beta").await;
    let rows = captured(&client).await;
    assert_eq!(rows[0].request.as_deref(), Some(request));
    assert_eq!(rows[1].request, None);
}

/// Two transactions touching one object are captured in commit order, even when the second one
/// started (and took its transaction id) first.
#[tokio::test]
async fn two_transactions_on_one_object_keep_commit_order() {
    let db = TestDb::migrated().await;
    let setup = db.client().await;
    let id = insert_site(&setup, "alpha").await;
    let first = db.client().await;
    let second = db.client().await;

    // The second transaction takes its xid first, by writing something else.
    second
        .batch_execute("begin; insert into dcim_site (name, slug) values ('other', 'other')")
        .await
        .unwrap();
    first
        .batch_execute(&format!(
            "begin; update dcim_site set description = 'one' where id = {id}"
        ))
        .await
        .unwrap();

    // The second transaction now blocks on the first one's row lock; commit the first meanwhile.
    let update = tokio::spawn(async move {
        second
            .batch_execute(&format!(
                "update dcim_site set description = 'two' where id = {id}; commit"
            ))
            .await
            .unwrap();
    });
    crate::support::wait::eventually("the second writer to block", std::time::Duration::from_secs(10), || async {
        let waiting: i64 = setup
            .query_one("select count(*) from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()", &[])
            .await
            .unwrap()
            .get(0);
        (waiting > 0).then_some(())
    })
    .await;
    first.batch_execute("commit").await.unwrap();
    update.await.unwrap();

    let rows: Vec<_> = captured(&setup)
        .await
        .into_iter()
        .filter(|r| r.object_id == id && r.kind == "U")
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].before.as_ref().unwrap()["description"], "");
    assert_eq!(rows[1].before.as_ref().unwrap()["description"], "one");
    // ids follow commit order although the transaction ids do not
    let (xid1, xid2): (i64, i64) = (rows[0].txid.parse().unwrap(), rows[1].txid.parse().unwrap());
    assert!(xid2 < xid1, "the second writer took its xid first");
    assert!(rows[0].id < rows[1].id);
}

/// Tables of models without the event_rules feature are not watched.
#[tokio::test]
async fn models_without_event_rules_are_not_watched() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute(
            "insert into core_job (name) values ('housekeeping');
             insert into users_user (username) values ('bob');",
        )
        .await
        .unwrap();
    assert!(captured(&client).await.is_empty());
    let watched: Vec<String> = client
        .query("select table_name from netbox_outbox.watched_tables where watched and trigger_installed order by 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(watched.contains(&"dcim_device".to_string()));
    assert!(
        !watched
            .iter()
            .any(|t| t == "core_job" || t == "users_user" || t == "extras_taggeditem")
    );
    // a model with the feature whose table does not exist is simply skipped
    assert!(!watched.iter().any(|t| t == "ghost_thing"));
}

/// unwatch() stops the capture of one table, watch() resumes it; sync() respects both.
#[tokio::test]
async fn unwatch_and_watch_again() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute("select netbox_outbox.unwatch('dcim.site')")
        .await
        .unwrap();
    insert_site(&client, "quiet").await;
    let actions = client
        .query("select * from netbox_outbox.sync()", &[])
        .await
        .unwrap();
    assert!(actions.is_empty(), "sync leaves an unwatched table alone");
    insert_site(&client, "still quiet").await;
    assert!(captured(&client).await.is_empty());

    let watched: String = client
        .query_one("select netbox_outbox.watch('dcim_site')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(watched, "dcim_site");
    let heard = insert_site(&client, "heard").await;
    let rows = captured(&client).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].kind.as_str(), rows[0].object_id), ("I", heard));

    let err = client
        .batch_execute("select netbox_outbox.watch('dcim.nothing')")
        .await
        .unwrap_err();
    let message = err.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains("dcim.nothing is not a NetBox model"),
        "{message}"
    );
}

/// A NetBox migration that drops and recreates a watched table (or alters it) gets its capture
/// back in the same transaction, through the DDL event trigger.
#[tokio::test]
async fn a_table_dropped_and_recreated_by_a_migration_is_watched_again() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute(
            "begin;
             create table dcim_site_new (like dcim_site including all);
             drop table dcim_site;
             alter table dcim_site_new rename to dcim_site;
             alter table dcim_site add column new_field text not null default 'x';
             alter table dcim_site drop column facility;
             commit;",
        )
        .await
        .unwrap();
    let id = insert_site(&client, "after upgrade").await;
    client
        .execute("update dcim_site set new_field = 'y' where id = $1", &[&id])
        .await
        .unwrap();
    let rows = captured(&client).await;
    assert_eq!(kinds(&rows), ["I", "U"]);
    let before = rows[1].before.as_ref().unwrap();
    assert_eq!(before["new_field"], "x");
    assert!(before.get("facility").is_none());
}

/// Without the event trigger (a non-superuser installed us), sync() restores a lost trigger.
#[tokio::test]
async fn sync_reinstalls_a_missing_trigger() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute(
            "alter event trigger netbox_outbox_ddl disable;
             drop trigger netbox_outbox_capture on dcim_site;",
        )
        .await
        .unwrap();
    insert_site(&client, "missed").await;
    let actions: Vec<(String, String)> = client
        .query("select action, table_name from netbox_outbox.sync()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        actions,
        [("installed".to_string(), "dcim_site".to_string())]
    );
    let heard = insert_site(&client, "heard").await;
    let rows = captured(&client).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].object_id, heard);
}

/// A link row deleted from a many-to-many table of a model without change logging
/// (`netbox_outbox.watch_link`) is kept as kind L of the object that owned it, with the table it
/// was in; added links are not. A link table whose owner column is gone (renamed by a NetBox
/// migration) loses its trigger, and deleting from it never fails NetBox's write.
#[tokio::test]
async fn deleted_links_of_models_without_change_logging_are_captured() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let owner_ct = content_type(&client, "users.owner").await;
    client
        .batch_execute(
            "insert into users_owner (id, name) values (7, 'ops');
             insert into users_owner_users (owner_id, user_id) select 7, id from users_user;
             delete from users_owner_users where owner_id = 7;",
        )
        .await
        .unwrap();
    let rows: Vec<Captured> = captured(&client)
        .await
        .into_iter()
        .filter(|r| r.kind == "L")
        .collect();
    assert_eq!(rows.len(), 2, "one per deleted link (admin, alice)");
    assert!(
        rows.iter()
            .all(|r| r.content_type_id == owner_ct && r.object_id == 7)
    );
    let tables: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.link_table.as_deref())
        .collect();
    assert_eq!(tables, ["users_owner_users", "users_owner_users"]);
    assert_eq!(rows[0].before.as_ref().unwrap()["owner_id"], 7);

    // the owner column renamed by a NetBox migration: the trigger, still in place, skips the
    // link rather than fail the write; sync() then removes it, and installs it again once the
    // column is back
    client
        .batch_execute(
            "alter event trigger netbox_outbox_ddl disable;
             alter table users_owner_users rename column owner_id to team_id;
             insert into users_owner_users (team_id, user_id) values (7, 1);
             delete from users_owner_users;",
        )
        .await
        .expect("a NetBox write to a link table never fails");
    let links = client
        .query_one(
            "select count(*) from netbox_outbox.change where kind = 'L'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(links, 2);
    let sync = || async {
        client
            .query("select action, table_name from netbox_outbox.sync()", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
    };
    let link = |action: &str| vec![(action.to_string(), "users_owner_users".to_string())];
    assert_eq!(sync().await, link("removed link"));
    client
        .batch_execute("alter table users_owner_users rename column team_id to owner_id")
        .await
        .unwrap();
    assert_eq!(sync().await, link("installed link"));
    assert_eq!(sync().await, []);
}

/// The capture runs as its owner: a NetBox role with no grant on the netbox_outbox schema writes
/// normally, and its changes are captured.
#[tokio::test]
async fn netbox_role_needs_no_grant_on_our_schema() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let role = format!("nbo_netbox_{}", db.name);
    client
        .batch_execute(&format!(
            "drop role if exists {role};
             create role {role} login;
             grant select, insert, update, delete on all tables in schema public to {role};
             grant usage on all sequences in schema public to {role};"
        ))
        .await
        .unwrap();
    let netbox = db
        .database
        .with_user(&role)
        .connect()
        .await
        .expect("connect as the NetBox role");
    netbox
        .batch_execute("insert into dcim_site (name, slug) values ('by netbox', 'n'); update dcim_site set description = 'x'")
        .await
        .expect("NetBox's writes succeed");
    drop(netbox);
    let rows = captured(&client).await;
    assert_eq!(kinds(&rows), ["I", "U"]);
    assert_eq!(rows[0].db_user, role);
    client
        .batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await
        .unwrap();
}

/// The capture runs with its owner's rights, so a writer's search_path must not be able to put
/// its own functions or operators in its place (CVE-2018-1058): every name in it is qualified.
#[tokio::test]
async fn a_hostile_search_path_cannot_hijack_the_capture() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute(
            "create schema evil;
             create function evil.row_to_json(record) returns json language plpgsql
                 as $$ begin return '{\"hijacked\": true}'::json; end $$;
             create function evil.current_setting(text) returns text language sql
                 as $$ select 'hijacked' $$;
             create function evil.text_eq(text, text) returns boolean language sql
                 as $$ select false $$;
             create operator evil.= (leftarg = text, rightarg = text, function = evil.text_eq);
             set search_path = evil, pg_catalog, public;",
        )
        .await
        .unwrap();
    let id = insert_site(&client, "alpha").await;
    client
        .execute(
            "update dcim_site set description = 'edge' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    client
        .execute("delete from dcim_site where id = $1", &[&id])
        .await
        .unwrap();
    client.batch_execute("reset search_path").await.unwrap();

    let rows = captured(&client).await;
    assert_eq!(kinds(&rows), ["I", "U", "D"]);
    assert_eq!(rows[1].before.as_ref().unwrap()["name"], "alpha");
    assert_eq!(rows[2].before.as_ref().unwrap()["description"], "edge");
    assert!(rows.iter().all(|r| r.application_name == "netbox-outbox"));
}

/// The batch lookup's BRIN index matches every range it has no summary for, so the sidecar
/// summarizes full ranges as changes arrive (netbox_outbox.summarize_capture): afterwards a
/// lookup of the newest transactions reads only the newest pages, not every change since
/// autovacuum last came by.
#[tokio::test]
async fn full_brin_ranges_of_the_capture_are_summarized_on_request() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    // Enough transactions for several full 16-page ranges, in one slot (today's).
    client
        .batch_execute(
            "insert into dcim_site (name, slug) select 'site-' || g, 'site-' || g from generate_series(1, 20) g",
        )
        .await
        .unwrap();
    for round in 0..300 {
        client
            .execute(
                "update dcim_site set description = repeat('x', 150) || $1, last_updated = now()",
                &[&round.to_string()],
            )
            .await
            .unwrap();
    }
    let lossy_pages = async |client: &tokio_postgres::Client| -> i64 {
        // pages a lookup of the last transaction must read: every page of an unsummarized range
        let newest: i64 = client
            .query_one("select max(txid) from netbox_outbox.change", &[])
            .await
            .unwrap()
            .get(0);
        let plan: String = client
            .query_one(
                &format!(
                    "explain (analyze, format json, costs off, timing off)
                     select id from netbox_outbox.change where txid >= {newest}"
                ),
                &[],
            )
            .await
            .unwrap()
            .get::<_, serde_json::Value>(0)
            .to_string();
        // sum of "Lossy Heap Blocks" over the partitions' bitmap heap scans
        plan.match_indices("\"Lossy Heap Blocks\":")
            .map(|(at, key)| {
                plan[at + key.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
                    .parse::<i64>()
                    .unwrap()
            })
            .sum()
    };
    client
        .batch_execute("analyze netbox_outbox.change; set enable_seqscan = off")
        .await
        .unwrap();
    let before = lossy_pages(&client).await;
    let summarized: i32 = client
        .query_one("select netbox_outbox.summarize_capture()", &[])
        .await
        .unwrap()
        .get(0);
    let after = lossy_pages(&client).await;
    // (autovacuum may have summarized some ranges already, but not in the second it took)
    assert!(before >= 32, "the test's changes fill only {before} pages");
    assert!(summarized > 0, "no range was summarized");
    assert!(
        after < 32,
        "a lookup of the newest transaction reads {after} pages after summarizing ({before} before)"
    );
    // A second call finds nothing new to summarize.
    let again: i32 = client
        .query_one("select netbox_outbox.summarize_capture()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, 0);
}

/// A role that may use our schema (an operator's, say) and create tables of its own: before V5 it
/// could attach the owner-rights capture() to its own table, write whatever it liked into the
/// captured history, and have a cast of its own to json run as the migrations' owner when
/// capture() turned its row into JSON. Now EXECUTE on the capture functions is not PUBLIC's, so
/// the trigger cannot be created: nothing is captured from its table, its cast never runs (it
/// would have switched the capture off), and the sidecar delivers NetBox's changes meanwhile.
#[tokio::test]
async fn nobody_attaches_the_capture_to_a_table_of_their_own() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let role = format!("nbo_attacker_{}", db.name);
    client
        .batch_execute(&format!(
            "create role {role} login;
             grant usage on schema netbox_outbox to {role};
             grant select on all tables in schema netbox_outbox to {role};
             create schema {role} authorization {role};"
        ))
        .await
        .unwrap();
    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(&client, "crm", &receiver.url("/hook"), &[]).await;
    Rule::to_webhook("sites", hook).create(&client).await;
    let sidecar = Sidecar::start(&db, test_config(""));

    let attacker = db.database.with_user(&role).connect().await.unwrap();
    // A type whose cast to json runs SQL of the attacker's, with the rights of whoever runs the
    // cast: as capture()'s owner it would switch the capture off.
    attacker
        .batch_execute(&format!(
            "set search_path = {role};
             create type evil as (x int);
             create function evil_to_json(evil) returns json language plpgsql as $$
             begin
                 update netbox_outbox.setting set value = 'netbox' where name = 'capture_mode';
                 return '{{}}'::json;
             end $$;
             create cast (evil as json) with function evil_to_json(evil);
             create table mine (id bigint, v evil);"
        ))
        .await
        .unwrap();
    for function in [
        "capture('1')",
        "capture_tag()",
        "capture_changelog()",
        "capture_link('1', 'owner_id')",
    ] {
        let error = attacker
            .batch_execute(&format!(
                "create trigger hijack after insert or update or delete on {role}.mine
                 for each row execute function netbox_outbox.{function}"
            ))
            .await
            .expect_err("attaching an owner-rights capture function must be refused");
        let message = error.as_db_error().unwrap().message().to_string();
        assert!(
            message.contains("permission denied for function netbox_outbox.capture"),
            "{function}: {message}"
        );
    }
    attacker
        .batch_execute(&format!(
            "insert into {role}.mine values (1, row(1)); update {role}.mine set id = 2; delete from {role}.mine;"
        ))
        .await
        .unwrap();

    // Meanwhile NetBox's changes are captured and delivered as ever.
    insert_site(&client, "alpha").await;
    exactly(&receiver, &client, 1).await;
    sidecar.stop().await;
    let mode: String = client
        .query_one(
            "select value from netbox_outbox.setting where name = 'capture_mode'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        mode, "all",
        "the attacker's cast ran as the capture's owner"
    );
    let foreign: i64 = client
        .query_one(
            "select count(*) from netbox_outbox.change where db_user = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(foreign, 0, "rows of the attacker's table were captured");
    drop(attacker);
    client
        .batch_execute(&format!(
            "drop schema {role} cascade; drop owned by {role}; drop role {role}"
        ))
        .await
        .unwrap();
}

/// No function of ours is executable by PUBLIC; EXECUTE goes to the roles that need it by name.
/// Security definer functions pin their search path, except capture(), which qualifies every
/// name instead (a_hostile_search_path_cannot_hijack_the_capture).
#[tokio::test]
async fn no_function_of_ours_is_executable_by_public() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let public: Vec<String> = client
        .query(
            "select p.oid::regprocedure::text from pg_proc p
             where p.pronamespace = 'netbox_outbox'::regnamespace
               and has_function_privilege('public', p.oid, 'execute')
             order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(public, Vec::<String>::new());
    let unpinned: Vec<String> = client
        .query(
            "select p.oid::regprocedure::text from pg_proc p
             where p.pronamespace = 'netbox_outbox'::regnamespace and p.prosecdef
               and not exists (select 1 from unnest(p.proconfig) c where c like 'search_path=%')
             order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(unpinned, ["netbox_outbox.capture()"]);
}

/// NetBox's own role (not the one that installed us) runs NetBox's migrations: the DDL event
/// trigger still re-installs the capture on a table it recreates, though that role may not call
/// sync() itself.
#[tokio::test]
async fn a_table_netbox_s_role_recreates_is_watched_again() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let role = format!("nbo_netbox_{}", db.name);
    client
        .batch_execute(&format!(
            "create role {role} login;
             grant create on schema public to {role};
             alter table users_owner owner to {role};"
        ))
        .await
        .unwrap();
    let netbox = db.database.with_user(&role).connect().await.unwrap();
    netbox
        .batch_execute(
            "begin;
             create table users_owner_new (like users_owner including all);
             drop table users_owner;
             alter table users_owner_new rename to users_owner;
             commit;
             insert into users_owner (name) values ('after upgrade');",
        )
        .await
        .unwrap();
    drop(netbox);
    let rows = captured(&client).await;
    assert_eq!(kinds(&rows), ["I"]);
    client
        .batch_execute(&format!(
            "drop table users_owner; drop owned by {role}; drop role {role}"
        ))
        .await
        .unwrap();
}
