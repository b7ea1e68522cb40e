//! A fresh PostgreSQL database for each test, cloned from a template that holds the NetBox-shaped
//! fixture schema (and, for `migrated()`, netbox-outbox's migrations).
//!
//! The server comes from `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! If it is unreachable, tests fail: they never skip.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use netbox_outbox::db::Database;
use tokio_postgres::Client;

const FIXTURE: &str = include_str!("../../fixtures/netbox_schema.sql");

pub struct TestDb {
    pub name: String,
    pub database: Database,
    admin: Database,
    /// Whether dropping this handle drops the database.
    owned: bool,
}

fn admin() -> Database {
    let url = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    Database::parse(&url).expect("TEST_DATABASE_URL is a valid database URL")
}

fn fingerprint(migrated: bool) -> String {
    let mut hasher = DefaultHasher::new();
    FIXTURE.hash(&mut hasher);
    if migrated {
        // the name too: refinery's checksum covers it, so a renamed migration needs a new
        // template (one migrated under the old name fails the sidecar's migration check)
        for m in netbox_outbox::migrations::all() {
            m.version().hash(&mut hasher);
            m.name().hash(&mut hasher);
            m.sql().hash(&mut hasher);
        }
    }
    format!("{:016x}", hasher.finish())
}

async fn connect(database: &Database) -> Client {
    database
        .connect()
        .await
        .unwrap_or_else(|e| panic!("tests need PostgreSQL ({database}): {e}"))
}

/// Creates the template once per fixture version; concurrent test processes wait on a lock.
async fn template(admin_db: &Database, migrated: bool) -> String {
    let name = format!(
        "nbo_tpl_{}_{}",
        if migrated { "m" } else { "b" },
        fingerprint(migrated)
    );
    let admin = connect(admin_db).await;
    admin
        .execute("select pg_advisory_lock(88120401)", &[])
        .await
        .unwrap();
    let exists: bool = admin
        .query_one(
            "select exists (select 1 from pg_database where datname = $1)",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    if !exists {
        let building = format!("{name}_building");
        admin
            .batch_execute(&format!("drop database if exists {building} with (force)"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("create database {building}"))
            .await
            .unwrap();
        {
            let mut client = connect(&admin_db.with_dbname(&building)).await;
            client
                .batch_execute(FIXTURE)
                .await
                .expect("fixture schema loads");
            if migrated {
                netbox_outbox::migrations::run(&mut client)
                    .await
                    .expect("migrations apply to the fixture");
            }
        }
        admin
            .batch_execute(&format!("alter database {building} rename to {name}"))
            .await
            .expect("rename the finished template (no connections may remain)");
    }
    admin
        .execute("select pg_advisory_unlock(88120401)", &[])
        .await
        .unwrap();
    name
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    /// NetBox-shaped tables, without netbox-outbox.
    pub async fn bare() -> Self {
        Self::create(false).await
    }

    /// NetBox-shaped tables with netbox-outbox's migrations applied.
    pub async fn migrated() -> Self {
        Self::create(true).await
    }

    /// An empty database: no NetBox, no netbox-outbox (someone pointed DATABASE_URL elsewhere).
    pub async fn empty() -> Self {
        let admin_db = admin();
        let name = format!(
            "nbo_t_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        connect(&admin_db)
            .await
            .batch_execute(&format!("create database {name}"))
            .await
            .unwrap_or_else(|e| panic!("could not create test database {name}: {e}"));
        TestDb {
            database: admin_db.with_dbname(&name),
            name,
            admin: admin_db,
            owned: true,
        }
    }

    async fn create(migrated: bool) -> Self {
        let admin_db = admin();
        let template = template(&admin_db, migrated).await;
        let name = format!(
            "nbo_t_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let admin = connect(&admin_db).await;
        // A template may not be cloned while another session is connected to it; retry briefly.
        let mut attempts = 0;
        loop {
            match admin
                .batch_execute(&format!("create database {name} template {template}"))
                .await
            {
                Ok(()) => break,
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("could not create test database {name}: {e}"),
            }
        }
        TestDb {
            database: admin_db.with_dbname(&name),
            name,
            admin: admin_db,
            owned: true,
        }
    }

    /// The same database, reached as another role; dropping it leaves the database alone.
    pub fn attach(db: &TestDb, user: &str) -> TestDb {
        TestDb {
            name: db.name.clone(),
            database: db.database.with_user(user),
            admin: db.admin.clone(),
            owned: false,
        }
    }

    pub async fn client(&self) -> Client {
        connect(&self.database).await
    }

    /// The URL of this database, for commands run as child processes.
    pub fn url(&self) -> String {
        let base = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
        match base.rfind('/') {
            Some(i) if base.starts_with("postgres") => format!("{}/{}", &base[..i], self.name),
            _ => format!("{base} dbname={}", self.name),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Dropping needs async I/O, and Drop may run inside or outside a runtime: use a thread.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok(client) = admin.connect().await {
                    let _ = client
                        .batch_execute(&format!("drop database if exists {name} with (force)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// The content type id of a model such as `dcim.site`.
pub async fn content_type(client: &Client, model: &str) -> i32 {
    let (app, model) = model.split_once('.').expect("app_label.model");
    client
        .query_one(
            "select id from django_content_type where app_label = $1 and model = $2",
            &[&app, &model],
        )
        .await
        .unwrap_or_else(|e| panic!("no content type {app}.{model}: {e}"))
        .get(0)
}

/// A captured row change, as the tests look at it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub id: i64,
    pub txid: String,
    pub content_type_id: i32,
    pub object_id: i64,
    pub kind: String,
    pub db_user: String,
    pub application_name: String,
    pub request: Option<String>,
    pub before: Option<serde_json::Value>,
    pub tag_id: Option<i64>,
    /// The many-to-many table of a deleted link (kind L).
    pub link_table: Option<String>,
}

/// Every captured change, in id order.
pub async fn captured(client: &Client) -> Vec<Captured> {
    client
        .query(
            "select id, txid::text, content_type_id, object_id, kind::text, db_user, application_name,
                    request, before, tag_id, link_table
             from netbox_outbox.change order by id",
            &[],
        )
        .await
        .expect("read netbox_outbox.change")
        .iter()
        .map(|r| Captured {
            id: r.get(0),
            txid: r.get(1),
            content_type_id: r.get(2),
            object_id: r.get(3),
            kind: r.get(4),
            db_user: r.get(5),
            application_name: r.get(6),
            request: r.get(7),
            before: r.get(8),
            tag_id: r.get(9),
            link_table: r.get(10),
        })
        .collect()
}

/// Inserts a site and returns its id.
pub async fn insert_site(client: &Client, name: &str) -> i64 {
    client
        .query_one(
            "insert into dcim_site (created, last_updated, name, slug) values (now(), now(), $1, $1) returning id",
            &[&name],
        )
        .await
        .expect("insert site")
        .get(0)
}

/// Runs one of `sql/*.sql` with psql as the test database's owner, with `-v name=value`
/// variables, as a DBA following docs/install.md would.
pub fn psql_file(db: &TestDb, file: &str, vars: &[(&str, &str)]) -> std::process::Output {
    let mut psql = std::process::Command::new("psql");
    psql.arg(db.url()).args(["-q", "-v", "ON_ERROR_STOP=1"]);
    for (name, value) in vars {
        psql.arg("-v").arg(format!("{name}={value}"));
    }
    psql.arg("-f")
        .arg(format!("{}/sql/{file}", env!("CARGO_MANIFEST_DIR")))
        .output()
        .expect("run psql")
}

/// The sidecar's least-privilege role, set up as docs/install.md says (sql/create-role.sql,
/// then sql/roles.sql), named after the test database (roles are cluster-wide). Drop it with
/// `drop owned by ...; drop role ...` at the end of the test.
pub fn least_privilege_role(db: &TestDb) -> String {
    let role = format!("nbo_sidecar_{}", db.name);
    for (file, vars) in [
        (
            "create-role.sql",
            vec![("role", role.as_str()), ("password", "secret")],
        ),
        ("roles.sql", vec![("role", role.as_str())]),
    ] {
        let out = psql_file(db, file, &vars);
        assert!(
            out.status.success(),
            "sql/{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    role
}
