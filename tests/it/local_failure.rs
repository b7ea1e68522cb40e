//! Failure is local: a template that runs away, a model whose rows cannot be read (a renamed
//! column, a revoked grant), a condition that fails for one object: each costs only that
//! delivery or that model's events, shows in netbox_outbox.failed, and the other webhook on the
//! same sidecar is delivered meanwhile. Schema drift heals without a restart.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use netbox_outbox::commands::receive::Receiver;
use tokio_postgres::Client;

use crate::support::db::{TestDb, insert_site, least_privilege_role};
use crate::support::rules::Rule;
use crate::support::sidecar::{Sidecar, test_config};
use crate::support::wait::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// A good webhook watching sites and RIRs, and a "bad" rule on sites whose webhook has `extra`
/// columns (a body template) and `conditions`.
async fn scene(client: &Client, receiver: &Receiver, extra: &[(&str, &str)], conditions: &str) {
    Rule::new("good", &receiver.url("/good"))
        .models(&["dcim.site", "ipam.rir"])
        .create(client)
        .await;
    if !extra.is_empty() || conditions != "null" {
        Rule::new("bad", &receiver.url("/bad"))
            .webhook_columns(extra)
            .conditions(conditions)
            .create(client)
            .await;
    }
}

/// GET /healthz from a plain thread with a one-second read timeout: answers even if the
/// test's runtime (which the sidecar shares) were blocked.
fn healthz(port: u16) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
            .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("no answer within 1s: {e}"))?;
    if answer.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(answer.lines().next().unwrap_or_default().to_string())
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The one delivery of `rule_name` for site `site`, once it is not pending: (state, error).
async fn finished(client: &Client, rule_name: &str, site: i64) -> (String, String) {
    eventually("the delivery to finish", WAIT, || async {
        client
            .query_opt(
                "select state, coalesce(last_error, '') from netbox_outbox.delivery
                 where event_rule_name = $1 and object_id = $2 and state <> 'pending'",
                &[&rule_name, &site],
            )
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get(1)))
    })
    .await
}

/// Waits for the good webhook's request about the object named `name` of `model`.
async fn good_receives(receiver: &Receiver, model: &str, name: &str) {
    eventually(
        &format!("the good webhook's request for {model} {name}"),
        WAIT,
        || async { good_received(receiver, model, name).then_some(()) },
    )
    .await;
}

fn good_received(receiver: &Receiver, model: &str, name: &str) -> bool {
    receiver.received().iter().any(|r| {
        r.path == "/good" && r.json()["object_type"] == model && r.json()["data"]["name"] == name
    })
}

async fn insert_rir(client: &Client, name: &str) -> i64 {
    client
        .query_one(
            "insert into ipam_rir (created, last_updated, name, slug) values (now(), now(), $1, $1)
             returning id",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

/// A nested loop that writes: it runs until the time limit stops it. Meanwhile /healthz
/// answers; the bad delivery is rejected naming the webhook, the field and the limit; the good
/// webhook is delivered; cancelled mid-render, the sidecar stops within its grace (2s), and
/// after a restart the same object is rejected again rather than sticking.
#[tokio::test]
async fn a_template_with_nested_loops_is_rejected_and_blocks_nothing() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let nested =
        "'{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}'";
    scene(&client, &receiver, &[("body_template", nested)], "null").await;
    let port = free_port();
    let config = test_config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
         [netbox]\ntemplate_fuel = 1000000000000\ntemplate_timeout = \"3s\"\n\
         template_max_bytes = 1000000000\n"
    ));
    let sidecar = Sidecar::start(&db, config.clone());
    eventually("the health endpoint", WAIT, || async {
        tokio::task::spawn_blocking(move || healthz(port))
            .await
            .unwrap()
            .ok()
    })
    .await;

    let alpha = insert_site(&client, "alpha").await;
    // Probe health from a thread while the template renders (3s).
    let probes = tokio::task::spawn_blocking(move || {
        (0..8)
            .map(|_| {
                let answer = healthz(port);
                std::thread::sleep(Duration::from_millis(200));
                answer
            })
            .collect::<Vec<_>>()
    });
    let (state, error) = finished(&client, "bad", alpha).await;
    for probe in probes.await.unwrap() {
        probe.expect("/healthz answers while a template renders");
    }
    assert_eq!(state, "rejected", "{error}");
    for fragment in [
        "webhook \"bad\"",
        "body_template",
        "netbox.template_timeout",
    ] {
        assert!(
            error.contains(fragment),
            "{fragment:?} missing from {error}"
        );
    }
    let failed: i64 = client
        .query_one(
            "select count(*) from netbox_outbox.failed where event_rule_name = 'bad' and state = 'rejected'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 1);
    good_receives(&receiver, "dcim.site", "alpha").await;

    // Cancelled while the next template renders: stops within the grace period.
    let beta = insert_site(&client, "beta").await;
    eventually("the batch with beta to be under way", WAIT, || async {
        client
            .query_one(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and state = 'idle in transaction'
                   and pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            .gt(&0)
            .then_some(())
    })
    .await;
    let took = sidecar.stop().await;
    assert!(
        took < config.shutdown_grace,
        "stopping took {took:?}, more than the grace period"
    );

    // After a restart the interrupted batch is read again: rejected again, not stuck.
    let sidecar = Sidecar::start(&db, config);
    let (state, error) = finished(&client, "bad", beta).await;
    assert_eq!(state, "rejected", "{error}");
    good_receives(&receiver, "dcim.site", "beta").await;
    assert!(receiver.received().iter().all(|r| r.path == "/good"));
    sidecar.stop().await;
}

/// The netbox-outbox binary with `args` against `db`: its exit code and everything it printed.
async fn cli(db: &TestDb, args: &[&str]) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_netbox-outbox"))
        .args(args)
        .env_remove("NETBOX_OUTBOX_CONFIG")
        .env_remove("RUST_LOG")
        .env("DATABASE_URL", db.url())
        .output();
    let output = tokio::time::timeout(WAIT, output)
        .await
        .expect("the command ends")
        .expect("run netbox-outbox");
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// A nested loop that writes nothing runs out of fuel (the default budget), in the sidecar and
/// in `check`, `test-webhook` and `replay --rerender` alike.
#[tokio::test]
async fn a_template_that_loops_without_writing_runs_out_of_fuel() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let nested =
        "'{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}'";
    scene(&client, &receiver, &[("body_template", nested)], "null").await;
    let sidecar = Sidecar::start(&db, test_config(""));
    let alpha = insert_site(&client, "alpha").await;
    let (state, error) = finished(&client, "bad", alpha).await;
    assert_eq!(state, "rejected", "{error}");
    for fragment in ["webhook \"bad\"", "body_template", "netbox.template_fuel"] {
        assert!(
            error.contains(fragment),
            "{fragment:?} missing from {error}"
        );
    }
    good_receives(&receiver, "dcim.site", "alpha").await;
    sidecar.stop().await;

    let rejected: i64 = client
        .query_one(
            "select id from netbox_outbox.delivery where event_rule_name = 'bad'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rejected = rejected.to_string();
    // check warns (a template may fail only for its sample event); the others fail.
    let (_, said) = cli(&db, &["check"]).await;
    assert!(said.contains("netbox.template_fuel"), "{said}");
    for args in [
        vec!["test-webhook", "bad", "--dry-run"],
        vec!["replay", "--rerender", "--delivery", &rejected],
    ] {
        let (code, said) = cli(&db, &args).await;
        assert_ne!(code, Some(0), "{args:?}: {said}");
        assert!(said.contains("netbox.template_fuel"), "{args:?}: {said}");
    }
}

/// A template writing more than template_max_bytes (1 MiB by default) is rejected.
#[tokio::test]
async fn a_template_with_a_huge_output_is_rejected() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let huge = "'{% for i in range(100000) %}{{ data }}{% endfor %}'";
    scene(&client, &receiver, &[("body_template", huge)], "null").await;
    let sidecar = Sidecar::start(&db, test_config(""));
    let alpha = insert_site(&client, "alpha").await;
    let (state, error) = finished(&client, "bad", alpha).await;
    assert_eq!(state, "rejected", "{error}");
    for fragment in [
        "webhook \"bad\"",
        "body_template",
        "1048576 bytes (netbox.template_max_bytes)",
    ] {
        assert!(
            error.contains(fragment),
            "{fragment:?} missing from {error}"
        );
    }
    good_receives(&receiver, "dcim.site", "alpha").await;
    sidecar.stop().await;
}

/// The deferred rows of netbox_outbox.failed: (object_type, object_id, reason, rules).
async fn deferred(client: &Client) -> Vec<(String, i64, String, String)> {
    client
        .query(
            "select object_type, object_id, last_error, coalesce(event_rule_name, '')
             from netbox_outbox.failed where state = 'deferred' order by event_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// NetBox renames a column a site's payload needs (its ASNs): sites are deferred, RIRs are
/// delivered; renamed back, the site is delivered by the same sidecar.
#[tokio::test]
async fn a_renamed_column_defers_only_its_model_until_renamed_back() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    scene(&client, &receiver, &[], "null").await;
    client
        .batch_execute("alter table dcim_site_asns rename column site_id to site_ref")
        .await
        .unwrap();
    let sidecar = Sidecar::start(
        &db,
        test_config("[assembly]\ndeferred_retry_interval = \"200ms\"\n"),
    );
    let alpha = insert_site(&client, "alpha").await;
    insert_rir(&client, "rir-1").await;
    good_receives(&receiver, "ipam.rir", "rir-1").await;
    let rows = eventually("the site's event to be deferred", WAIT, || async {
        let rows = deferred(&client).await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (model, object, reason, rules) = &rows[0];
    assert_eq!((model.as_str(), *object), ("dcim.site", alpha));
    assert_eq!(rules, "good");
    for fragment in ["dcim.site could not be read", "site_id", "does not exist"] {
        assert!(
            reason.contains(fragment),
            "{fragment:?} missing from {reason}"
        );
    }
    // Retried, and still deferred (not sent, not lost) while the column is renamed.
    eventually("a retry", WAIT, || async {
        client
            .query_one("select max(attempts) from netbox_outbox.deferred", &[])
            .await
            .unwrap()
            .get::<_, Option<i32>>(0)
            .filter(|n| *n > 1)
    })
    .await;
    assert!(!good_received(&receiver, "dcim.site", "alpha"));

    client
        .batch_execute("alter table dcim_site_asns rename column site_ref to site_id")
        .await
        .unwrap();
    good_receives(&receiver, "dcim.site", "alpha").await;
    assert!(deferred(&client).await.is_empty());
    let deliveries: i32 = client
        .query_one(
            "select deliveries from netbox_outbox.event where object_type = 'dcim.site' and object_id = $1",
            &[&alpha],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(deliveries, 1);
    sidecar.stop().await;
}

/// A DBA revokes SELECT on dcim_site from the sidecar's least-privilege role: sites are
/// deferred, RIRs delivered; granted again, the site is delivered without a restart.
#[tokio::test]
async fn a_revoked_select_defers_only_its_model_until_granted() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let role = least_privilege_role(&db);
    let receiver = Receiver::start().await.unwrap();
    scene(&client, &receiver, &[], "null").await;
    // Taken off the sidecar's list too: sync() would otherwise grant it back (V5).
    client
        .batch_execute(&format!(
            "delete from netbox_outbox.sidecar_grant where object_name = 'public.dcim_site';
             revoke select on dcim_site from {role}"
        ))
        .await
        .unwrap();

    let restricted = TestDb::attach(&db, &role);
    let sidecar = Sidecar::start(
        &restricted,
        test_config("[assembly]\ndeferred_retry_interval = \"200ms\"\n"),
    );
    let alpha = insert_site(&client, "alpha").await;
    insert_rir(&client, "rir-1").await;
    good_receives(&receiver, "ipam.rir", "rir-1").await;
    let rows = eventually("the site's event to be deferred", WAIT, || async {
        let rows = deferred(&client).await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (model, object, reason, _) = &rows[0];
    assert_eq!((model.as_str(), *object), ("dcim.site", alpha));
    assert!(
        reason.contains("permission denied for table dcim_site"),
        "{reason}"
    );
    assert!(!good_received(&receiver, "dcim.site", "alpha"));

    // Back on the list, and applied as the owner would (sql/roles.sql runs refresh_grants()).
    client
        .batch_execute(
            "insert into netbox_outbox.sidecar_grant (object_kind, object_name, privileges, reason)
             values ('table', 'public.dcim_site', '{select}', 'back');
             select * from netbox_outbox.refresh_grants()",
        )
        .await
        .unwrap();
    good_receives(&receiver, "dcim.site", "alpha").await;
    assert!(deferred(&client).await.is_empty());
    sidecar.stop().await;
    drop(restricted);
    client
        .batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await
        .unwrap();
}

/// A condition that fails to evaluate for one object (latitude null: `None > 5` is a TypeError
/// in NetBox) rejects that object's delivery only; the other site matches and is sent.
#[tokio::test]
async fn a_condition_failing_for_one_object_rejects_only_its_delivery() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    scene(
        &client,
        &receiver,
        &[],
        r#"'{"attr": "latitude", "op": "gt", "value": 5}'"#,
    )
    .await;
    let sidecar = Sidecar::start(&db, test_config(""));
    let nowhere = insert_site(&client, "nowhere").await;
    let north: i64 = client
        .query_one(
            "insert into dcim_site (created, last_updated, name, slug, latitude)
             values (now(), now(), 'north', 'north', 45.5) returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (state, error) = finished(&client, "bad", nowhere).await;
    assert_eq!(state, "rejected", "{error}");
    for fragment in ["event rule \"bad\"", "conditions", "latitude"] {
        assert!(
            error.contains(fragment),
            "{fragment:?} missing from {error}"
        );
    }
    let (state, error) = finished(&client, "bad", north).await;
    assert_eq!(state, "delivered", "{error}");
    good_receives(&receiver, "dcim.site", "nowhere").await;
    good_receives(&receiver, "dcim.site", "north").await;
    sidecar.stop().await;
}
