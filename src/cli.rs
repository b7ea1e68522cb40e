//! Command-line interface: one subcommand per operator task, with exit codes scripts can rely on.
//! This file parses the command line, dispatches to [`crate::commands`] and maps failures to
//! exit codes; the commands themselves live there.

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::config::Config;
use crate::db::{Database, DatabaseUrl};
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
#[command(
    name = "netbox-outbox",
    version,
    about,
    long_about = None,
    max_term_width = 100,
    after_help = "Exit codes: 0 success, 1 failure, 2 bad arguments, 3 invalid configuration, \
                  4 database unreachable, 5 problems found (check, migrate --check) or \
                  netbox-outbox not installed or migrations pending."
)]
pub struct Cli {
    /// NetBox's PostgreSQL database, as a URL (postgres://user:password@host:5432/netbox) or
    /// key=value pairs, with libpq's parameters (sslmode=verify-full, sslrootcert, ...). Overrides
    /// DATABASE_URL and the config file's database_url; libpq's PG* variables and ~/.pgpass fill
    /// in what it leaves out.
    #[arg(long, global = true, value_parser = |url: &str| Ok::<_, String>(DatabaseUrl::new(url)))]
    pub database_url: Option<DatabaseUrl>,

    /// The configuration file (TOML; `netbox-outbox config` prints a commented one).
    #[arg(long, short = 'c', global = true, env = "NETBOX_OUTBOX_CONFIG")]
    pub config: Option<PathBuf>,

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
    /// Run the sidecar: turn captured changes into webhooks and deliver them, until SIGTERM or
    /// Ctrl-C.
    ///
    /// Several sidecars may run against one database: they share the work, and if one stops,
    /// the others carry on. Delivery is at least once.
    Run,
    /// Show what is pending, failed or paused per webhook, what is watched, and which sidecars
    /// run.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send deliveries again, by delivery, event, object, webhook or time range (dead ones by
    /// default). Each is copied into a new delivery with the same request and the same id at
    /// the receiver, and the original becomes `replayed` (never replayed twice); with
    /// --rerender, rejected ones are rendered again after a fix.
    Replay {
        #[command(flatten)]
        selection: crate::commands::replay::Selection,
        /// Count what would be replayed, replay nothing.
        #[arg(long)]
        dry_run: bool,
        /// Render rejected deliveries again with their webhook and rule as they are now (after
        /// fixing a template, URL, header or condition). They have no request to copy, so the
        /// payload shows the object as it stands now (a deleted one as last captured).
        #[arg(long)]
        rerender: bool,
    },
    /// Release queues blocked behind a failing delivery: the delivery (or each failing queue
    /// head matched by --webhook and --object) becomes skipped, and the object's later
    /// deliveries go out. `status` and netbox_outbox.blocked_heads list blocked queues;
    /// `replay --state skipped` sends a skipped delivery after all.
    Skip {
        #[command(flatten)]
        selection: crate::commands::replay::SkipSelection,
    },
    /// Check the configuration, the database, the migrations, the capture triggers, NetBox's
    /// schema, and every rule and webhook (templates, URL, TLS); exits 5 on any problem.
    Check {
        /// Do not connect to the webhooks' receivers.
        #[arg(long)]
        offline: bool,
    },
    /// Render the request a webhook would get for a real object, show it, send it, and show the
    /// answer (like trying a receiver with a request bin before going live).
    TestWebhook(crate::commands::test_webhook::TestWebhook),
    /// Run a webhook receiver that prints every request (a local request bin).
    Receive {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
        /// Check X-Hook-Signature with this secret.
        #[arg(long, env = "NETBOX_OUTBOX_RECEIVE_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// The HTTP status to answer with.
        #[arg(long, default_value_t = 200)]
        status: u16,
        /// Print only a count per second (for load tests), not each request.
        #[arg(long)]
        quiet: bool,
    },
    /// Print a configuration file with every setting, its default and what it does.
    Config,
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
            crate::db::ConnectError::InvalidUrl { .. }
            | crate::db::ConnectError::Invalid { .. } => exit::CONFIG,
            crate::db::ConnectError::Connect { .. } => exit::DATABASE,
        };
        Failure::new(code, error)
    }
}

impl From<crate::config::ConfigError> for Failure {
    fn from(error: crate::config::ConfigError) -> Self {
        Failure::new(exit::CONFIG, error)
    }
}

/// The configuration: file, then environment, then command-line flags.
fn config(cli: &Cli) -> Result<Config, Failure> {
    let mut config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(url) = &cli.database_url {
        config.database_url = Some(url.clone());
    }
    Ok(config)
}

/// The database: the configured URL, else libpq's `PG*` variables (PGHOST, PGDATABASE, ...).
pub(crate) fn database(config: &Config) -> Result<Database, Failure> {
    let database = match &config.database_url {
        Some(url) => Database::parse(url.expose()),
        None => Database::from_environment().ok_or_else(|| {
            Failure::new(
                exit::CONFIG,
                "no database given: set DATABASE_URL, pass --database-url, set database_url in \
                 the config file, or set libpq's PGHOST / PGDATABASE variables",
            )
        })?,
    };
    Ok(database?)
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Config => Ok(commands::config::print()),
        Command::Migrate { print_sql, check } => {
            commands::migrate::migrate(&config(&cli)?, *print_sql, *check).await
        }
        Command::Status { json } => {
            let config = config(&cli)?;
            let database = database(&config)?;
            let client = database.connect().await?;
            commands::installed::require(&client, &database).await?;
            commands::status::print(&client, *json)
                .await
                .map_err(|e| Failure::new(exit::FAILURE, e))?;
            Ok(exit::OK)
        }
        Command::Replay {
            selection,
            dry_run,
            rerender,
        } => {
            let config = config(&cli)?;
            commands::replay::command(&config, database(&config)?, selection, *dry_run, *rerender)
                .await
        }
        Command::Skip { selection } => {
            let config = config(&cli)?;
            commands::replay::skip_command(database(&config)?, selection).await
        }
        Command::Check { offline } => {
            let config = config(&cli)?;
            commands::check::command(&config, cli.config.as_deref(), database(&config)?, *offline)
                .await
        }
        Command::TestWebhook(args) => {
            let config = config(&cli)?;
            commands::test_webhook::command(&config, database(&config)?, args).await
        }
        Command::Receive {
            listen,
            secret,
            status,
            quiet,
        } => commands::receive::receive(*listen, secret.clone(), *status, *quiet).await,
        Command::Run => {
            let config = config(&cli)?;
            let database = database(&config)?;
            commands::run::run(config, database).await
        }
    }
}
