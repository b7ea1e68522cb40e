//! A connection that keeps the statements it has prepared, for a task that runs the same
//! statements over and over (the assembler: about 27 per batch).
//!
//! tokio-postgres prepares a statement given as text afresh on every call: a round trip to
//! parse it, then another to run it, and a plan made from nothing. Measured on a batch of
//! eight changes (docs/benchmarks.md §2c), parsing and planning were 5.3 ms of the server's
//! 7.6 ms. Kept prepared, a statement is parsed once per connection, and PostgreSQL may settle
//! on a generic plan after five runs.
//!
//! Prepared statements belong to the connection, so the cache lives and dies with it: a new
//! connection starts with an empty one. Behind PgBouncer in transaction mode this needs
//! PgBouncer 1.21 or newer with `max_prepared_statements` above zero, which the sidecar already
//! asks for (docs/install.md). A statement stays valid across NetBox migrations: PostgreSQL
//! re-plans it when a table it reads changes, and every cached statement names the columns it
//! returns, so its result type cannot change under it.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Deref;
use std::sync::Mutex;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, Row, Statement, Transaction};

use super::{ConnectError, Database};
use crate::reconnect::Connect;

/// How many distinct statements one connection keeps: the assembler's fixed ones and one row
/// reader per NetBox table it has read (NetBox 4.7 has about 150 watched tables). Past it the
/// cache starts over rather than grow without bound on an odd schema.
const MOST_STATEMENTS: usize = 1000;

/// A connection and the statements prepared on it.
pub struct Session {
    pub client: Client,
    statements: Statements,
}

impl Session {
    pub fn new(client: Client) -> Self {
        Session {
            client,
            statements: Statements::default(),
        }
    }

    /// A transaction whose `query`, `query_one`, `query_opt` and `execute` use the session's
    /// prepared statements.
    pub async fn transaction(
        &mut self,
        isolation: tokio_postgres::IsolationLevel,
    ) -> Result<Tx<'_>, Error> {
        let inner = self
            .client
            .build_transaction()
            .isolation_level(isolation)
            .start()
            .await?;
        Ok(Tx {
            inner,
            statements: &self.statements,
        })
    }

    /// How many statements the session keeps prepared.
    pub fn prepared(&self) -> usize {
        self.statements.0.lock().expect("statement cache").len()
    }
}

/// Makes [`Session`]s for [`crate::reconnect::Reconnecting`].
pub struct Sessions(pub Database);

impl Connect for Sessions {
    type Connection = Session;
    type Error = ConnectError;
    async fn connect(&self) -> Result<Session, ConnectError> {
        Ok(Session::new(self.0.connect().await?))
    }
}

/// Statements by their text. A lock, not a `RefCell`, so a `&Tx` can be held across awaits in
/// a task that moves between threads; it is never held across one.
#[derive(Default)]
struct Statements(Mutex<HashMap<String, Statement>>);

impl Statements {
    async fn get(&self, tx: &Transaction<'_>, sql: &str) -> Result<Statement, Error> {
        if let Some(statement) = self.0.lock().expect("statement cache").get(sql) {
            return Ok(statement.clone());
        }
        let statement = tx.prepare(sql).await?;
        let mut statements = self.0.lock().expect("statement cache");
        if statements.len() >= MOST_STATEMENTS {
            statements.clear();
        }
        statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

/// A transaction of a [`Session`]. Everything a [`Transaction`] does is reached through it;
/// the statements it runs by text are prepared once per connection.
pub struct Tx<'a> {
    inner: Transaction<'a>,
    statements: &'a Statements,
}

impl<'a> Deref for Tx<'a> {
    type Target = Transaction<'a>;
    fn deref(&self) -> &Transaction<'a> {
        &self.inner
    }
}

impl Tx<'_> {
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let statement = self.statements.get(&self.inner, sql).await?;
        self.inner.query(&statement, params).await
    }

    pub async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
        let statement = self.statements.get(&self.inner, sql).await?;
        self.inner.query_one(&statement, params).await
    }

    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        let statement = self.statements.get(&self.inner, sql).await?;
        self.inner.query_opt(&statement, params).await
    }

    pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        let statement = self.statements.get(&self.inner, sql).await?;
        self.inner.execute(&statement, params).await
    }

    /// The statement for `sql`, prepared once per connection (to bind a portal with).
    pub async fn prepared(&self, sql: &str) -> Result<Statement, Error> {
        self.statements.get(&self.inner, sql).await
    }

    pub async fn commit(self) -> Result<(), Error> {
        self.inner.commit().await
    }

    pub async fn rollback(self) -> Result<(), Error> {
        self.inner.rollback().await
    }
}

/// Statements run by text, on a connection, a transaction or a [`Tx`] (which keeps them
/// prepared): what code shared by the assembler and others (rendering, rules, NetBox's
/// configuration) asks of its database.
pub trait Query: Sync {
    fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send;
    fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Row, Error>> + Send;
    fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send;
}

macro_rules! query_by_text {
    ($type:ty) => {
        impl Query for $type {
            fn query(
                &self,
                sql: &str,
                params: &[&(dyn ToSql + Sync)],
            ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send {
                <$type>::query(self, sql, params)
            }
            fn query_one(
                &self,
                sql: &str,
                params: &[&(dyn ToSql + Sync)],
            ) -> impl Future<Output = Result<Row, Error>> + Send {
                <$type>::query_one(self, sql, params)
            }
            fn query_opt(
                &self,
                sql: &str,
                params: &[&(dyn ToSql + Sync)],
            ) -> impl Future<Output = Result<Option<Row>, Error>> + Send {
                <$type>::query_opt(self, sql, params)
            }
        }
    };
}

query_by_text!(Client);
query_by_text!(Transaction<'_>);
query_by_text!(Tx<'_>);
