//! Connections to NetBox's PostgreSQL database, as every libpq client makes them: the URL or
//! `key=value` string, the `PG*` environment, `~/.pgpass`, and TLS by `sslmode`.
//!
//! Every connection names itself `netbox-outbox` in `application_name` unless told otherwise,
//! so a DBA sees us in `pg_stat_activity`.

mod conninfo;
mod session;
mod tls;

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, Socket};
use tracing::{debug, warn};

pub use conninfo::APPLICATION_NAME;
pub use session::{Query, Session, Sessions, Tx};
pub use tls::SslMode;

use conninfo::{PassfileUse, Resolved};
use tls::Tls;

/// A connection whose messages the caller reads itself (the LISTEN connection).
pub type Connection = tokio_postgres::Connection<
    Socket,
    <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream,
>;

/// A database address, parsed once. Its `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct Database {
    config: Config,
    tls: Tls,
    resolved: Resolved,
}

/// A connection string as configured. It holds the password, so its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The string itself, password and all: for connecting, never for messages.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", conninfo::redact(&self.0))
    }
}

/// Errors reaching the database.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "invalid database URL: {reason}; expected postgres://user:password@host:port/dbname \
         or key=value pairs such as 'host=... dbname=...'"
    )]
    InvalidUrl { reason: String },
    /// A setting beside the URL: a `PG*` variable, a certificate or password file.
    #[error("invalid database setting: {reason}")]
    Invalid { reason: String },
    #[error("could not connect to PostgreSQL at {target}; {hint}")]
    Connect {
        target: String,
        /// What to check, from the kind of failure.
        hint: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Where the password can come from, for hints: the operator should look there.
const PASSWORD_SOURCES: &str = "DATABASE_URL (or --database-url, or database_url in the config \
     file), PGPASSWORD, or the password file (~/.pgpass or PGPASSFILE)";

/// The libpq variables that say which database to use, when no URL does.
const ADDRESS_VARIABLES: [&str; 4] = ["PGHOST", "PGPORT", "PGDATABASE", "PGUSER"];

impl Database {
    /// Parses a libpq-style URL or key/value string; the `PG*` environment variables and the
    /// password file fill in what it leaves out, as for psql.
    pub fn parse(url: &str) -> Result<Self, ConnectError> {
        Self::resolve(Some(url), &|name| std::env::var(name).ok())
    }

    /// The database from the `PG*` environment alone, if any of the variables that name one
    /// is set (libpq would connect to its defaults instead; we would rather say so).
    pub fn from_environment() -> Option<Result<Self, ConnectError>> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        ADDRESS_VARIABLES
            .iter()
            .any(|name| env(name).is_some())
            .then(|| Self::resolve(None, &env))
    }

    /// The address from an optional connection string and an environment.
    pub fn resolve(
        url: Option<&str>,
        env: conninfo::Environment<'_>,
    ) -> Result<Self, ConnectError> {
        let (rest, mut extras) = conninfo::split(url.unwrap_or_default())?;
        let mut config: Config =
            rest.parse()
                .map_err(|e: tokio_postgres::Error| ConnectError::InvalidUrl {
                    reason: e.to_string(),
                })?;
        let resolved = conninfo::fill_from_environment(&mut config, &mut extras, env)?;
        let tls = Tls::from_extras(&extras)?;
        config.ssl_mode(tls.mode.driver_mode());
        // Timestamps read with row_to_json() are then in UTC, as NetBox renders them. No JIT:
        // our statements are short, and once statistics describe a large backlog their
        // estimates pass jit_above_cost and each compiled itself for longer than it ran
        // (migration V18 says what was measured).
        let options = config.get_options().unwrap_or_default().to_string();
        config.options(format!("{options} -c TimeZone=UTC -c jit=off").trim());
        Ok(Self {
            config,
            tls,
            resolved,
        })
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

    /// How much TLS this address insists on.
    pub fn ssl_mode(&self) -> SslMode {
        self.tls.mode
    }

    fn host(&self) -> String {
        use tokio_postgres::config::Host;
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        }
    }

    /// The role connected as, when known (the URL's or `PGUSER`).
    pub fn user(&self) -> Option<&str> {
        self.config.get_user()
    }

    /// Where we connect, for messages: user, host, port, database and sslmode, never the
    /// password.
    pub fn target(&self) -> String {
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or("(default user)");
        let db = self.config.get_dbname().unwrap_or(user);
        format!(
            "{user}@{}:{port}/{db} (sslmode={})",
            self.host(),
            self.tls.mode.as_str()
        )
    }

    /// A libpq key/value connection string for child processes such as psql and pgbench.
    /// It includes the password: never log it.
    pub fn libpq_url(&self) -> String {
        use conninfo::quote;
        let mut parts = vec![format!("host={}", quote(&self.host()))];
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
        parts.push(format!("sslmode={}", self.tls.mode.as_str()));
        if let Some(rootcert) = &self.tls.rootcert {
            parts.push(format!("sslrootcert={}", quote(&rootcert.to_string())));
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
    pub async fn connect_raw(&self) -> Result<(Client, Connection), ConnectError> {
        debug!(target = %self.target(), "connecting to postgres");
        if let Some((path, PassfileUse::TooOpen)) = &self.resolved.passfile {
            warn!(
                passfile = %path.display(),
                "password file ignored: others may read it (chmod 0600 it)"
            );
        }
        // connect_timeout bounds each attempt (default 10 s), so a black-holed host fails too.
        self.config
            .connect(self.tls.connector.clone())
            .await
            .map_err(|source| ConnectError::Connect {
                target: self.target(),
                hint: self.hint(&source),
                source,
            })
    }

    /// What an operator should check after a failed connection: TLS when the handshake failed
    /// or the server wants it, the role and password when the server refused them, the
    /// database name when it does not exist, else the address.
    fn hint(&self, error: &tokio_postgres::Error) -> String {
        use tokio_postgres::error::SqlState;
        let user = self.config.get_user().unwrap_or("(default user)");
        let dbname = self.config.get_dbname().unwrap_or(user);
        if let Some(hint) = tls::handshake_hint(error, &self.tls, &self.host()) {
            return hint;
        }
        let message = error
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_else(|| crate::error_chain(error));
        if message.contains("server does not support TLS") {
            return format!(
                "the server does not offer TLS, and sslmode={} insists on it: turn ssl on in the \
                 server's postgresql.conf, or lower sslmode",
                self.tls.mode.as_str()
            );
        }
        if message.contains("password missing") {
            return format!(
                "the server asks role {user:?} for a password and none is given: put one in \
                 {PASSWORD_SOURCES}{}",
                self.passfile_note()
            );
        }
        match error.code() {
            // pg_hba.conf has hostssl lines for us but no host line: TLS is the only way in.
            Some(code)
                if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                    && message.contains("no encryption") =>
            {
                "the server accepts this client only over TLS (pg_hba.conf has hostssl lines \
                 only): set sslmode=require or stronger (in DATABASE_URL, or PGSSLMODE)"
                    .to_string()
            }
            Some(code)
                if *code == SqlState::INVALID_PASSWORD
                    || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
            {
                let passfile = self.passfile_note();
                format!(
                    "the server refused role {user:?}: check the user name and password (from \
                     {PASSWORD_SOURCES}), and pg_hba.conf{passfile}"
                )
            }
            Some(code) if *code == SqlState::INVALID_CATALOG_NAME => {
                format!(
                    "there is no database {dbname:?}: check the database name in DATABASE_URL \
                     (or PGDATABASE)"
                )
            }
            Some(code) if *code == SqlState::TOO_MANY_CONNECTIONS => {
                "the server has no free connection slot: raise max_connections or lower the \
                 sidecars' use"
                    .to_string()
            }
            _ => "is PostgreSQL running there, and reachable from this host? check DATABASE_URL \
                  (or --database-url, or database_url in the config file, or PGHOST and \
                  PGPORT) for the host and port"
                .to_string(),
        }
    }
}

impl Database {
    /// Why the password file gave no password, when it did not.
    fn passfile_note(&self) -> String {
        match &self.resolved.passfile {
            Some((path, PassfileUse::TooOpen)) => format!(
                " (the password file {} was ignored: others may read it; chmod 0600 it)",
                path.display()
            ),
            Some((path, PassfileUse::NoMatch)) => format!(
                " (the password file {} has no line for this host, port, database and user)",
                path.display()
            ),
            _ => String::new(),
        }
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
