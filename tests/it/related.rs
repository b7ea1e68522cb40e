//! What NetBox computes from related rows, rendered from the database: config contexts, cable
//! peers and paths, and related objects as NetBox serialized them during a request (before the
//! rest of the request changed them, or before a delete cascaded).

use std::time::Duration;

use netbox_outbox::commands::receive::{Received, Receiver};
use serde_json::{Value, json};

use crate::support::db::{TestDb, content_type};
use crate::support::rules::{Rule, webhook};
use crate::support::sidecar::{Sidecar, test_config};

const WAIT: Duration = Duration::from_secs(15);

struct Setup {
    db: TestDb,
    client: tokio_postgres::Client,
    receiver: Receiver,
}

/// A database with one rule for `models`, delivering to a receiver.
async fn setup(models: &[&str]) -> Setup {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(&client, "hook", &receiver.url("/hook"), &[]).await;
    Rule::to_webhook("all", hook)
        .models(models)
        .create(&client)
        .await;
    Setup {
        db,
        client,
        receiver,
    }
}

/// The webhook for one object and event among those received.
fn find<'a>(got: &'a [Received], object_type: &str, event: &str, id: i64) -> &'a Received {
    got.iter()
        .find(|r| {
            let body = r.json();
            body["object_type"] == object_type && body["event"] == event && body["data"]["id"] == id
        })
        .unwrap_or_else(|| panic!("no {event} webhook for {object_type} {id}"))
}

/// A manufacturer, device type, role (a child of another role), region tree, site and device
/// with local context data; returns the device id.
async fn device_in_a_tree(client: &tokio_postgres::Client) -> i64 {
    client
        .batch_execute(
            "insert into dcim_manufacturer (id, name, slug) values (1, 'm', 'm');
             insert into dcim_devicetype (id, model, slug, manufacturer_id) values (1, 't', 't', 1);
             insert into dcim_devicerole (id, name, slug, path) values (1, 'parent', 'parent', '1'),
                                                                      (2, 'router', 'router', '1.2');
             insert into dcim_region (id, name, slug, path) values (1, 'europe', 'europe', '1'),
                                                                   (2, 'germany', 'germany', '1.2'),
                                                                   (3, 'asia', 'asia', '3');
             insert into dcim_site (id, name, slug, region_id) values (1, 'berlin', 'berlin', 2),
                                                                      (2, 'tokyo', 'tokyo', 3);
             insert into extras_tag (id, name, slug) values (1, 'edge', 'edge'), (2, 'core', 'core');",
        )
        .await
        .unwrap();
    client
        .query_one(
            "insert into dcim_device (name, device_type_id, role_id, site_id, local_context_data, last_updated)
             values ('dev1', 1, 2, 1, '{\"b\": 2, \"a\": [1, 2]}', now()) returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// A device's config context is rendered as NetBox renders it while its cache is empty: every
/// active context matching the device (regions and roles with their ancestors, tags), by
/// weight then name, deep-merged, then the local context data on top, in Python's key order.
#[tokio::test]
async fn config_context_merges_matching_contexts_like_netbox() {
    let s = setup(&["dcim.device"]).await;
    s.client
        .batch_execute(
            "insert into extras_configcontext (id, name, weight, data) values
                 (1, 'all', 1000, '{\"syslog\": \"10.0.0.1\", \"ntp\": {\"servers\": [\"192.0.2.1\"], \"prefer\": true}}'),
                 (2, 'europe', 1000, '{\"ntp\": {\"servers\": [\"192.0.2.123\"]}, \"b\": 1}'),
                 (3, 'asia', 10, '{\"syslog\": \"asia\"}'),
                 (4, 'a parent role', 2000, '{\"role\": \"parent\"}'),
                 (5, 'edge tag', 500, '{\"syslog\": \"edge\", \"tagged\": true}'),
                 (6, 'core tag', 1, '{\"syslog\": \"core\"}'),
                 (7, 'inactive', 1, '{\"syslog\": \"inactive\"}');
             update extras_configcontext set is_active = false where id = 7;
             insert into extras_configcontext_regions (configcontext_id, region_id) values (2, 1), (3, 3);
             insert into extras_configcontext_roles (configcontext_id, devicerole_id) values (4, 1);
             insert into extras_configcontext_tags (configcontext_id, tag_id) values (5, 1), (6, 2);",
        )
        .await
        .unwrap();
    let sidecar = Sidecar::start(&s.db, test_config(""));
    let device = device_in_a_tree(&s.client).await;
    let ct = content_type(&s.client, "dcim.device").await;
    s.client
        .execute(
            "insert into extras_taggeditem (object_id, content_type_id, tag_id) values ($1::bigint, $2, 1)",
            &[&device, &ct],
        )
        .await
        .unwrap();
    let got = s.receiver.wait_for(2, WAIT).await.unwrap();
    let config_context = |r: &Received| {
        let body = String::from_utf8(r.body.clone()).unwrap();
        let start = body
            .find("\"config_context\": ")
            .expect("a config_context key");
        let end = body[start..].find(", \"local_context_data\"").unwrap();
        body[start..start + end].to_string()
    };
    // Each context's data in jsonb's key order (shorter keys first), merged in the order all
    // (1000), europe (1000, a child region's device), a parent role (2000), then the local data;
    // asia's region, the tag contexts and the inactive context do not apply.
    assert_eq!(
        config_context(find(&got, "dcim.device", "created", device)),
        r#""config_context": {"ntp": {"prefer": true, "servers": ["192.0.2.123"]}, "syslog": "10.0.0.1", "b": 2, "role": "parent", "a": [1, 2]}"#
    );
    // tagged edge: the edge context (500) comes first, and all's syslog replaces its own
    assert_eq!(
        config_context(find(&got, "dcim.device", "updated", device)),
        r#""config_context": {"syslog": "10.0.0.1", "tagged": true, "ntp": {"prefer": true, "servers": ["192.0.2.123"]}, "b": 2, "role": "parent", "a": [1, 2]}"#
    );

    // A filled cache is what NetBox serves, from the copy it loaded before the change: also
    // when the change empties the cache (NetBox invalidates it with an UPDATE that does not
    // reach that copy).
    s.client
        .execute(
            "update dcim_device set _config_context_data = '{\"cached\": 1}' where id = $1",
            &[&device],
        )
        .await
        .unwrap();
    s.client
        .execute(
            "update dcim_device set _config_context_data = null, description = 'x' where id = $1",
            &[&device],
        )
        .await
        .unwrap();
    let got = s.receiver.wait_for(3, WAIT).await.unwrap();
    assert_eq!(
        got[2].json()["data"]["config_context"],
        json!({"cached": 1})
    );
    sidecar.stop().await;
}

/// Two devices' interfaces joined by a cable with a complete, active path.
struct Cabled {
    a: i64,
    b: i64,
    lone: i64,
    cable: i64,
}

/// Interfaces a and b on two devices, connected by a cable (created in one transaction, as
/// NetBox's REST API does: the cable, each termination and its interface, the cable again),
/// with the cable paths NetBox traces; and an interface without a cable.
async fn cabled(client: &tokio_postgres::Client) -> Cabled {
    device_in_a_tree(client).await;
    client
        .batch_execute(
            "insert into dcim_device (id, name, device_type_id, role_id, site_id) values (2, 'dev2', 1, 2, 1);
             insert into dcim_interface (id, name, device_id, type) values (1, 'et-0/0/0', 1, '10gbase-x-sfpp'),
                                                                            (2, 'et-0/0/0', 2, '10gbase-x-sfpp'),
                                                                            (3, 'lo0', 1, 'virtual');",
        )
        .await
        .unwrap();
    let ct = content_type(client, "dcim.interface").await;
    client
        .batch_execute(&format!(
            "begin;
             insert into dcim_cable (id, label, status) values (1, 'C-001', 'connected');
             insert into dcim_cabletermination (cable_id, cable_end, termination_type_id, termination_id)
                 values (1, 'A', {ct}, 1);
             update dcim_interface set cable_id = 1, cable_end = 'A' where id = 1;
             insert into dcim_cabletermination (cable_id, cable_end, termination_type_id, termination_id)
                 values (1, 'B', {ct}, 2);
             update dcim_interface set cable_id = 1, cable_end = 'B' where id = 2;
             update dcim_cable set description = '' where id = 1;
             insert into dcim_cablepath (id, path, is_active, is_complete) values
                 (1, '[[\"{ct}:1\"], [\"999:1\"], [\"{ct}:2\"]]', true, true),
                 (2, '[[\"{ct}:2\"], [\"999:1\"], [\"{ct}:1\"]]', true, true);
             update dcim_interface set _path_id = id where id in (1, 2);
             commit;"
        ))
        .await
        .unwrap();
    Cabled {
        a: 1,
        b: 2,
        lone: 3,
        cable: 1,
    }
}

/// Interfaces carry their cable's far end (`link_peers`) and their path's far end
/// (`connected_endpoints`), each as nested interfaces, as NetBox's serializer mixins compute them.
#[tokio::test]
async fn link_peers_and_connected_endpoints() {
    let s = setup(&["dcim.interface"]).await;
    let sidecar = Sidecar::start(&s.db, test_config(""));
    let c = cabled(&s.client).await;
    s.receiver.wait_for(5, WAIT).await.unwrap();
    s.client
        .execute(
            "update dcim_interface set description = 'uplink' where id in ($1, $2)",
            &[&c.a, &c.lone],
        )
        .await
        .unwrap();
    let got = s.receiver.wait_for(7, WAIT).await.unwrap();
    let a = find(&got[5..], "dcim.interface", "updated", c.a).json();
    let data = &a["data"];
    let peers = data["link_peers"].as_array().expect("a list of peers");
    assert_eq!(peers.len(), 1, "{data}");
    let peer = &peers[0];
    let keys: Vec<&str> = peer
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // NetBox's brief interface
    assert_eq!(
        keys,
        [
            "id",
            "url",
            "display",
            "device",
            "name",
            "description",
            "cable",
            "_occupied"
        ]
    );
    assert_eq!(peer["id"], c.b);
    assert_eq!(peer["device"]["id"], 2);
    assert_eq!(peer["cable"]["id"], c.cable);
    assert_eq!(peer["_occupied"], true);
    assert_eq!(data["link_peers_type"], "dcim.interface");
    assert_eq!(data["connected_endpoints"], json!([peer]));
    assert_eq!(data["connected_endpoints_type"], "dcim.interface");
    assert_eq!(data["connected_endpoints_reachable"], true);

    let lone = find(&got[5..], "dcim.interface", "updated", c.lone).json();
    let data = &lone["data"];
    assert_eq!(data["link_peers"], json!([]));
    assert_eq!(data["link_peers_type"], Value::Null);
    assert_eq!(data["connected_endpoints"], Value::Null);
    assert_eq!(data["connected_endpoints_type"], Value::Null);
    assert_eq!(data["connected_endpoints_reachable"], false);
    sidecar.stop().await;
}

/// NetBox serializes a new cable before it attaches the terminations, and a deleted cable
/// before the deletion cascades to them: the terminations are shown as they were then.
#[tokio::test]
async fn cable_terminations_as_netbox_serialized_them() {
    let s = setup(&["dcim.cable"]).await;
    let sidecar = Sidecar::start(&s.db, test_config(""));
    let c = cabled(&s.client).await;
    let got = s.receiver.wait_for(1, WAIT).await.unwrap();
    let created = got[0].json();
    assert_eq!(created["event"], "created");
    for end in ["a_terminations", "b_terminations"] {
        let terminations = created["data"][end].as_array().unwrap();
        assert_eq!(terminations.len(), 1, "{created}");
        assert_eq!(terminations[0]["object"]["cable"], Value::Null, "{end}");
        assert_eq!(terminations[0]["object"]["_occupied"], false, "{end}");
    }

    // NetBox's delete: the terminations and the interfaces' cable first, then the cable
    s.client
        .batch_execute(
            "begin;
             delete from dcim_cabletermination where cable_id = 1;
             update dcim_interface set cable_id = null, cable_end = null, _path_id = null where id in (1, 2);
             delete from dcim_cablepath;
             delete from dcim_cable where id = 1;
             commit;",
        )
        .await
        .unwrap();
    let got = s.receiver.wait_for(2, WAIT).await.unwrap();
    let deleted = got[1].json();
    assert_eq!(deleted["event"], "deleted");
    let a = deleted["data"]["a_terminations"].as_array().unwrap();
    assert_eq!(a.len(), 1, "{deleted}");
    assert_eq!(a[0]["object_id"], c.a);
    assert_eq!(a[0]["object"]["cable"]["id"], c.cable);
    assert_eq!(a[0]["object"]["_occupied"], true);
    assert_eq!(deleted["data"]["b_terminations"][0]["object_id"], c.b);
    sidecar.stop().await;
}

/// An interface created with a MAC address: NetBox saves the interface, creates the MAC, then
/// makes it the interface's primary MAC. The MAC's webhook shows it as it was saved: not
/// primary yet.
#[tokio::test]
async fn a_mac_created_before_it_became_primary_is_not_primary() {
    let s = setup(&["dcim.macaddress"]).await;
    let sidecar = Sidecar::start(&s.db, test_config(""));
    device_in_a_tree(&s.client).await;
    let ct = content_type(&s.client, "dcim.interface").await;
    s.client
        .batch_execute(&format!(
            "begin;
             insert into dcim_interface (id, name, device_id) values (1, 'et-0/0/0', 1);
             insert into dcim_macaddress (id, mac_address, assigned_object_type_id, assigned_object_id)
                 values (1, '00:1a:2b:3c:4d:5e', {ct}, 1);
             update dcim_interface set primary_mac_address_id = 1 where id = 1;
             commit;"
        ))
        .await
        .unwrap();
    let got = s.receiver.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got[0].json()["data"]["is_primary"], false);

    // saved again later, it is primary
    s.client
        .execute(
            "update dcim_macaddress set description = 'x' where id = 1",
            &[],
        )
        .await
        .unwrap();
    let got = s.receiver.wait_for(2, WAIT).await.unwrap();
    assert_eq!(got[1].json()["data"]["is_primary"], true);
    sidecar.stop().await;
}

/// A deleted config context's assignments are deleted with it; NetBox serialized it before,
/// and its change log holds them.
#[tokio::test]
async fn a_deleted_objects_links_come_from_netbox_change_log() {
    let s = setup(&["extras.configcontext"]).await;
    s.client
        .batch_execute(
            "insert into dcim_devicerole (id, name, slug, path) values (1, 'router', 'router', '1');
             insert into extras_configcontext (id, name, data) values (1, 'cc', '{}');
             insert into extras_configcontext_roles (configcontext_id, devicerole_id) values (1, 1);",
        )
        .await
        .unwrap();
    let sidecar = Sidecar::start(&s.db, test_config(""));
    let ct = content_type(&s.client, "extras.configcontext").await;
    s.client
        .batch_execute(&format!(
            "begin;
             delete from extras_configcontext_roles where configcontext_id = 1;
             insert into core_objectchange (time, user_name, request_id, action, changed_object_id,
                                            object_repr, prechange_data, changed_object_type_id)
                 values (now(), 'admin', gen_random_uuid(), 'delete', 1, 'cc',
                         '{{\"name\": \"cc\", \"roles\": [1], \"tags\": []}}', {ct});
             delete from extras_configcontext where id = 1;
             commit;"
        ))
        .await
        .unwrap();
    let got = s.receiver.wait_for(2, WAIT).await.unwrap();
    let deleted = find(&got, "extras.configcontext", "deleted", 1).json();
    let roles = deleted["data"]["roles"].as_array().unwrap();
    assert_eq!(roles.len(), 1, "{deleted}");
    assert_eq!(roles[0]["id"], 1);
    sidecar.stop().await;
}

/// A deleted owner (a model NetBox does not change-log, so no prechange snapshot holds its
/// links) nests the users and groups it had when the transaction deleted it, from the capture's
/// images of the deleted link rows; links removed in an earlier transaction are not among them,
/// and removing links is no event of its own.
#[tokio::test]
async fn a_deleted_owners_links_come_from_the_captured_link_rows() {
    let s = setup(&["users.owner"]).await;
    s.client
        .batch_execute(
            "insert into users_user (username) values ('bob');
             insert into users_group (id, name) values (1, 'noc');
             insert into users_owner (id, name) values (1, 'ops');
             insert into users_owner_users (owner_id, user_id)
                 select 1, id from users_user where username in ('alice', 'bob', 'admin');
             insert into users_owner_user_groups (owner_id, group_id) values (1, 1);",
        )
        .await
        .unwrap();
    let sidecar = Sidecar::start(&s.db, test_config(""));
    s.client
        .batch_execute(
            "delete from users_owner_users where owner_id = 1
                 and user_id = (select id from users_user where username = 'bob');",
        )
        .await
        .unwrap();
    // as Django deletes an object with many-to-many fields: the links first, then the object
    s.client
        .batch_execute(
            "begin;
             delete from users_owner_users where owner_id = 1;
             delete from users_owner_user_groups where owner_id = 1;
             delete from users_owner where id = 1;
             commit;",
        )
        .await
        .unwrap();
    // the owner's creation (before the sidecar started), then its deletion
    let got = s.receiver.wait_for(2, WAIT).await.unwrap();
    let deleted = find(&got, "users.owner", "deleted", 1).json();
    let users: Vec<&str> = deleted["data"]["users"]
        .as_array()
        .unwrap_or_else(|| panic!("{deleted}"))
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["admin", "alice"], "{deleted}");
    assert_eq!(
        deleted["data"]["user_groups"][0]["name"], "noc",
        "{deleted}"
    );
    assert_eq!(deleted["snapshots"]["prechange"], Value::Null, "{deleted}");
    sidecar.stop().await;
    let events: Vec<Value> = s
        .receiver
        .received()
        .iter()
        .map(|r| r.json()["event"].clone())
        .collect();
    assert_eq!(
        events,
        ["created", "deleted"],
        "removing a link is no event"
    );
}

/// Related-object counts as NetBox's REST viewsets annotate them: a tenant updated or deleted
/// (without the plugin: the documented fallback, a PATCH or DELETE through the API) has its
/// `site_count` and the other counts, counted from the database; created, it has none (NetBox's
/// POST does not annotate). A count over a table this database lacks is 0.
#[tokio::test]
async fn counts_of_rest_updates_and_deletes_come_from_the_database() {
    let s = setup(&["tenancy.tenant"]).await;
    let tenant: i64 = s
        .client
        .query_one(
            "insert into tenancy_tenant (created, last_updated, name, slug) values (now(), now(), 't1', 't1') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let _sidecar = Sidecar::start(&s.db, test_config(""));
    for name in ["a", "b"] {
        s.client
            .execute(
                "insert into dcim_site (created, last_updated, name, slug, tenant_id) values (now(), now(), $1, $1, $2)",
                &[&name, &tenant],
            )
            .await
            .unwrap();
    }
    s.client
        .execute(
            "update tenancy_tenant set description = 'two sites', last_updated = now() where id = $1",
            &[&tenant],
        )
        .await
        .unwrap();
    let got = s.receiver.wait_for(2, WAIT).await.unwrap();
    let created = find(&got, "tenancy.tenant", "created", tenant).json();
    assert!(created["data"].get("site_count").is_none(), "{created}");
    let updated = find(&got, "tenancy.tenant", "updated", tenant).json();
    let data = &updated["data"];
    assert_eq!(data["site_count"], json!(2), "{data}");
    assert_eq!(data["device_count"], json!(0));
    assert_eq!(
        data["circuit_count"],
        json!(0),
        "no circuits table: nothing counted"
    );
    // in the serializer's order, after the tenant's own fields
    let keys: Vec<&String> = data.as_object().unwrap().keys().collect();
    let at = |k: &str| keys.iter().position(|x| *x == k).unwrap();
    assert!(at("circuit_count") < at("site_count") && at("last_updated") < at("circuit_count"));
}
