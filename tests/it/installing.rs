//! Installing, as an operator meets it: every command before `migrate`, on a database without
//! NetBox, or as a role without rights, says what is wrong and what to run, with the documented
//! exit code; a `migrate` the database refuses leaves nothing behind; a `migrate` without a
//! superuser says once what the missing DDL trigger means.

use std::process::{Command, Output};

use crate::support::db::TestDb;

fn netbox_outbox(args: &[&str], database_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netbox-outbox"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env_remove("NETBOX_OUTBOX_CONFIG")
        .output()
        .expect("run netbox-outbox")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The commands that read netbox-outbox's tables, as an operator would try them first.
const READERS: [&[&str]; 5] = [
    &["status"],
    &["status", "--json"],
    &["replay", "--since", "1d", "--dry-run"],
    &["check", "--offline"],
    &["test-webhook", "crm", "--dry-run"],
];

async fn schema_exists(db: &TestDb) -> bool {
    db.client()
        .await
        .query_one(
            "select exists (select 1 from pg_namespace where nspname = 'netbox_outbox')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// On NetBox's database before `migrate`: exit 5 and the command to run, never a raw
/// "relation does not exist" or the bad-arguments code.
#[tokio::test]
async fn commands_before_migrate_say_to_run_migrate() {
    let db = TestDb::bare().await;
    for args in READERS {
        let out = netbox_outbox(args, &db.url());
        let said = text(&out);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {said}");
        assert!(
            said.contains("netbox-outbox is not installed")
                && said.contains("netbox-outbox migrate"),
            "{args:?}: {said}"
        );
        assert!(!said.contains("does not exist"), "{args:?}: {said}");
    }
}

/// A database without NetBox (DATABASE_URL pointing elsewhere): every command says so, and
/// `migrate` refuses without creating anything.
#[tokio::test]
async fn a_database_without_netbox_is_named_and_left_untouched() {
    let db = TestDb::empty().await;
    for args in READERS {
        let out = netbox_outbox(args, &db.url());
        let said = text(&out);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {said}");
        assert!(
            said.contains("has neither NetBox's tables") && said.contains("DATABASE_URL"),
            "{args:?}: {said}"
        );
    }
    let out = netbox_outbox(&["migrate"], &db.url());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no NetBox tables") && text(&out).contains("nothing was changed"),
        "{}",
        text(&out)
    );
    assert!(!schema_exists(&db).await, "migrate left a schema behind");
}

/// A role that may create a schema but does not own NetBox's tables: the first migration fails,
/// and the schema and history table made for it are gone again.
#[tokio::test]
async fn migrate_refused_by_the_database_leaves_nothing_behind() {
    let db = TestDb::bare().await;
    let role = format!("nbo_notowner_{}", db.name);
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "drop role if exists {role}; create role {role} login;
             grant create on database {} to {role};",
            db.name
        ))
        .await
        .unwrap();
    let out = netbox_outbox(&["migrate"], &db.database.with_user(&role).libpq_url());
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("permission denied") && said.contains("the role that owns NetBox's tables"),
        "{said}"
    );
    assert!(said.contains("nothing was left in the database"), "{said}");
    assert!(!schema_exists(&db).await, "migrate left a schema behind");
    admin
        .batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await
        .unwrap();
}

/// NetBox's owner is rarely a superuser: `migrate` then installs everything but the DDL event
/// trigger, and says so once, with what it means; the printed SQL says it once too, without
/// a NOTICE per table.
#[tokio::test]
async fn migrate_without_a_superuser_says_once_what_the_missing_ddl_trigger_means() {
    let db = TestDb::bare().await;
    let role = format!("nbo_owner_{}", db.name);
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "drop role if exists {role}; create role {role} login;
             grant create on database {name} to {role};
             do $$ declare t record; begin
                 for t in select tablename from pg_tables where schemaname = 'public' loop
                     execute format('alter table public.%I owner to {role}', t.tablename);
                 end loop;
             end $$;",
            name = db.name
        ))
        .await
        .unwrap();
    let owner_url = db.database.with_user(&role).libpq_url();
    let out = netbox_outbox(&["migrate"], &owner_url);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert_eq!(said.matches("no DDL event trigger").count(), 1, "{said}");
    assert!(said.contains("netbox_outbox.sync()"), "{said}");
    let status = netbox_outbox(&["status"], &owner_url);
    assert!(status.status.success(), "{}", text(&status));

    // The DBA's path on a second database: one WARNING, no NOTICE.
    let other = TestDb::bare().await;
    let script = netbox_outbox(&["migrate", "--print-sql"], &other.url());
    assert!(script.status.success(), "{}", text(&script));
    admin
        .batch_execute(&format!(
            "grant create on database {} to {role}",
            other.name
        ))
        .await
        .unwrap();
    other
        .client()
        .await
        .batch_execute(&format!(
            "do $$ declare t record; begin
                 for t in select tablename from pg_tables where schemaname = 'public' loop
                     execute format('alter table public.%I owner to {role}', t.tablename);
                 end loop;
             end $$;"
        ))
        .await
        .unwrap();
    let file = std::env::temp_dir().join(format!("nbo-{}.sql", other.name));
    std::fs::write(&file, &script.stdout).unwrap();
    let psql = Command::new("psql")
        .arg(other.database.with_user(&role).libpq_url())
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-f"])
        .arg(&file)
        .output()
        .expect("run psql");
    let _ = std::fs::remove_file(&file);
    let said = String::from_utf8_lossy(&psql.stderr).into_owned();
    assert!(psql.status.success(), "{said}");
    assert!(!said.contains("NOTICE"), "{said}");
    assert_eq!(said.matches("no DDL event trigger").count(), 1, "{said}");
    drop(other);
    drop(db);
    // the databases are gone (their Drop waits), so the role owns nothing any more
    admin_client()
        .await
        .batch_execute(&format!("drop role if exists {role}"))
        .await
        .unwrap();
}

async fn admin_client() -> tokio_postgres::Client {
    let url = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    netbox_outbox::db::Database::parse(&url)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A role with a login and no grants (sql/roles.sql not run): exit 1, naming the script that
/// grants what it needs.
#[tokio::test]
async fn a_role_without_rights_is_told_which_grant_it_lacks() {
    let db = TestDb::migrated().await;
    let role = format!("nbo_norights_{}", db.name);
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "drop role if exists {role}; create role {role} login"
        ))
        .await
        .unwrap();
    let url = db.database.with_user(&role).libpq_url();
    for args in [&["status"][..], &["replay", "--since", "1d", "--dry-run"]] {
        let out = netbox_outbox(args, &url);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {said}");
        assert!(
            said.contains(&format!("role {role} may not read")) && said.contains("sql/roles.sql"),
            "{args:?}: {said}"
        );
    }
    admin
        .batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await
        .unwrap();
}

/// A second sidecar on one host (the metrics address taken): exit 3 naming the address and the
/// setting, not a sidecar running on without health endpoints.
#[tokio::test]
async fn a_metrics_address_in_use_stops_the_start() {
    let db = TestDb::migrated().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_netbox-outbox"))
        .arg("run")
        .env("DATABASE_URL", db.url())
        .env("NETBOX_OUTBOX_METRICS__LISTEN", &addr)
        .env_remove("NETBOX_OUTBOX_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run netbox-outbox");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains(&format!(
            "cannot serve /metrics, /healthz and /readyz on {addr}"
        )) && said.contains("[metrics] listen"),
        "{said}"
    );
    // check warns (a running sidecar may hold it), and still passes on that account
    let check = Command::new(env!("CARGO_BIN_EXE_netbox-outbox"))
        .args(["check", "--offline"])
        .env("DATABASE_URL", db.url())
        .env("NETBOX_OUTBOX_METRICS__LISTEN", &addr)
        .output()
        .unwrap();
    assert!(
        text(&check).contains(&format!("warning  [metrics] listen {addr} is taken")),
        "{}",
        text(&check)
    );
    drop(taken);
}
