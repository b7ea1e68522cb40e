//! Which NetBox release the database holds, read from NetBox's applied migrations: `check` says
//! which (and which catalogue renders it), an unknown release is refused by `check` and at `run`
//! start naming what was found and the override, and `[netbox] version` overrides it.

use std::process::Stdio;
use std::time::Duration;

use netbox_outbox::commands::receive::Receiver;

use crate::support::cli::{cli, cli_env, err, out};
use crate::support::db::{TestDb, insert_site};
use crate::support::rules::{Rule, webhook};

const WAIT: Duration = Duration::from_secs(30);

/// The fixture's migrations are 4.7.3's, which 4.7.1 and 4.7.2 share: 4.7.3 is assumed, with a
/// warning, and `[netbox] version` picks among them.
#[tokio::test]
async fn check_names_the_release_the_migrations_say() {
    let db = TestDb::migrated().await;
    let o = cli(&db, &["check", "--offline"]).await;
    let text = out(&o);
    assert!(
        text.contains("warning  NetBox 4.7.3 assumed: the migrations say NetBox 4.7.1 to 4.7.3 (the same migrations), whose webhooks differ"),
        "{text}"
    );
    assert!(
        text.contains("set [netbox] version = \"4.7.1\" or \"4.7.2\""),
        "{text}"
    );
    let o = cli_env(
        &["check", "--offline"],
        &[
            ("DATABASE_URL", &db.url()),
            ("NETBOX_OUTBOX_NETBOX__VERSION", "4.7.1"),
        ],
    )
    .await;
    let text = out(&o);
    assert!(
        text.contains("ok       NetBox 4.7.1 ([netbox] version; the migrations say NetBox 4.7.1 to 4.7.3 (the same migrations))"),
        "{text}"
    );
    // the schema is compared with that release's catalogue
    assert!(text.contains("the 4.7.1 catalogue"), "{text}");

    // 4.7.1 added these three; without them the database is 4.7.0's
    db.client()
        .await
        .batch_execute(
            "delete from django_migrations where name in ('0251_fix_ltree_cascade_triggers',
                '0027_fix_ltree_cascade_triggers', '0024_fix_ltree_cascade_triggers')",
        )
        .await
        .unwrap();
    let o = cli(&db, &["check", "--offline"]).await;
    let text = out(&o);
    assert!(
        text.contains("ok       NetBox 4.7.0 (from its migrations)"),
        "{text}"
    );
    assert!(!text.contains("PROBLEM  the database holds"), "{text}");
}

/// A migration no known release has: `check` and `run` refuse, naming the release found, the
/// migration, the releases known and the override.
#[tokio::test]
async fn an_unknown_release_is_refused_by_check_and_run() {
    let db = TestDb::migrated().await;
    db.client()
        .await
        .batch_execute(
            "insert into django_migrations (app, name) values ('dcim', '0252_from_the_future')",
        )
        .await
        .unwrap();
    let expected = [
        "the database holds a NetBox newer than 4.7.3 (dcim 0252_from_the_future (4.7.3: 0251_fix_ltree_cascade_triggers))",
        "it knows 4.7.0, 4.7.1, 4.7.2, 4.7.3",
        "[netbox] version = \"4.7.3\"",
        "NETBOX_OUTBOX_NETBOX__VERSION=4.7.3",
    ];

    let o = cli(&db, &["check", "--offline"]).await;
    assert_eq!(o.status.code(), Some(5), "{}{}", out(&o), err(&o));
    let text = out(&o);
    let line = text
        .lines()
        .find(|l| l.starts_with("PROBLEM  the database holds"))
        .unwrap_or_else(|| panic!("no PROBLEM about the release in:\n{text}"));
    for e in expected {
        assert!(line.contains(e), "{e:?} not in {line:?}");
    }

    let o = cli_env(
        &["run"],
        &[
            ("DATABASE_URL", &db.url()),
            ("NETBOX_OUTBOX_METRICS__LISTEN", ""),
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(5), "{}", err(&o));
    let e = err(&o);
    for wanted in expected {
        assert!(e.contains(wanted), "{wanted:?} not in {e:?}");
    }
    // it stopped before registering: nothing runs on an unknown release
    let registered: i64 = db
        .client()
        .await
        .query_one("select count(*) from netbox_outbox.sidecar", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(registered, 0);

    // no django_migrations at all (not NetBox's database, or a role that cannot read it is
    // an error instead): older than any release
    db.client()
        .await
        .batch_execute("delete from django_migrations")
        .await
        .unwrap();
    let o = cli(&db, &["check", "--offline"]).await;
    assert!(
        out(&o).contains("PROBLEM  the database holds a NetBox older than 4.7.0 (circuits none (4.7.0: 0060_denormalization_triggers)"),
        "{}",
        out(&o)
    );
    assert!(
        out(&o).contains("[netbox] version = \"4.7.0\""),
        "{}",
        out(&o)
    );
}

/// `[netbox] version` (here NETBOX_OUTBOX_NETBOX__VERSION) overrides an unknown release: `check`
/// warns instead of refusing, and the sidecar starts and delivers.
#[tokio::test]
async fn the_override_runs_an_unknown_release_as_a_known_one() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute(
            "insert into django_migrations (app, name) values ('extras', '0150_from_the_future')",
        )
        .await
        .unwrap();
    let env = [
        ("DATABASE_URL", db.url()),
        ("NETBOX_OUTBOX_NETBOX__VERSION", "4.7.3".to_string()),
        ("NETBOX_OUTBOX_METRICS__LISTEN", String::new()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let o = cli_env(&["check", "--offline"], &env).await;
    let text = out(&o);
    assert!(
        text.contains("warning  NetBox 4.7.3 as [netbox] version says; the migrations say a NetBox newer than 4.7.3 (extras 0150_from_the_future"),
        "{text}"
    );
    assert!(!text.contains("PROBLEM  the database holds"), "{text}");

    // a version it has no catalogue for is a configuration error, not an override
    let mut bad = env.clone();
    bad[1] = ("NETBOX_OUTBOX_NETBOX__VERSION", "4.8.0");
    let o = cli_env(&["check", "--offline"], &bad).await;
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    assert!(err(&o).contains("netbox.version"), "{}", err(&o));
    assert!(
        err(&o).contains("\"4.8.0\" is not a NetBox release"),
        "{}",
        err(&o)
    );

    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(&client, "crm", &receiver.url("/hook"), &[]).await;
    Rule::to_webhook("sites", hook).create(&client).await;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_netbox-outbox"));
    command
        .arg("run")
        .env_remove("NETBOX_OUTBOX_CONFIG")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in &env {
        command.env(k, v);
    }
    let mut sidecar = command.spawn().expect("start the sidecar");
    insert_site(&client, "overridden").await;
    let received = receiver
        .wait_for(1, WAIT)
        .await
        .unwrap_or_else(|e| panic!("the overridden sidecar delivered nothing: {e}"));
    let body: serde_json::Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(body["data"]["name"], "overridden");
    assert!(sidecar.try_wait().unwrap().is_none(), "the sidecar exited");
    sidecar.kill().await.unwrap();
}
