//! Command-line interface: one subcommand per operator task, with exit codes scripts can rely on.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::db::Database;
use crate::migrations;

/// Exit codes, stable across releases.
pub mod exit {
    /// The command did what was asked.
    pub const OK: u8 = 0;
    /// The command failed while running (the message says why).
    pub const FAILURE: u8 = 1;
    /// The command line was wrong (clap's own code).
    pub const USAGE: u8 = 2;
    /// The configuration is invalid.
    pub const CONFIG: u8 = 3;
    /// The database could not be reached.
    pub const DATABASE: u8 = 4;
    /// `check` found a problem, or `migrate --check` found pending migrations.
    pub const PROBLEMS: u8 = 5;
}

/// NetBox webhooks from a transactional outbox: every committed change, delivered with
/// NetBox's own payloads, retried, and logged in SQL.
#[derive(Debug, Parser)]
#[command(name = "netbox-outbox", version, about, long_about = None, max_term_width = 100)]
pub struct Cli {
    /// PostgreSQL database of NetBox, as a URL (postgres://user:password@host:5432/netbox) or
    /// key=value pairs.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply netbox-outbox's SQL migrations to NetBox's database (or print them for a DBA).
    ///
    /// The migrations create the netbox_outbox schema and install capture triggers on every
    /// NetBox table whose model supports event rules. They are idempotent: running migrate on an
    /// up-to-date database does nothing.
    Migrate {
        /// Print the pending migrations as one SQL script instead of applying them; a DBA can
        /// review it and apply it with `psql -v ON_ERROR_STOP=1 -f`. Without a database, prints
        /// every migration.
        #[arg(long)]
        print_sql: bool,
        /// Apply nothing; exit with code 5 if migrations are pending.
        #[arg(long, conflicts_with = "print_sql")]
        check: bool,
    },
}

/// Parses the command line, runs the command and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", failure.render());
            ExitCode::from(failure.code)
        }
    }
}

/// A failed command: what to print and which exit code to return.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: Box<dyn std::error::Error + Send + Sync>,
}

impl Failure {
    pub fn new(code: u8, error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            code,
            error: error.into(),
        }
    }

    /// The message and each cause, one per line.
    pub fn render(&self) -> String {
        let mut out = self.error.to_string();
        let mut source = self.error.source();
        while let Some(cause) = source {
            out.push_str(&format!("\n  caused by: {cause}"));
            source = cause.source();
        }
        out
    }
}

impl From<migrations::MigrationError> for Failure {
    fn from(error: migrations::MigrationError) -> Self {
        Failure::new(exit::FAILURE, error)
    }
}

impl From<crate::db::ConnectError> for Failure {
    fn from(error: crate::db::ConnectError) -> Self {
        let code = match error {
            crate::db::ConnectError::InvalidUrl { .. } => exit::CONFIG,
            crate::db::ConnectError::Connect { .. } => exit::DATABASE,
        };
        Failure::new(code, error)
    }
}

fn database(cli: &Cli) -> Result<Database, Failure> {
    let url = cli.database_url.as_deref().ok_or_else(|| {
        Failure::new(
            exit::CONFIG,
            "no database given: set DATABASE_URL or pass --database-url",
        )
    })?;
    Ok(Database::parse(url)?)
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Migrate { print_sql, check } => migrate(&cli, *print_sql, *check).await,
    }
}

async fn migrate(cli: &Cli, print_sql: bool, check: bool) -> Result<u8, Failure> {
    if print_sql && cli.database_url.is_none() {
        print!("{}", migrations::script(&migrations::all()));
        return Ok(exit::OK);
    }
    let mut client = database(cli)?.connect().await?;
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
    Ok(exit::OK)
}
