//! `netbox-outbox migrate`, and the DBA's path: print the SQL, apply it with psql.

use std::process::{Command, Output};

use crate::support::db::TestDb;

fn netbox_outbox(args: &[&str], database_url: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_netbox-outbox"));
    command.args(args).env_remove("DATABASE_URL");
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    command.output().expect("run netbox-outbox")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Everything netbox-outbox owns in a database, as comparable text.
async fn our_objects(db: &TestDb) -> Vec<String> {
    let client = db.client().await;
    let mut objects: Vec<String> = client
        .query(
            "select 'relation ' || c.relname || ' ' || c.relkind::text from pg_class c
               join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'netbox_outbox'
             union all
             select 'function ' || p.oid::regprocedure::text from pg_proc p
               join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'netbox_outbox'
             union all
             select 'trigger ' || tgrelid::regclass::text || ' ' || tgname || ' ' || pg_get_triggerdef(oid)
               from pg_trigger where tgname like 'netbox_outbox%'
             union all
             select 'event trigger ' || evtname from pg_event_trigger where evtname like 'netbox_outbox%'
             union all
             select 'history ' || version || ' ' || name || ' ' || checksum
               from netbox_outbox.refinery_schema_history
             union all
             select 'watch ' || table_name || ' ' || watched from netbox_outbox.watch",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    objects.sort();
    objects
}

/// migrate applies everything once; a second run has nothing to do.
#[tokio::test]
async fn migrate_applies_once_then_is_a_no_op() {
    let db = TestDb::bare().await;
    let first = netbox_outbox(&["migrate"], Some(&db.url()));
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("applied V1__capture"),
        "{}",
        stdout(&first)
    );

    let check = netbox_outbox(&["migrate", "--check"], Some(&db.url()));
    assert_eq!(check.status.code(), Some(0));

    let second = netbox_outbox(&["migrate"], Some(&db.url()));
    assert!(second.status.success());
    assert!(
        stdout(&second).contains("up to date"),
        "{}",
        stdout(&second)
    );
}

/// A DBA prints the script, applies it with psql, and the database ends up exactly as migrate
/// leaves it; migrate then finds nothing to do.
#[tokio::test]
async fn the_dba_script_applied_with_psql_equals_migrate() {
    let by_binary = TestDb::bare().await;
    let by_dba = TestDb::bare().await;
    assert!(
        netbox_outbox(&["migrate"], Some(&by_binary.url()))
            .status
            .success()
    );

    let check = netbox_outbox(&["migrate", "--check"], Some(&by_dba.url()));
    assert_eq!(
        check.status.code(),
        Some(5),
        "pending migrations exit with 5"
    );
    assert!(stdout(&check).contains("pending: V1__capture"));

    let printed = netbox_outbox(&["migrate", "--print-sql"], Some(&by_dba.url()));
    assert!(printed.status.success());
    let script = stdout(&printed);
    assert!(script.contains("create table netbox_outbox.change"));
    let path = std::env::temp_dir().join(format!("{}.sql", by_dba.name));
    std::fs::write(&path, &script).unwrap();
    let psql = Command::new("psql")
        .arg(by_dba.url())
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&path)
        .output()
        .expect("psql is installed");
    std::fs::remove_file(&path).ok();
    assert!(psql.status.success(), "psql failed: {}", stderr(&psql));

    let again = netbox_outbox(&["migrate"], Some(&by_dba.url()));
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stdout(&again).contains("up to date"), "{}", stdout(&again));
    assert_eq!(our_objects(&by_binary).await, our_objects(&by_dba).await);

    // and with nothing pending, the printed script applies nothing
    let empty = netbox_outbox(&["migrate", "--print-sql"], Some(&by_dba.url()));
    assert!(stdout(&empty).contains("Nothing to apply"));
}

/// Without a database, --print-sql prints every migration.
#[test]
fn print_sql_without_a_database_prints_everything() {
    let output = netbox_outbox(&["migrate", "--print-sql"], None);
    assert!(output.status.success());
    assert!(stdout(&output).contains("-- ==== V1__capture ===="));
}

/// A database without NetBox's tables is refused with a message that says so.
#[tokio::test]
async fn migrate_refuses_a_database_without_netbox() {
    let db = TestDb::bare().await;
    db.client()
        .await
        .batch_execute("drop table core_objecttype; drop table django_content_type")
        .await
        .unwrap();
    let output = netbox_outbox(&["migrate"], Some(&db.url()));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("this database has no NetBox tables"),
        "{}",
        stderr(&output)
    );
}

/// Configuration and connection errors have their own exit codes and name the fix.
#[test]
fn bad_database_urls_have_clear_errors() {
    let missing = netbox_outbox(&["migrate"], None);
    assert_eq!(missing.status.code(), Some(3));
    assert!(stderr(&missing).contains("set DATABASE_URL, pass --database-url"));

    let invalid = netbox_outbox(&["migrate"], Some("postgres://x:y@host:notaport/db"));
    assert_eq!(invalid.status.code(), Some(3), "{}", stderr(&invalid));
    assert!(stderr(&invalid).contains("invalid database URL"));

    let unreachable = netbox_outbox(
        &["migrate"],
        Some("postgres://postgres@127.0.0.1:1/netbox?connect_timeout=2"),
    );
    assert_eq!(
        unreachable.status.code(),
        Some(4),
        "{}",
        stderr(&unreachable)
    );
    assert!(
        stderr(&unreachable)
            .contains("could not connect to PostgreSQL at postgres@127.0.0.1:1/netbox")
    );
}
