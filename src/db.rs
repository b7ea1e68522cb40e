//! Connections to NetBox's PostgreSQL database.
//!
//! Every connection names itself `netbox-outbox` in `application_name`, so a DBA sees us in
//! `pg_stat_activity`, and so the capture can tell our own writes from NetBox's.

use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};
use tracing::{debug, warn};

/// The application_name of every connection the sidecar opens.
pub const APPLICATION_NAME: &str = "netbox-outbox";

/// A database address, parsed once. Its `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct Database {
    config: Config,
}

/// Errors reaching the database.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "invalid database URL: {reason}; expected postgres://user:password@host:port/dbname \
         or key=value pairs such as 'host=... dbname=...'"
    )]
    InvalidUrl { reason: String },
    #[error("could not connect to PostgreSQL at {target}; {hint}")]
    Connect {
        target: String,
        /// What to check, from the kind of failure.
        hint: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// What an operator should check after a failed connection: the role and password when the
/// server refused them, the database name when it does not exist, else the address.
fn connect_hint(error: &tokio_postgres::Error, user: &str, dbname: &str) -> String {
    use tokio_postgres::error::SqlState;
    match error.code() {
        Some(code)
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            format!(
                "the server refused role {user:?}: check the user name and password in \
                 DATABASE_URL (or --database-url, or database_url in the config file), and \
                 pg_hba.conf"
            )
        }
        Some(code) if *code == SqlState::INVALID_CATALOG_NAME => {
            format!("there is no database {dbname:?}: check the database name in DATABASE_URL")
        }
        Some(code) if *code == SqlState::TOO_MANY_CONNECTIONS => {
            "the server has no free connection slot: raise max_connections or lower the \
             sidecars' use"
                .to_string()
        }
        _ => "is PostgreSQL running there, and reachable from this host? check DATABASE_URL \
              (or --database-url, or database_url in the config file) for the host and port"
            .to_string(),
    }
}

impl Database {
    /// Parses a libpq-style URL or key/value string.
    pub fn parse(url: &str) -> Result<Self, ConnectError> {
        let mut config: Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| ConnectError::InvalidUrl {
                    reason: e.to_string(),
                })?;
        if config.get_application_name().is_none() {
            config.application_name(APPLICATION_NAME);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        // Timestamps read with row_to_json() are then in UTC, as NetBox renders them.
        let options = config.get_options().unwrap_or_default().to_string();
        config.options(format!("{options} -c TimeZone=UTC").trim());
        Ok(Self { config })
    }

    /// A copy that connects to another database on the same server (used by tests and the demo).
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut copy = self.clone();
        copy.config.dbname(dbname);
        copy
    }

    /// A copy that connects as another role (used by tests of least privilege).
    pub fn with_user(&self, user: &str) -> Self {
        let mut copy = self.clone();
        copy.config.user(user);
        copy
    }

    pub fn dbname(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    /// Where we connect, for messages: host, port and database, never the password.
    pub fn target(&self) -> String {
        use tokio_postgres::config::Host;
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or("(default user)");
        let db = self.config.get_dbname().unwrap_or("(default database)");
        format!("{user}@{host}:{port}/{db}")
    }

    /// A libpq key/value connection string for child processes such as psql and pgbench.
    /// It includes the password: never log it.
    pub fn libpq_url(&self) -> String {
        use tokio_postgres::config::Host;
        fn quote(value: &str) -> String {
            format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
        }
        let mut parts = Vec::new();
        if let Some(host) = self.config.get_hosts().first() {
            let host = match host {
                Host::Tcp(h) => h.clone(),
                Host::Unix(p) => p.display().to_string(),
            };
            parts.push(format!("host={}", quote(&host)));
        }
        if let Some(port) = self.config.get_ports().first() {
            parts.push(format!("port={port}"));
        }
        if let Some(user) = self.config.get_user() {
            parts.push(format!("user={}", quote(user)));
        }
        if let Some(password) = self.config.get_password() {
            parts.push(format!(
                "password={}",
                quote(&String::from_utf8_lossy(password))
            ));
        }
        if let Some(dbname) = self.config.get_dbname() {
            parts.push(format!("dbname={}", quote(dbname)));
        }
        parts.join(" ")
    }

    /// Opens a connection and drives it on a background task; the task ends when the returned
    /// client is dropped or the connection fails.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let (client, connection) = self.connect_raw().await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                warn!(error = %crate::error_chain(&error), "database connection closed");
            }
        });
        Ok(client)
    }

    /// Opens a connection without driving it: for the listener, which reads notifications from
    /// the connection itself.
    pub async fn connect_raw(
        &self,
    ) -> Result<
        (
            Client,
            tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
        ),
        ConnectError,
    > {
        debug!(target = %self.target(), "connecting to postgres");
        // connect_timeout bounds each attempt (default 10 s), so a black-holed host fails too.
        self.config
            .connect(NoTls)
            .await
            .map_err(|source| ConnectError::Connect {
                target: self.target(),
                hint: connect_hint(
                    &source,
                    self.config.get_user().unwrap_or("(default user)"),
                    self.config.get_dbname().unwrap_or("(default database)"),
                ),
                source,
            })
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Database({})", self.target())
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.target())
    }
}
