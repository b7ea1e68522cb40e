//! The connection a long-running task owns, made again whenever it is lost: connect with backoff
//! ([`reconnect_delay`]), one log line per failure naming the task, each reconnect counted in
//! `netbox_outbox_database_reconnects_total{role}`, and every wait cut short by shutdown.
//!
//! The sidecar's assembler, its wake-up (LISTEN) connection, the dispatcher, the dispatcher's
//! outcome recorder and the housekeeping each hold one [`Reconnecting`]. A database restart or
//! failover only delays their work; nothing is lost because the database is the only state.

use std::error::Error;
use std::future::Future;
use std::time::Duration;

use metrics::counter;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::db::{ConnectError, Database};
use crate::metrics as m;

/// What makes a task's connection: the database itself, or a connection built on it (the
/// wake-up connection, see [`crate::wakeup`]).
pub trait Connect {
    type Connection;
    type Error: Error + 'static;
    fn connect(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;
}

impl Connect for Database {
    type Connection = tokio_postgres::Client;
    type Error = ConnectError;
    fn connect(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send {
        Database::connect(self)
    }
}

/// A task's connection, and how often in a row the task failed with it.
pub struct Reconnecting<C: Connect> {
    connector: C,
    /// Names the task in logs and in the reconnect metric's `role` label.
    task: &'static str,
    connection: Option<C::Connection>,
    /// Failures (to connect, or of the work) since the task last succeeded: the backoff grows
    /// with them, so work that fails every time waits longer each time, even though connecting
    /// succeeds.
    failures: u32,
}

impl<C: Connect> Reconnecting<C> {
    pub fn new(task: &'static str, connector: C) -> Self {
        Self {
            connector,
            task,
            connection: None,
            failures: 0,
        }
    }

    /// The connection, made first if there is none, retrying with backoff until it is made.
    /// `None` once `cancel` is cancelled.
    pub async fn connected(&mut self, cancel: &CancellationToken) -> Option<&mut C::Connection> {
        while self.connection.is_none() {
            if cancel.is_cancelled() {
                return None;
            }
            if self.try_connect().await.is_none() {
                pause(cancel, reconnect_delay(self.failures)).await;
            }
        }
        self.connection.as_mut()
    }

    /// The connection, made first if there is none, in one attempt: for a task that has
    /// something better to do than wait for the database (poll instead, or try at its next
    /// round).
    pub async fn try_connect(&mut self) -> Option<&mut C::Connection> {
        if self.connection.is_none() {
            match self.connector.connect().await {
                Ok(connection) => {
                    if self.failures > 0 {
                        counter!(m::DB_RECONNECTS, "role" => self.task).increment(1);
                        info!(
                            task = self.task,
                            "{} reconnected to the database", self.task
                        );
                    }
                    self.connection = Some(connection);
                }
                Err(error) => {
                    self.failures += 1;
                    warn!(
                        task = self.task,
                        error = %crate::error_chain(&error),
                        retry_in_ms = reconnect_delay(self.failures).as_millis() as u64,
                        "{} cannot reach the database; retrying", self.task
                    );
                }
            }
        }
        self.connection.as_mut()
    }

    /// The work succeeded: the next failure starts the backoff again from its shortest wait.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// The work failed with `error` while `doing` something: logs it, drops the connection
    /// (the next use makes a new one) and waits out the backoff.
    pub async fn failed(
        &mut self,
        cancel: &CancellationToken,
        doing: &str,
        error: &(dyn Error + Send + Sync + 'static),
    ) {
        warn!(
            task = self.task,
            error = %crate::error_chain(error),
            retry_in_ms = reconnect_delay(self.failures + 1).as_millis() as u64,
            "{}: {doing} failed; reconnecting", self.task
        );
        self.back_off(cancel).await;
    }

    /// Like [`Reconnecting::failed`] for a failure the task has logged in its own words.
    pub async fn back_off(&mut self, cancel: &CancellationToken) {
        self.failures += 1;
        self.connection = None;
        pause(cancel, reconnect_delay(self.failures)).await;
    }

    /// Failures since the task last succeeded.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The connection, if there is one (no attempt to make it).
    pub fn current(&mut self) -> Option<&mut C::Connection> {
        self.connection.as_mut()
    }

    /// Drops the connection without counting a failure (the next use makes a new one).
    pub fn disconnect(&mut self) {
        self.connection = None;
    }
}

/// Waits between reconnection attempts: 100 ms doubling to 5 s.
pub fn reconnect_delay(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(5))
}

/// Sleeps unless cancelled first.
pub async fn pause(cancel: &CancellationToken, duration: Duration) {
    tokio::select! {
        () = cancel.cancelled() => {}
        () = tokio::time::sleep(duration) => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    use super::*;

    /// The test PostgreSQL (see tests/it/support/db.rs), and a port where nothing listens.
    const UP: &str = "postgres://postgres@127.0.0.1:5432/postgres";
    const DOWN: &str = "postgres://postgres@127.0.0.1:1/postgres";

    /// A database that is down for its first `down_for` connection attempts, then up.
    struct Restarting {
        down_for: u32,
        attempts: AtomicU32,
    }

    impl Connect for Restarting {
        type Connection = tokio_postgres::Client;
        type Error = ConnectError;
        fn connect(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send {
            let down = self.attempts.fetch_add(1, Ordering::Relaxed) < self.down_for;
            let url = if down { DOWN } else { UP };
            async move { Database::parse(url)?.connect().await }
        }
    }

    #[tokio::test]
    async fn connects_again_after_failures_and_the_backoff_lasts_until_the_work_succeeds() {
        let cancel = CancellationToken::new();
        let mut connection = Reconnecting::new(
            "test",
            Restarting {
                down_for: 2,
                attempts: AtomicU32::new(0),
            },
        );
        let started = Instant::now();
        let client = connection.connected(&cancel).await.expect("not cancelled");
        client
            .simple_query("select 1")
            .await
            .expect("a live connection");
        // two failed attempts, each waited out (200 ms, then 400 ms)
        assert!(started.elapsed() >= reconnect_delay(1) + reconnect_delay(2));
        assert_eq!(connection.failures(), 2);
        connection.succeeded();
        assert_eq!(connection.failures(), 0);
    }

    #[tokio::test]
    async fn shutdown_cuts_the_wait_for_an_unreachable_database_short() {
        let cancel = CancellationToken::new();
        let mut connection = Reconnecting::new("test", Database::parse(DOWN).unwrap());
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.cancel();
        });
        let started = Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(10), connection.connected(&cancel))
            .await
            .expect("returns once cancelled");
        assert!(got.is_none());
        assert!(connection.failures() >= 1);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn one_attempt_does_not_wait() {
        let mut connection = Reconnecting::new("test", Database::parse(DOWN).unwrap());
        let started = Instant::now();
        assert!(connection.try_connect().await.is_none());
        assert_eq!(connection.failures(), 1);
        assert!(started.elapsed() < reconnect_delay(1));
    }
}
