//! The demo: netbox-outbox end to end on the local PostgreSQL, in one command.
//!
//!     cargo run --example demo
//!
//! It creates a scratch database `netbox_outbox_demo` with NetBox-shaped tables, applies the
//! migrations, starts a webhook receiver and the sidecar, then changes a few objects, the way
//! NetBox and a plain-SQL script would, and prints each webhook as it arrives.
//!
//! The server comes from DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres);
//! the demo database is left in place for you to look at (see the end of the output).

use std::time::Duration;

use netbox_outbox::commands::receive::Receiver;
use netbox_outbox::config::Config;
use netbox_outbox::db::Database;
use tokio_util::sync::CancellationToken;

const SCHEMA: &str = include_str!("../tests/fixtures/netbox_schema.sql");
const DEMO_DB: &str = "netbox_outbox_demo";
const SECRET: &str = "demo-secret";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin = Database::parse(&url)?;
    println!("netbox-outbox demo, on {admin}\n");

    let server = admin.connect().await.map_err(|e| {
        format!("{e}\n  is PostgreSQL running? (pg_lsclusters; pg_ctlcluster --skip-systemctl-redirect 15 main start)")
    })?;
    server
        .batch_execute(&format!("drop database if exists {DEMO_DB} with (force)"))
        .await?;
    server
        .batch_execute(&format!("create database {DEMO_DB}"))
        .await?;
    let database = admin.with_dbname(DEMO_DB);
    let mut db = database.connect().await?;
    db.batch_execute(SCHEMA).await?;
    println!("1. created {DEMO_DB} with NetBox-shaped tables");
    let applied = netbox_outbox::migrations::run(&mut db).await?;
    println!(
        "2. applied the migrations ({}): capture triggers on every NetBox model table",
        applied
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );

    let receiver = Receiver::start().await?;
    let webhook_ct: i32 = db
        .query_one(
            "select id from django_content_type where app_label = 'extras' and model = 'webhook'",
            &[],
        )
        .await?
        .get(0);
    db.execute(
        "insert into extras_webhook (name, payload_url, secret) values ('demo receiver', $1, $2)",
        &[&receiver.url("/webhook"), &SECRET],
    )
    .await?;
    db.execute(
        "insert into extras_eventrule (name, action_type, action_object_type_id, action_object_id, event_types)
         values ('demo rule', 'netbox_outbox.webhook', $1, 1, '{object_created,object_updated,object_deleted}')",
        &[&webhook_ct],
    )
    .await?;
    db.batch_execute(
        "insert into extras_eventrule_object_types (eventrule_id, contenttype_id)
         select 1, id from django_content_type where (app_label, model) in (('dcim', 'site'), ('dcim', 'device'))",
    )
    .await?;
    println!(
        "3. a receiver listens on {}; a NetBox event rule sends sites and devices to it",
        receiver.addr
    );

    let mut config = Config::defaults();
    config.metrics.listen = None;
    config.assembly.poll_interval = Duration::from_millis(200);
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let sidecar = tokio::spawn(netbox_outbox::sidecar::run(
        config,
        database.clone(),
        async move { signal.cancelled().await },
    ));
    println!("4. the sidecar runs\n");

    let steps: [(&str, &str); 5] = [
        (
            "a plain-SQL insert (NetBox itself would never see it)",
            "insert into dcim_site (created, last_updated, name, slug) values (now(), now(), 'Amsterdam', 'ams')",
        ),
        (
            "a NetBox request: a save and its change log row, in one transaction",
            "begin;
             update dcim_site set status = 'planned', description = 'opening soon', last_updated = now() where slug = 'ams';
             insert into core_objectchange (time, user_name, request_id, action, changed_object_id, object_repr,
                 prechange_data, postchange_data, changed_object_type_id)
             select now(), 'alice', gen_random_uuid(), 'update', id, name, '{\"status\": \"active\"}',
                    '{\"status\": \"planned\"}', (select id from django_content_type where model = 'site')
             from dcim_site where slug = 'ams';
             commit;",
        ),
        (
            "a tag added to the site",
            "insert into extras_tag (name, slug, color) values ('edge', 'edge', 'ff0000');
             insert into extras_taggeditem (object_id, content_type_id, tag_id)
             select s.id, ct.id, 1 from dcim_site s, django_content_type ct where s.slug = 'ams' and ct.model = 'site';",
        ),
        (
            "a device created and updated in one transaction (one webhook: created)",
            "insert into dcim_manufacturer (name, slug) values ('Acme', 'acme');
             insert into dcim_devicetype (model, slug, manufacturer_id) values ('R1', 'r1', 1);
             insert into dcim_devicerole (name, slug) values ('Router', 'router');
             begin;
             insert into dcim_device (created, last_updated, name, device_type_id, role_id, site_id)
                 values (now(), now(), 'ams-rtr-1', 1, 1, 1);
             update dcim_device set serial = 'SN-0001' where name = 'ams-rtr-1';
             commit;",
        ),
        ("the device deleted", "delete from dcim_device where name = 'ams-rtr-1'"),
    ];
    let mut expected = 0;
    for (what, sql) in steps {
        println!("--> {what}");
        db.batch_execute(sql).await?;
        expected += 1;
        let Ok(got) = receiver.wait_for(expected, Duration::from_secs(10)).await else {
            return Err(
                "no webhook arrived within 10 s; run with RUST_LOG=netbox_outbox=debug to see why"
                    .into(),
            );
        };
        let request = &got[expected - 1];
        let body = request.json();
        println!(
            "<-- {} {} (signature {})",
            request.method,
            request.path,
            if request.signature_valid(SECRET) {
                "valid"
            } else {
                "INVALID"
            }
        );
        let text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
        println!(
            "    {} {} #{} ({}), by {}",
            text(&body["event"]),
            text(&body["object_type"]),
            body["data"]["id"],
            text(&body["data"]["display"]),
            text(&body["request"]["user"])
        );
        println!("{}\n", indent(&serde_json::to_string_pretty(&body)?));
    }

    stop.cancel();
    sidecar.await??;
    let delivered: i64 = db
        .query_one(
            "select count(*) from netbox_outbox.delivery where state = 'delivered'",
            &[],
        )
        .await?
        .get(0);
    println!("{delivered} webhooks delivered. Look around:");
    println!(
        "  psql '{}' -c 'select * from netbox_outbox.delivery_log'",
        database.libpq_url().replace('\'', "")
    );
    println!("  (the demo database {DEMO_DB} stays until you drop it)");
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
