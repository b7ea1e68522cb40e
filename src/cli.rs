//! Command-line interface: one subcommand per operator task, with exit codes scripts can rely on.

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};
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
                  4 database unreachable, 5 problems found (check, migrate --check, pending \
                  migrations at run)."
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
    /// default). Each is copied into a new delivery with the same request; with --rerender,
    /// rejected ones are rendered again after a fix.
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
fn database(config: &Config) -> Result<Database, Failure> {
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

/// Logs to stderr: readable text, or JSON lines for collectors.
///
/// Our own code logs no secrets and no payloads at any level. Libraries may: tokio-postgres
/// logs every statement's parameters at debug (webhook headers, secrets, bodies), hyper, h2 and
/// reqwest log requests. So below info only our code and rustls (handshakes, no data) log,
/// whatever `[log] level` or RUST_LOG ask for.
fn init_logging(config: &Config) {
    use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    // RUST_LOG, if set, wins over [log] level (NETBOX_OUTBOX_LOG__LEVEL)
    let requested = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let quiet_libraries = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target(env!("CARGO_CRATE_NAME"), LevelFilter::TRACE)
        .with_target("rustls", LevelFilter::TRACE);
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal: in journald, files and pipes they are
    // noise that breaks grep.
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let layer = match config.log.format {
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
        LogFormat::Text => layer.boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(requested.and(quiet_libraries)))
        .try_init();
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Config => {
            print!("{}", crate::config::DEFAULT_TOML);
            Ok(exit::OK)
        }
        Command::Migrate { print_sql, check } => migrate(&cli, *print_sql, *check).await,
        Command::Status { json } => {
            let config = config(&cli)?;
            let client = database(&config)?.connect().await?;
            let status = crate::commands::status::gather(&client)
                .await
                .map_err(|e| Failure::new(exit::FAILURE, e))?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                );
            } else {
                print!("{}", crate::commands::status::render(&status));
            }
            Ok(exit::OK)
        }
        Command::Replay {
            selection,
            dry_run,
            rerender: true,
        } => {
            let config = config(&cli)?;
            let mut client = database(&config)?.connect().await?;
            let report =
                crate::commands::replay::rerender(&mut client, &config, selection, *dry_run)
                    .await
                    .map_err(|e| match e {
                        crate::commands::replay::ReplayError::Invalid(_) => {
                            Failure::new(exit::USAGE, e)
                        }
                        other => Failure::new(exit::FAILURE, other),
                    })?;
            for (id, reason) in &report.still_failing {
                eprintln!("delivery {id} still fails: {reason}");
            }
            println!(
                "{} deliveries {}",
                report.created,
                if *dry_run {
                    "would be re-rendered"
                } else {
                    "re-rendered"
                }
            );
            Ok(if report.still_failing.is_empty() {
                exit::OK
            } else {
                exit::FAILURE
            })
        }
        Command::Replay {
            selection, dry_run, ..
        } => {
            use std::io::IsTerminal;
            let config = config(&cli)?;
            let client = database(&config)?.connect().await?;
            let n = crate::commands::replay::replay(
                &client,
                selection,
                *dry_run,
                std::io::stderr().is_terminal(),
            )
            .await
            .map_err(|e| match e {
                crate::commands::replay::ReplayError::Invalid(_) => Failure::new(exit::USAGE, e),
                other => Failure::new(exit::FAILURE, other),
            })?;
            if *dry_run {
                println!("{n} deliveries would be replayed");
            } else {
                println!("{n} deliveries replayed");
            }
            Ok(exit::OK)
        }
        Command::Check { offline } => {
            let config = config(&cli)?;
            println!(
                "ok       configuration is valid ({})",
                cli.config
                    .as_ref()
                    .map_or("defaults and environment".to_string(), |p| p
                        .display()
                        .to_string())
            );
            let database = database(&config)?;
            let client = database.connect().await?;
            println!("ok       database {database} answers");
            let findings = crate::commands::check::run(&client, &config, !*offline).await;
            for finding in &findings {
                println!("{}", finding.line());
            }
            Ok(if findings.iter().any(|f| f.is_problem()) {
                exit::PROBLEMS
            } else {
                exit::OK
            })
        }
        Command::TestWebhook(args) => {
            let config = config(&cli)?;
            let client = database(&config)?.connect().await?;
            let tested = crate::commands::test_webhook::run(&client, &config, args)
                .await
                .map_err(|e| match e {
                    crate::commands::test_webhook::TestError::Invalid(_) => {
                        Failure::new(exit::USAGE, e)
                    }
                    other => Failure::new(exit::FAILURE, other),
                })?;
            print!("{}", crate::commands::test_webhook::render(&tested));
            Ok(match &tested.result {
                Some(r) if !r.succeeded() => exit::FAILURE,
                _ => exit::OK,
            })
        }
        Command::Receive {
            listen,
            secret,
            status,
            quiet,
        } => receive(*listen, secret.clone(), *status, *quiet).await,
        Command::Run => {
            let config = config(&cli)?;
            let database = database(&config)?;
            init_logging(&config);
            crate::sidecar::run(config, database, shutdown_signal())
                .await
                .map_err(|e| match e {
                    crate::sidecar::StartError::Connect(c) => Failure::from(c),
                    crate::sidecar::StartError::NotMigrated { .. } => {
                        Failure::new(exit::PROBLEMS, e)
                    }
                    crate::sidecar::StartError::ConfigDiffers { .. } => {
                        Failure::new(exit::CONFIG, e)
                    }
                    other => Failure::new(exit::FAILURE, other),
                })?;
            Ok(exit::OK)
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn migrate(cli: &Cli, print_sql: bool, check: bool) -> Result<u8, Failure> {
    let config = config(cli)?;
    if print_sql && config.database_url.is_none() && Database::from_environment().is_none() {
        print!("{}", migrations::script(&migrations::all()));
        return Ok(exit::OK);
    }
    let mut client = database(&config)?.connect().await?;
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

/// A request bin: prints each webhook as it arrives.
async fn receive(
    listen: std::net::SocketAddr,
    secret: Option<String>,
    status: u16,
    quiet: bool,
) -> Result<u8, Failure> {
    use crate::receiver::{Receiver, Reply};
    let receiver = Receiver::bind(listen)
        .await
        .map_err(|e| Failure::new(exit::FAILURE, format!("cannot listen on {listen}: {e}")))?;
    receiver.default_reply(Reply::Status(status));
    eprintln!("listening on http://{} (Ctrl-C to stop)", receiver.addr);
    if quiet {
        receiver.keep_nothing();
        let mut last = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(exit::OK),
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                    let total = receiver.count();
                    println!("{total} {}", total - last);
                    last = total;
                }
            }
        }
    }
    let mut shown = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(exit::OK),
            got = receiver.wait_for(shown + 1, std::time::Duration::from_secs(3600)) => {
                let got = got.unwrap_or_else(|too_few| too_few.arrived);
                for r in &got[shown..] {
                    println!("---- {} {}", r.method, r.path);
                    for (name, value) in &r.headers {
                        println!("{name}: {value}");
                    }
                    if let Some(secret) = &secret {
                        println!("# signature {}", if r.signature_valid(secret) { "valid" } else { "INVALID" });
                    }
                    println!();
                    println!("{}", String::from_utf8_lossy(&r.body));
                }
                shown = got.len();
            }
        }
    }
}
