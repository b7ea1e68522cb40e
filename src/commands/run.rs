//! `netbox-outbox run`: logging set up, the sidecar ([`crate::sidecar`]) run until SIGTERM or
//! Ctrl-C.

use crate::cli::{Failure, exit};
use crate::config::{Config, LogFormat};
use crate::db::Database;

/// Runs the sidecar until a shutdown signal; the exit code maps how it could not start.
pub async fn run(config: Config, database: Database) -> Result<u8, Failure> {
    init_logging(&config);
    // Not installed, or no rights: the same message as every other command, before starting.
    {
        let client = database.connect().await?;
        super::installed::require(&client, &database).await?;
    }
    crate::sidecar::run(config, database, shutdown_signal())
        .await
        .map_err(|e| match e {
            crate::sidecar::StartError::Connect(c) => Failure::from(c),
            crate::sidecar::StartError::NotMigrated { .. }
            | crate::sidecar::StartError::NetboxRelease(
                crate::netbox::version::SelectError::Unknown(_),
            ) => Failure::new(exit::PROBLEMS, e),
            crate::sidecar::StartError::ConfigDiffers { .. }
            | crate::sidecar::StartError::Metrics { .. } => Failure::new(exit::CONFIG, e),
            other => Failure::new(exit::FAILURE, other),
        })?;
    Ok(exit::OK)
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
