//! `netbox-outbox migrate`: the embedded SQL migrations applied, printed for a DBA, or checked.

use crate::cli::{Failure, exit};
use crate::config::Config;
use crate::db::Database;
use crate::migrations;

/// Applies the pending migrations, prints them (`--print-sql`) or says whether any are pending
/// (`--check`, exit code 5).
pub async fn migrate(config: &Config, print_sql: bool, check: bool) -> Result<u8, Failure> {
    if print_sql && config.database_url.is_none() && Database::from_environment().is_none() {
        print!("{}", migrations::script(&migrations::all()));
        return Ok(exit::OK);
    }
    let mut client = crate::cli::database(config)?.connect().await?;
    if print_sql {
        print!(
            "{}",
            migrations::script(&migrations::pending(&client).await?)
        );
        return Ok(exit::OK);
    }
    if check {
        let pending = migrations::pending(&client).await?;
        for m in &pending {
            println!("pending: {m}");
        }
        return Ok(if pending.is_empty() {
            println!("up to date");
            exit::OK
        } else {
            exit::PROBLEMS
        });
    }
    let applied = migrations::run(&mut client).await?;
    if applied.is_empty() {
        println!("up to date: nothing to apply");
    }
    for m in &applied {
        println!("applied {m}");
    }
    if !applied.is_empty()
        && !migrations::ddl_trigger_installed(&client)
            .await
            .unwrap_or(true)
    {
        println!("{}", migrations::NO_DDL_TRIGGER);
    }
    Ok(exit::OK)
}
