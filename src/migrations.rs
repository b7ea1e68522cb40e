//! The SQL migrations in `migrations/`, embedded in the binary: applied by `netbox-outbox
//! migrate`, or printed as one script for a DBA to review and apply with `psql -f`.
//!
//! Both ways leave the database in the same state, including refinery's history table, so
//! `migrate` after the DBA's script finds nothing to do.

use refinery::{Migration, Runner};
use tokio_postgres::Client;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Where refinery records which migrations are applied: inside our own schema, so that removing
/// the schema removes every trace of us.
pub const HISTORY_TABLE: &str = "netbox_outbox.refinery_schema_history";

/// Errors while reading or applying migrations.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("could not read the migration history")]
    History(#[source] tokio_postgres::Error),
    #[error(
        "migration failed{left}; apply the migrations as the role that owns NetBox's tables \
         (NetBox's own database user), after NetBox's own migrations"
    )]
    Apply {
        #[source]
        source: refinery::Error,
        /// What the failure left in the database, for the message.
        left: &'static str,
    },
    #[error(
        "this database has no NetBox tables (public.django_content_type, public.core_objecttype), \
         so nothing was changed: apply the migrations to the database NetBox uses (its \
         configuration.py DATABASE), after NetBox's own migrations"
    )]
    NotNetbox,
    #[error(
        "the database has migration V{version} which this netbox-outbox does not know; \
         it was migrated by a newer netbox-outbox, so run that version instead"
    )]
    Newer { version: i32 },
    #[error(
        "migration V{version} ({name}) in the database differs from the one in this binary; \
         migrations are never edited once released, so this database was migrated by a \
         different build"
    )]
    Divergent { version: i32, name: String },
}

fn runner() -> Runner {
    let mut runner = embedded::migrations::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true);
    runner.set_migration_table_name(HISTORY_TABLE);
    runner
}

/// The migrations this binary carries, oldest first.
pub fn all() -> Vec<Migration> {
    let mut migrations = runner().get_migrations().to_vec();
    migrations.sort();
    migrations
}

/// One applied migration, as recorded in the history table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: i32,
    pub name: String,
    pub checksum: String,
}

/// Reads the history table; an empty list when netbox-outbox was never installed.
pub async fn applied(client: &Client) -> Result<Vec<Applied>, MigrationError> {
    let exists = client
        .query_one("select to_regclass($1) is not null", &[&HISTORY_TABLE])
        .await
        .map_err(MigrationError::History)?
        .get::<_, bool>(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            &format!("select version, name, checksum from {HISTORY_TABLE} order by version"),
            &[],
        )
        .await
        .map_err(MigrationError::History)?;
    Ok(rows
        .iter()
        .map(|row| Applied {
            version: row.get(0),
            name: row.get(1),
            checksum: row.get(2),
        })
        .collect())
}

/// The migrations not yet applied to the database, after checking that what is applied is ours.
pub async fn pending(client: &Client) -> Result<Vec<Migration>, MigrationError> {
    let applied = applied(client).await?;
    let known = all();
    for done in &applied {
        match known.iter().find(|m| m.version() == done.version) {
            None => {
                return Err(MigrationError::Newer {
                    version: done.version,
                });
            }
            Some(m) if m.checksum().to_string() != done.checksum || m.name() != done.name => {
                return Err(MigrationError::Divergent {
                    version: done.version,
                    name: done.name.clone(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(known
        .into_iter()
        .filter(|m| !applied.iter().any(|a| a.version == m.version()))
        .collect())
}

/// Applies every pending migration, each in its own transaction. Returns the ones applied.
///
/// A database that refuses the first install (no NetBox tables, a role that does not own them)
/// is left as it was: nothing is created before NetBox is found, and the schema and history
/// table made for the run are dropped again when no migration could be applied.
pub async fn run(client: &mut Client) -> Result<Vec<Migration>, MigrationError> {
    let pending = pending(client).await?;
    if pending.is_empty() {
        return Ok(pending);
    }
    let fresh = pending.len() == all().len();
    let schema_existed: bool = client
        .query_one(
            "select exists (select 1 from pg_namespace where nspname = 'netbox_outbox')",
            &[],
        )
        .await
        .map_err(MigrationError::History)?
        .get(0);
    if fresh {
        let netbox: bool = client
            .query_one(
                "select to_regclass('public.django_content_type') is not null
                    and to_regclass('public.core_objecttype') is not null",
                &[],
            )
            .await
            .map_err(MigrationError::History)?
            .get(0);
        if !netbox {
            return Err(MigrationError::NotNetbox);
        }
    }
    // refinery creates its history table before running the first migration, so the schema it
    // lives in must exist already.
    client
        .batch_execute("create schema if not exists netbox_outbox")
        .await
        .map_err(MigrationError::History)?;
    match runner().run_async(client).await {
        Ok(_) => Ok(pending),
        Err(source) => {
            let mut left = "";
            if fresh && !schema_existed && applied(client).await.is_ok_and(|a| a.is_empty()) {
                // Never cascade: only what this run created goes, anything else stays.
                let cleanup = client
                    .batch_execute(&format!(
                        "drop table if exists {HISTORY_TABLE}; drop schema if exists netbox_outbox"
                    ))
                    .await;
                left = if cleanup.is_ok() {
                    " (nothing was left in the database)"
                } else {
                    " (an empty netbox_outbox schema is left: drop schema netbox_outbox cascade)"
                };
            }
            Err(MigrationError::Apply { source, left })
        }
    }
}

/// Whether the DDL event trigger that re-installs capture triggers during NetBox's migrations
/// exists (only a superuser can create it; without it `netbox_outbox.sync()` does that job).
pub async fn ddl_trigger_installed(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "select exists (select 1 from pg_event_trigger where evtname = 'netbox_outbox_ddl')",
            &[],
        )
        .await?
        .get(0))
}

/// What it means when the DDL event trigger is missing, said once by `migrate`.
pub const NO_DDL_TRIGGER: &str = "note: no DDL event trigger was installed (creating one needs a \
    superuser). When NetBox's migrations drop or recreate a watched table, its capture trigger \
    comes back within a minute through a running sidecar's netbox_outbox.sync(); changes made in \
    between are not captured. After each NetBox upgrade, run select * from netbox_outbox.sync(); \
    as NetBox's table owner (docs/install.md, Upgrade), or apply the migrations once as a \
    superuser to get the trigger.";

/// Renders the given migrations as one script for `psql -v ON_ERROR_STOP=1 -f`: each migration
/// in its own transaction, followed by the history row `migrate` looks for.
pub fn script(migrations: &[Migration]) -> String {
    let mut out = String::new();
    out.push_str(
        "-- netbox-outbox migrations, for a DBA to review and apply:\n\
         --   psql \"$DATABASE_URL\" -v ON_ERROR_STOP=1 -f this-file.sql\n\
         -- Apply it as the role that owns (or may create triggers on) NetBox's tables.\n\
         -- Afterwards `netbox-outbox migrate` recognises these migrations as applied.\n\n\
         \\set ON_ERROR_STOP on\n\
         -- Only warnings and errors: the NOTICEs of `if not exists` and friends are noise.\n\
         set client_min_messages = warning;\n\n",
    );
    if migrations.is_empty() {
        out.push_str("-- Nothing to apply: the database is up to date.\n");
        return out;
    }
    out.push_str("create schema if not exists netbox_outbox;\n");
    out.push_str(&format!(
        "create table if not exists {HISTORY_TABLE}(\n    version int4 primary key,\n    \
         name varchar(255),\n    applied_on varchar(255),\n    checksum varchar(255));\n\n"
    ));
    for m in migrations {
        out.push_str(&format!("-- ==== {m} ====\nbegin;\n\n"));
        out.push_str(m.sql().unwrap_or_default().trim_end());
        out.push_str(&format!(
            "\n\ninsert into {HISTORY_TABLE} (version, name, applied_on, checksum)\n\
             values ({}, '{}', to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '{}');\n\
             commit;\n\n",
            m.version(),
            m.name().replace('\'', "''"),
            m.checksum()
        ));
    }
    out.push_str(
        "-- Said once: what a missing DDL event trigger means (see docs/install.md, Upgrade).\n\
         do $$\nbegin\n    if not exists (select 1 from pg_event_trigger where evtname = 'netbox_outbox_ddl') then\n\
         \x20       raise warning 'netbox_outbox: no DDL event trigger (it needs a superuser): after each NetBox upgrade run select * from netbox_outbox.sync(); (a running sidecar does within a minute)';\n\
         \x20   end if;\nend\n$$;\n",
    );
    out
}
