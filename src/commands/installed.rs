//! Whether netbox-outbox is installed and current in a database, checked before a command reads
//! its tables: a database without it, without NetBox, or a role without the rights gets a
//! message saying what to run instead of a raw SQL error.

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::cli::{Failure, exit};
use crate::db::Database;
use crate::migrations::{self, MigrationError};

/// Whether the database holds NetBox's tables (the ones V1 refuses to install without).
pub(crate) async fn has_netbox(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "select to_regclass('public.django_content_type') is not null
                and to_regclass('public.core_objecttype') is not null",
            &[],
        )
        .await?
        .get(0))
}

/// Fails, with what to run, unless every migration is applied and the role may read them.
/// Exit codes: 5 when netbox-outbox is not installed or migrations are pending (as `run` and
/// `migrate --check`), 1 when the role lacks the rights (the message names the grant).
pub(crate) async fn require(client: &Client, database: &Database) -> Result<(), Failure> {
    let pending = match migrations::pending(client).await {
        Ok(pending) => pending,
        Err(MigrationError::History(error)) => return Err(no_rights(database, &error)),
        Err(other) => return Err(Failure::from(other)),
    };
    if pending.is_empty() {
        return Ok(());
    }
    if pending.len() == migrations::all().len() {
        let netbox = has_netbox(client)
            .await
            .map_err(|e| no_rights(database, &e))?;
        let message = if netbox {
            format!(
                "netbox-outbox is not installed in {database}: it has no netbox_outbox schema. \
                 Apply the migrations as the role that owns NetBox's tables: netbox-outbox \
                 migrate (docs/install.md, step 2)"
            )
        } else {
            format!(
                "{database} has neither NetBox's tables (public.django_content_type, \
                 public.core_objecttype) nor netbox-outbox: point DATABASE_URL (or \
                 --database-url) at NetBox's database, the one in NetBox's configuration.py \
                 DATABASE, then run netbox-outbox migrate there (docs/install.md, step 2)"
            )
        };
        return Err(Failure::new(exit::PROBLEMS, message));
    }
    Err(Failure::new(
        exit::PROBLEMS,
        format!(
            "migrations pending in {database}: {}; apply them as the role that owns NetBox's \
             tables: netbox-outbox migrate (or migrate --print-sql for a DBA), then \
             sql/roles.sql (docs/install.md, Upgrade)",
            pending
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

/// A database error while reading netbox-outbox's own tables: a missing privilege says which
/// script grants it; anything else is passed on as it is.
pub(crate) fn no_rights(database: &Database, error: &tokio_postgres::Error) -> Failure {
    if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        let role = database.user().unwrap_or("this role");
        return Failure::new(
            exit::FAILURE,
            format!(
                "role {role} may not read netbox-outbox's tables in {database} ({}). As the \
                 role that applied the migrations, grant the sidecar's role what it needs: psql \
                 -v ON_ERROR_STOP=1 -v role={role} -f sql/roles.sql (docs/install.md, step 3b); \
                 or run this command as that role",
                error
                    .as_db_error()
                    .map_or_else(|| error.to_string(), |e| e.message().to_string())
            ),
        );
    }
    Failure::new(
        exit::FAILURE,
        format!(
            "cannot read netbox-outbox's tables in {database}: {}",
            crate::error_chain(error)
        ),
    )
}
