//! Operating netbox-outbox: the commands, the SQL cookbook, the metrics endpoint, a
//! least-privilege role, and a clean uninstall.

use std::process::Command;
use std::time::Duration;

use netbox_outbox::commands::receive::{Receiver, Reply};

use crate::support::cli::{cli, err, out};
use crate::support::db::{TestDb, insert_site, psql_file};
use crate::support::rules::{Rule, webhook};
use crate::support::sidecar::{Sidecar, test_config};
use crate::support::wait::eventually;

const WAIT: Duration = Duration::from_secs(20);

/// A database with a webhook "crm", a rule, and deliveries: one delivered, one dead.
async fn with_history() -> (TestDb, tokio_postgres::Client, Receiver) {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(&client, "crm", &receiver.url("/hook"), &[("secret", "'k'")]).await;
    Rule::to_webhook("sites", hook).create(&client).await;
    let sidecar = Sidecar::start(&db, test_config("[delivery]\nretry_schedule = []\n"));
    insert_site(&client, "delivered").await;
    receiver.wait_for(1, WAIT).await.unwrap();
    receiver.script([Reply::Status(500)]);
    insert_site(&client, "dead").await;
    eventually("one delivered and one dead delivery", WAIT, || async {
        let n: i64 = client
            .query_one("select count(*) from netbox_outbox.delivery where state in ('delivered', 'dead') and finished_at is not null", &[])
            .await
            .unwrap()
            .get(0);
        (n == 2).then_some(())
    })
    .await;
    sidecar.stop().await;
    (db, client, receiver)
}

/// Every statement of sql/cookbook.sql runs without error against a database with history.
#[tokio::test]
async fn the_cookbook_runs() {
    let (_db, client, _receiver) = with_history().await;
    let cookbook = include_str!("../../sql/cookbook.sql");
    let mut count = 0;
    for statement in cookbook.split(";\n").map(str::trim) {
        let code: String = statement
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        if code.trim().is_empty() {
            continue;
        }
        client.simple_query(&code).await.unwrap_or_else(|e| {
            panic!(
                "cookbook statement failed: {code}\n{}",
                netbox_outbox::error_chain(&e)
            )
        });
        count += 1;
    }
    assert!(count >= 25, "only {count} statements ran");
}

/// `status` shows the backlog, dead deliveries, pauses, capture and sidecars, as text and JSON.
#[tokio::test]
async fn status_reports_queue_failures_and_sidecars() {
    let (db, client, _receiver) = with_history().await;
    client
        .batch_execute("select netbox_outbox.pause_webhook('crm', 'maintenance')")
        .await
        .unwrap();
    // nothing unread once the sidecar has caught up; then two changes it has not read (it is
    // stopped), committed in the past so the oldest has an age status must show
    let caught_up = cli(&db, &["status", "--json"]).await;
    let caught_up: serde_json::Value =
        serde_json::from_slice(&caught_up.stdout).expect("JSON status");
    assert_eq!(caught_up["capture"]["unread_changes"], 0, "{caught_up}");
    assert_eq!(caught_up["capture"]["oldest_unread_seconds"], 0.0);
    insert_site(&client, "unread 1").await;
    insert_site(&client, "unread 2").await;
    client
        .batch_execute(
            "update netbox_outbox.change set captured_at = now() - interval '10 minutes'
             where id = (select max(id) from netbox_outbox.change)",
        )
        .await
        .unwrap();
    let text = cli(&db, &["status"]).await;
    assert_eq!(text.status.code(), Some(0), "{}", err(&text));
    let text = out(&text);
    assert!(text.contains("capture: mode all"), "{text}");
    assert!(
        text.contains("2 unread changes (oldest 10m)"),
        "unread changes and the oldest's age: {text}"
    );
    assert!(text.contains("crm"), "{text}");
    assert!(text.contains("paused by an operator"), "{text}");
    let json = cli(&db, &["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON status");
    let crm = &status["webhooks"][0];
    assert_eq!(crm["webhook"], "crm");
    assert_eq!(crm["dead"], 1);
    assert_eq!(crm["paused"], true);
    assert_eq!(status["sidecars"][0]["state"], "stopped");
    assert!(status["capture"]["watched_tables"].as_i64().unwrap() > 20);
    assert_eq!(
        status["capture"]["retention_days"], 7,
        "a number, not a string"
    );
    assert_eq!(status["capture"]["unread_changes"], 2, "{status}");
    let oldest = status["capture"]["oldest_unread_seconds"].as_f64().unwrap();
    assert!((600.0..3600.0).contains(&oldest), "{oldest}");
    // the text table: each webhook row's STATE starts under its header
    let header = text
        .lines()
        .find(|l| l.contains("WEBHOOK"))
        .expect("header");
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("crm"))
        .expect("crm row");
    assert_eq!(header.find("STATE"), row.find("paused by"), "{text}");
}

/// `replay` sends dead deliveries again (dry run first); bad selections say what to write.
#[tokio::test]
async fn replay_by_selection() {
    let (db, client, receiver) = with_history().await;
    let dry = cli(
        &db,
        &["replay", "--webhook", "crm", "--since", "1h", "--dry-run"],
    )
    .await;
    assert_eq!(dry.status.code(), Some(0), "{}", err(&dry));
    assert_eq!(out(&dry).trim(), "1 deliveries would be replayed");
    let replayed = cli(&db, &["replay", "--object", "dcim.site:2"]).await;
    assert_eq!(
        out(&replayed).trim(),
        "1 deliveries replayed",
        "{}",
        err(&replayed)
    );
    let all = cli(
        &db,
        &[
            "replay",
            "--object",
            "dcim.site",
            "--state",
            "dead,delivered",
            "--dry-run",
        ],
    )
    .await;
    // site 2's original is replayed now (never selected again), its copy pending
    assert_eq!(out(&all).trim(), "1 deliveries would be replayed");

    let sidecar = Sidecar::start(&db, test_config(""));
    let before = receiver.count();
    let got = receiver.wait_for(before + 1, WAIT).await.unwrap();
    assert_eq!(got.last().unwrap().json()["data"]["name"], "dead");
    let original: String = client
        .query_one(
            "select state from netbox_outbox.delivery where replay_of is null and object_id = 2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        original, "replayed",
        "the original stays in the log, replayed"
    );
    sidecar.stop().await;

    let none = cli(&db, &["replay"]).await;
    assert_eq!(none.status.code(), Some(2));
    assert!(err(&none).contains("say what to replay"), "{}", err(&none));
    let bad = cli(&db, &["replay", "--object", "device:1"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(err(&bad).contains("app_label.model"), "{}", err(&bad));
    let unknown = cli(&db, &["replay", "--webhook", "nope"]).await;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        err(&unknown).contains("no webhook named nope"),
        "{}",
        err(&unknown)
    );
}

/// `check` passes on a sound setup and names each misconfiguration, exiting with 5.
#[tokio::test]
async fn check_finds_misconfigurations() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let good = Rule::new("good", &receiver.url("/"))
        .create(&client)
        .await
        .webhook;
    let ok = cli(&db, &["check"]).await;
    assert_eq!(ok.status.code(), Some(0), "{}{}", out(&ok), err(&ok));
    assert!(out(&ok).contains("migrations are current"));
    assert!(
        out(&ok).contains("answers (HTTP 200 to HEAD)"),
        "{}",
        out(&ok)
    );

    // (webhook name, URL, extra columns, the problem check must name)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 6] = [
        (
            "bad template",
            "http://127.0.0.1:1/",
            &[("body_template", "'{% if %}'")],
            "body_template does not parse",
        ),
        (
            "bad scheme",
            "ftp://example.net/x",
            &[],
            "unsupported scheme",
        ),
        (
            "missing ca",
            "https://127.0.0.1:1/",
            &[("ca_file_path", "'/nonexistent/ca.pem'")],
            "ca_file_path /nonexistent/ca.pem: cannot read it",
        ),
        (
            "not a cert",
            "https://127.0.0.1:1/",
            &[("ca_file_path", "'/etc/hostname'")],
            "not a PEM certificate bundle",
        ),
        (
            "control char",
            "http://127.0.0.1:1/",
            &[("additional_headers", "E'X-A: b\\x07'")],
            "control character",
        ),
        (
            "unreachable",
            "http://127.0.0.1:1/",
            &[],
            "connection failed",
        ),
    ];
    for (name, url, extra, _) in cases {
        Rule::new(name, url)
            .webhook_columns(extra)
            .create(&client)
            .await;
    }
    Rule::to_webhook("bad condition", good)
        .conditions(r#"'{"attr": "x", "op": "nope", "value": 1}'"#)
        .create(&client)
        .await;
    let bad = cli(&db, &["check"]).await;
    assert_eq!(bad.status.code(), Some(5));
    let report = out(&bad);
    for (name, _, _, expected) in cases {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("PROBLEM") && l.contains(name) && l.contains(expected)),
            "{name}: {expected:?} not in:\n{report}"
        );
    }
    assert!(report.contains("unknown operator \"nope\""), "{report}");
    let offline = cli(&db, &["check", "--offline"]).await;
    assert!(!out(&offline).contains("connection failed"));

    client
        .batch_execute("drop trigger netbox_outbox_capture on dcim_site")
        .await
        .unwrap();
    let missing = out(&cli(&db, &["check", "--offline"]).await);
    assert!(
        missing.contains(
            "watched tables without a capture trigger (changes to them are missed): dcim_site"
        ),
        "{missing}"
    );
}

/// `test-webhook` renders a real object's request, sends it, and shows the answer.
#[tokio::test]
async fn test_webhook_shows_request_and_answer() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(
        &client,
        "crm",
        &receiver.url("/hook/{{ object_type }}"),
        &[("secret", "'k'")],
    )
    .await;
    Rule::to_webhook("sites", hook).create(&client).await;
    insert_site(&client, "alpha").await;
    let dry = cli(&db, &["test-webhook", "crm", "--dry-run"]).await;
    assert_eq!(dry.status.code(), Some(0), "{}", err(&dry));
    let shown = out(&dry);
    assert!(
        shown.contains(&format!("POST {}", receiver.url("/hook/dcim.site"))),
        "{shown}"
    );
    assert!(shown.contains("X-Hook-Signature: "), "{shown}");
    assert!(!shown.contains("\"k\""), "the secret is never shown");
    assert_eq!(receiver.count(), 0);

    let sent = cli(
        &db,
        &[
            "test-webhook",
            "crm",
            "--object",
            "dcim.site:1",
            "--event",
            "created",
        ],
    )
    .await;
    assert_eq!(sent.status.code(), Some(0), "{}{}", out(&sent), err(&sent));
    assert!(out(&sent).contains("HTTP 200 (success)"));
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].signature_valid("k"));
    assert_eq!(got[0].json()["event"], "created");

    receiver.default_reply(Reply::Status(503));
    let failed = cli(&db, &["test-webhook", "crm"]).await;
    assert_eq!(failed.status.code(), Some(1));
    assert!(out(&failed).contains("HTTP 503"));
    let unknown = cli(&db, &["test-webhook", "nope"]).await;
    assert_eq!(unknown.status.code(), Some(2));
}

/// The metrics endpoint serves Prometheus text with the documented series; health and
/// readiness answer.
#[tokio::test]
async fn metrics_and_health_endpoints() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(&client, "crm", &receiver.url("/hook"), &[]).await;
    Rule::to_webhook("sites", hook).create(&client).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sidecar = Sidecar::start(
        &db,
        test_config(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")),
    );
    insert_site(&client, "alpha").await;
    receiver.wait_for(1, WAIT).await.unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let body = eventually("the delivery to show in the metrics", WAIT, || async {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("netbox_outbox_deliveries_total{")
            .then_some(text)
    })
    .await;
    // parse the exposition format: every sample line is `name{labels} value`
    let mut names = std::collections::HashSet::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad sample value in {line}"));
        names.insert(series.split('{').next().unwrap().to_string());
    }
    for expected in [
        "netbox_outbox_deliveries_total",
        "netbox_outbox_attempt_duration_seconds_bucket",
        "netbox_outbox_changes_read_total",
        "netbox_outbox_events_total",
        "netbox_outbox_deliveries_created_total",
        "netbox_outbox_claim_duration_seconds_count",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(body.contains("outcome=\"delivered\"") && body.contains("webhook=\"crm\""));
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    sidecar.stop().await;
}

/// Runs one of sql/*.sql as the database's owner (psql, as the docs say), with `-v` variables.
/// The message of a statement the sidecar's role must not be allowed to run.
async fn denied(client: &tokio_postgres::Client, sql: &str) -> String {
    let error = client
        .batch_execute(sql)
        .await
        .expect_err(&format!("the sidecar's role may not run: {sql}"));
    let message = error.as_db_error().expect("a database error").message();
    assert!(message.contains("permission denied"), "{sql}: {message}");
    message.to_string()
}

/// The role set up as docs/install.md says (sql/create-role.sql, then sql/roles.sql, both run
/// twice: they are re-run after upgrades) runs the sidecar, which renders and delivers, and it
/// reads nothing NetBox keeps secret and forges nothing: no token, session or password hash, no
/// write to the capture, its settings or the watch list, no NetBox write. Grants made by the
/// roles.sql of before V5 are taken back; a table NetBox creates later is covered by
/// refresh_grants() when the catalogue renders it, and not when it is a token table.
#[tokio::test]
async fn the_sidecar_runs_with_the_least_privilege_role() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let role = format!("nbo_sidecar_{}", db.name);
    // NetBox's secrets (not in the fixture schema) and what the roles.sql of before V5 granted.
    client
        .batch_execute(&format!(
            "create table django_session (session_key varchar(40) primary key, session_data text);
             insert into django_session values ('s1', 'session secret');
             update users_user set password = 'pbkdf2_sha256$hash' where username = 'alice';
             create role {role} login;
             grant select on all tables in schema public to {role};
             alter default privileges in schema public grant select on tables to {role};
             grant select, insert, update, delete on all tables in schema netbox_outbox to {role};
             grant execute on all functions in schema netbox_outbox to {role};"
        ))
        .await
        .unwrap();
    for _ in 0..2 {
        let created = psql_file(
            &db,
            "create-role.sql",
            &[("role", &role), ("password", "secret")],
        );
        assert!(created.status.success(), "{}", err(&created));
        let granted = psql_file(&db, "roles.sql", &[("role", &role)]);
        assert!(granted.status.success(), "{}", err(&granted));
    }
    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(&client, "crm", &receiver.url("/hook"), &[]).await;
    Rule::to_webhook("sites and owners", hook)
        .models(&["dcim.site", "users.owner"])
        .create(&client)
        .await;

    let restricted = TestDb::attach(&db, &role);
    let sidecar = Sidecar::start(&restricted, test_config(""));
    insert_site(&client, "alpha").await;
    // An owner whose users are rendered: users_user is readable but for the password hash.
    client
        .batch_execute(
            "with o as (insert into users_owner (name) values ('ops') returning id)
             insert into users_owner_users (owner_id, user_id) select o.id, u.id from o, users_user u where u.username = 'alice'",
        )
        .await
        .unwrap();
    let received = receiver.wait_for(2, WAIT).await.unwrap();
    let owner = received
        .iter()
        .map(|r| r.json())
        .find(|body| body["object_type"] == "users.owner")
        .unwrap_or_else(|| {
            panic!(
                "the owner's webhook: {:?}",
                received.iter().map(|r| r.json()).collect::<Vec<_>>()
            )
        });
    assert_eq!(owner["data"]["users"][0]["username"], "alice");
    assert!(
        received
            .iter()
            .all(|r| !String::from_utf8_lossy(&r.body).contains("pbkdf2"))
    );
    sidecar.stop().await;

    // NetBox creates tables later (an upgrade): one the catalogue renders, and a token table.
    client
        .batch_execute(
            "create table wireless_wirelesslan (id bigint primary key, ssid varchar(32));
             create table users_token (id bigint primary key, key varchar(40), user_id bigint);
             insert into users_token values (1, '0123456789abcdef0123456789abcdef01234567', 1);
             select * from netbox_outbox.refresh_grants();",
        )
        .await
        .unwrap();

    let as_sidecar = restricted.database.connect().await.unwrap();
    as_sidecar
        .batch_execute(
            "select id, username, first_name from users_user;
             select * from wireless_wirelesslan; select * from core_objectchange;
             select * from extras_webhook; select * from netbox_outbox.change;",
        )
        .await
        .expect("the sidecar reads what it renders");
    denied(&as_sidecar, "select key from users_token").await;
    denied(&as_sidecar, "select * from django_session").await;
    denied(&as_sidecar, "select password from users_user").await;
    denied(&as_sidecar, "select row_to_json(u) from users_user u").await;
    denied(
        &as_sidecar,
        "insert into dcim_site (name, slug) values ('x', 'x')",
    )
    .await;
    // Forging captured history, switching the capture off, changing what is watched.
    denied(
        &as_sidecar,
        "insert into netbox_outbox.change (content_type_id, object_id, kind, db_user, application_name)
         values (1, 1, 'D', 'admin', 'netbox')",
    )
    .await;
    denied(
        &as_sidecar,
        "insert into netbox_outbox.changelog (content_type_id, object_id, objectchange_id, entry)
         values (1, 1, 1, '{}')",
    )
    .await;
    denied(
        &as_sidecar,
        "update netbox_outbox.setting set value = 'netbox' where name = 'capture_mode'",
    )
    .await;
    denied(&as_sidecar, "delete from netbox_outbox.ignored_column").await;
    denied(&as_sidecar, "select netbox_outbox.unwatch('dcim.site')").await;
    denied(&as_sidecar, "select netbox_outbox.watch('users.user')").await;
    denied(&as_sidecar, "select * from netbox_outbox.refresh_grants()").await;
    denied(&as_sidecar, "truncate netbox_outbox.event").await;
    // Enough transactions for full BRIN ranges, so that summarize_capture() really summarizes
    // (which only the index's owner may do: it must run as the migrations' owner).
    for round in 0..600 {
        client
            .execute(
                "update dcim_site set description = repeat('x', 150) || $1, last_updated = now()",
                &[&round.to_string()],
            )
            .await
            .unwrap();
    }
    as_sidecar
        .batch_execute(
            "select * from netbox_outbox.sync(); select * from netbox_outbox.prune();
             select netbox_outbox.summarize_capture()",
        )
        .await
        .unwrap();
    drop(as_sidecar);
    drop(restricted);
    client
        .batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await
        .unwrap();
}

/// The NetBox tables the sidecar's role may read are the catalogue's (every model's table and
/// many-to-many table, src/netbox/catalogue/) plus the three it reads beyond them, no more: a
/// new catalogue (a NetBox upgrade) that renders another table fails here until a migration adds
/// it to netbox_outbox.sidecar_grant.
#[tokio::test]
async fn the_sidecar_reads_exactly_the_catalogue() {
    fn tables(value: &serde_json::Value, into: &mut std::collections::BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("table", serde_json::Value::String(t)) => {
                            into.insert(format!("public.{t}"));
                        }
                        _ => tables(v, into),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| tables(v, into)),
            _ => {}
        }
    }
    let catalogue: serde_json::Value =
        serde_json::from_str(include_str!("../../src/netbox/catalogue/netbox-4.7.3.json")).unwrap();
    let mut expected = std::collections::BTreeSet::new();
    tables(&catalogue, &mut expected);
    for beyond in [
        "core_objecttype",
        "core_objectchange",
        "dcim_cablepath",
        "django_migrations",
    ] {
        expected.insert(format!("public.{beyond}"));
    }
    let db = TestDb::migrated().await;
    let granted: std::collections::BTreeSet<String> = db
        .client()
        .await
        .query(
            "select object_name from netbox_outbox.sidecar_grant
             where object_kind = 'table' and object_name like 'public.%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(granted, expected);
}

/// An installation upgraded from before V5 has a sidecar role set up by the old roles.sql (every
/// NetBox table, write on every table of ours, EXECUTE on every function, default privileges for
/// new ones). The migration records it and cuts it down to the list at once: it keeps what it
/// needs, loses the capture's write access and the password hashes, and gets nothing of V5's own
/// tables and functions through the old default privileges.
#[tokio::test]
async fn the_v5_migration_cuts_an_old_sidecar_role_down() {
    let db = TestDb::bare().await;
    let client = db.client().await;
    let role = format!("nbo_old_sidecar_{}", db.name);
    let apply = |path: String, vars: Vec<(&'static str, String)>| {
        let mut psql = Command::new("psql");
        psql.arg(db.url())
            .args(["-q", "-1", "-v", "ON_ERROR_STOP=1"]);
        for (name, value) in vars {
            psql.arg("-v").arg(format!("{name}={value}"));
        }
        let done = psql.arg("-f").arg(&path).output().expect("run psql");
        assert!(done.status.success(), "{path}: {}", err(&done));
    };
    let root = env!("CARGO_MANIFEST_DIR");
    for version in [
        "V1__capture",
        "V2__delivery",
        "V3__operator_views",
        "V4__summarize_capture",
    ] {
        apply(format!("{root}/migrations/{version}.sql"), vec![]);
    }
    apply(
        format!("{root}/tests/fixtures/roles_before_v5.sql"),
        vec![("role", role.clone()), ("password", "'secret'".into())],
    );
    apply(format!("{root}/migrations/V5__least_privilege.sql"), vec![]);

    let rights: Vec<bool> = client
        .query_one(
            "select array[
                 has_table_privilege($1, 'public.dcim_site', 'select'),
                 has_column_privilege($1, 'public.users_user', 'username', 'select'),
                 has_function_privilege($1, 'netbox_outbox.claim(bigint[], bigint[], bigint, uuid)', 'execute'),
                 has_table_privilege($1, 'netbox_outbox.delivery', 'insert'),
                 has_column_privilege($1, 'public.users_user', 'password', 'select'),
                 has_table_privilege($1, 'netbox_outbox.change', 'insert'),
                 has_table_privilege($1, 'netbox_outbox.setting', 'update'),
                 has_function_privilege($1, 'netbox_outbox.watch(text)', 'execute'),
                 has_table_privilege($1, 'netbox_outbox.sidecar_grant', 'insert'),
                 has_function_privilege($1, 'netbox_outbox.refresh_grants()', 'execute'),
                 exists (select 1 from pg_default_acl d, aclexplode(d.defaclacl) a where a.grantee = $1::regrole)]",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rights,
        [
            true, true, true, true, false, false, false, false, false, false, false
        ],
        "kept: read a site, a user's name, claim, insert deliveries; lost: password hashes, write \
         the capture or its settings, watch, write its own grants, refresh grants, default privileges"
    );
    client
        .batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await
        .unwrap();
}

/// The role setup refuses a role that does not exist and a superuser, saying what to do.
#[tokio::test]
async fn the_role_setup_names_a_missing_or_superuser_role() {
    let db = TestDb::migrated().await;
    let missing = psql_file(&db, "roles.sql", &[("role", "nbo_no_such_role")]);
    assert!(!missing.status.success());
    assert!(
        err(&missing).contains("role nbo_no_such_role does not exist")
            && err(&missing).contains("sql/create-role.sql"),
        "{}",
        err(&missing)
    );
    let superuser = psql_file(&db, "roles.sql", &[("role", "postgres")]);
    assert!(!superuser.status.success());
    assert!(
        err(&superuser).contains("role postgres is a superuser"),
        "{}",
        err(&superuser)
    );
    let unnamed = psql_file(&db, "roles.sql", &[]);
    assert!(!unnamed.status.success());
    assert!(
        err(&unnamed).contains("give the sidecar's role name"),
        "{}",
        err(&unnamed)
    );
}

/// sql/uninstall.sql removes every object of ours and leaves NetBox's tables as they were.
#[tokio::test]
async fn uninstall_leaves_netbox_as_it_was() {
    let db = TestDb::bare().await;
    let client = db.client().await;
    let netbox_before = netbox_fingerprint(&client).await;
    netbox_outbox::migrations::run(&mut db.client().await)
        .await
        .unwrap();
    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(&client, "crm", &receiver.url("/hook"), &[]).await;
    Rule::to_webhook("sites", hook).create(&client).await;
    let sidecar = Sidecar::start(&db, test_config(""));
    insert_site(&client, "alpha").await;
    receiver.wait_for(1, WAIT).await.unwrap();
    sidecar.stop().await;
    client
        .batch_execute("delete from extras_eventrule_object_types; delete from extras_eventrule; delete from extras_webhook; delete from dcim_site")
        .await
        .unwrap();

    let psql = Command::new("psql")
        .arg(db.url())
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/uninstall.sql"))
        .output()
        .unwrap();
    assert!(psql.status.success(), "{}", err(&psql));
    let leftovers: i64 = client
        .query_one(
            "select (select count(*) from pg_namespace where nspname = 'netbox_outbox')
                  + (select count(*) from pg_trigger where tgname like 'netbox_outbox%')
                  + (select count(*) from pg_event_trigger where evtname like 'netbox_outbox%')
                  + (select count(*) from pg_proc where proname like '%netbox_outbox%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0);
    assert_eq!(netbox_fingerprint(&client).await, netbox_before);
    // NetBox writes work as before
    insert_site(&client, "after").await;
}

/// NetBox's tables as comparable text: columns, indexes, triggers, constraints.
async fn netbox_fingerprint(client: &tokio_postgres::Client) -> Vec<String> {
    let mut rows: Vec<String> = client
        .query(
            "select 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' || coalesce(column_default, '')
               from information_schema.columns where table_schema = 'public'
             union all select 'index ' || indexdef from pg_indexes where schemaname = 'public'
             union all select 'trigger ' || tgrelid::regclass::text || ' ' || tgname from pg_trigger where not tgisinternal
             union all select 'constraint ' || conrelid::regclass::text || ' ' || conname from pg_constraint
               where connamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    rows.sort();
    rows
}
