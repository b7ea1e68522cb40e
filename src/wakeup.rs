//! Wake-ups from the capture without serialising NetBox's commits.
//!
//! A NOTIFY from a writing transaction takes a global lock at commit. So the capture notifies
//! only while a sidecar sleeps, which it tells writers by holding an advisory lock (see
//! `netbox_outbox.wake()` in the V1 migration): a writer that cannot take the lock shared knows
//! a sidecar sleeps and sends one NOTIFY; while the sidecar works, writers take the lock shared
//! and stay silent.
//!
//! Going to sleep therefore takes the lock exclusively, which waits for the silent writers to
//! commit, and then looks for work once more: a change committed by a silent writer is found by
//! that last look, a change by a later writer comes with a notification. Polling remains as a
//! backstop (a lost connection, a notification queue that was too full to notify).

use std::future::poll_fn;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, error::SqlState};
use tracing::{debug, warn};

use crate::db::{ConnectError, Database};

/// The channel the capture notifies on.
pub const CHANNEL: &str = "netbox_outbox";

/// The advisory lock key a sleeping sidecar holds (netbox_outbox.wake_lock_key()).
pub const LOCK_KEY: i64 = 7418734260116239617;

/// How long going to sleep may wait for writers that saw the sidecar busy. A writer in a long
/// transaction must not hold up the sidecar: if the lock is not free by then, the sidecar polls
/// instead, and tries to sleep again later.
const SLEEP_LOCK_TIMEOUT: Duration = Duration::from_millis(50);

/// A connection that listens for the capture's notifications and holds the sleep lock.
pub struct WakeUp {
    client: Client,
    notifications: mpsc::UnboundedReceiver<()>,
    asleep: bool,
}

/// Why [`WakeUp::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// A writer committed a change while we slept.
    Notified,
    /// The poll interval passed.
    Timeout,
}

/// The listening connection failed; reconnect.
#[derive(Debug, thiserror::Error)]
pub enum WakeUpError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the wake-up connection failed")]
    Query(#[from] tokio_postgres::Error),
    #[error("the wake-up connection closed")]
    Closed,
}

impl WakeUp {
    /// Connects, LISTENs, and starts forwarding notifications.
    pub async fn connect(database: &Database) -> Result<Self, WakeUpError> {
        let (client, mut connection) = database.connect_raw().await?;
        let (tx, notifications) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => {
                        if tx.send(()).is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        warn!(error = %crate::error_chain(&error), "wake-up connection failed");
                        break;
                    }
                    None => break,
                }
            }
        });
        client
            .batch_execute(&format!(
                "set lock_timeout = '{}ms'; listen {CHANNEL}",
                SLEEP_LOCK_TIMEOUT.as_millis()
            ))
            .await?;
        Ok(Self {
            client,
            notifications,
            asleep: false,
        })
    }

    /// Declares the sidecar asleep: waits (briefly) for writers that saw it busy to commit.
    /// Returns `false` if writers are still in flight, in which case the caller should look for
    /// work and try again; `true` once asleep, after which the caller must look for work once
    /// more before calling [`WakeUp::wait`].
    pub async fn begin_sleep(&mut self) -> Result<bool, WakeUpError> {
        if self.asleep {
            return Ok(true);
        }
        match self
            .client
            .execute("select pg_advisory_lock($1)", &[&LOCK_KEY])
            .await
        {
            Ok(_) => {
                self.asleep = true;
                Ok(true)
            }
            Err(error) if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Waits for a notification or the poll interval, then wakes up (releases the lock, so
    /// writers stop notifying).
    pub async fn wait(&mut self, poll: Duration) -> Result<Woken, WakeUpError> {
        let woken = tokio::select! {
            message = self.notifications.recv() => match message {
                Some(()) => Woken::Notified,
                None => return Err(WakeUpError::Closed),
            },
            () = tokio::time::sleep(poll) => Woken::Timeout,
        };
        self.wake().await?;
        // One wake-up covers every notification that arrived meanwhile.
        while self.notifications.try_recv().is_ok() {}
        debug!(?woken, "woke up");
        Ok(woken)
    }

    /// Declares the sidecar awake: writers stop notifying.
    pub async fn wake(&mut self) -> Result<(), WakeUpError> {
        if self.asleep {
            self.client
                .execute("select pg_advisory_unlock($1)", &[&LOCK_KEY])
                .await?;
            self.asleep = false;
        }
        Ok(())
    }
}
