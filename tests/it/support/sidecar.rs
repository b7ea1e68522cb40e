//! Running the sidecar inside the test, with short intervals, and knowing how it ended.

use std::future::Future;
use std::time::{Duration, Instant};

use netbox_outbox::config::Config;
use netbox_outbox::sidecar::StartError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::db::TestDb;

/// A configuration for tests: fast polls, a short retry schedule, no metrics listener.
pub fn test_config(extra_toml: &str) -> Config {
    let base = "[delivery]\npoll_interval = \"50ms\"\nretry_schedule = [\"200ms\", \"400ms\"]\nretry_jitter = 0.0\n\
                pause_after_failures = 0\n[assembly]\npoll_interval = \"50ms\"\n[rules]\nrefresh_interval = \"0s\"\n\
                [metrics]\nlisten = \"\"\n[shutdown]\ngrace_period = \"2s\"\n";
    let mut table: toml::Table = base.parse().unwrap();
    let extra: toml::Table = extra_toml.parse().expect("extra test config is TOML");
    merge(&mut table, extra);
    Config::from_toml(&table.to_string(), "test config", std::iter::empty())
        .expect("valid test config")
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// A sidecar running in the test's runtime. `stop` fails the test unless the sidecar ran and
/// stopped cleanly within its grace period: a start error or a panic is the test's failure too.
pub struct Sidecar {
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), StartError>>>,
    /// How long it may take to stop: its configured grace plus time to record its outcome.
    grace: Duration,
}

/// Why a sidecar did not stop cleanly.
#[derive(Debug)]
pub enum Unclean {
    /// `sidecar::run` returned an error (it never started, or stopped on one).
    Failed(String),
    Panicked(String),
    /// Still running this long after being asked to stop.
    Hung(Duration),
}

impl std::fmt::Display for Unclean {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unclean::Failed(cause) => write!(f, "the sidecar failed: {cause}"),
            Unclean::Panicked(cause) => write!(f, "the sidecar panicked: {cause}"),
            Unclean::Hung(after) => {
                write!(f, "the sidecar had not stopped {after:?} after being asked")
            }
        }
    }
}

impl Sidecar {
    pub fn start(db: &TestDb, config: Config) -> Sidecar {
        init_logging();
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let database = db.database.clone();
        let grace = config.shutdown_grace + Duration::from_secs(5);
        let task = tokio::spawn(async move {
            netbox_outbox::sidecar::run(config, database, async move { signal.cancelled().await })
                .await
        });
        Sidecar {
            stop,
            task: Some(task),
            grace,
        }
    }

    /// Asks the sidecar to stop and waits for it; fails the test, with the cause, unless it
    /// stopped cleanly in time. Returns how long stopping took.
    #[track_caller]
    pub fn stop(self) -> impl std::future::Future<Output = Duration> {
        let caller = std::panic::Location::caller();
        async move {
            match self.try_stop().await {
                Ok(took) => took,
                Err(unclean) => panic!("{unclean} (stopped at {caller})"),
            }
        }
    }

    /// Like `stop`, but hands back the outcome (for tests of a sidecar that must fail).
    pub async fn try_stop(mut self) -> Result<Duration, Unclean> {
        let asked = Instant::now();
        self.stop.cancel();
        let task = self.task.take().expect("stopped once");
        let abort = task.abort_handle();
        match tokio::time::timeout(self.grace, task).await {
            Ok(Ok(Ok(()))) => Ok(asked.elapsed()),
            Ok(Ok(Err(e))) => Err(Unclean::Failed(error_chain(&e))),
            Ok(Err(join)) => Err(Unclean::Panicked(panic_message(join))),
            Err(_) => {
                abort.abort();
                Err(Unclean::Hung(self.grace))
            }
        }
    }
}

/// The error and its sources, one after another.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn panic_message(join: tokio::task::JoinError) -> String {
    if !join.is_panic() {
        return join.to_string();
    }
    let payload = join.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

impl Drop for Sidecar {
    /// A test that never called `stop` still fails if its sidecar already failed; a running one
    /// is asked to stop.
    fn drop(&mut self) {
        self.stop.cancel();
        let Some(task) = self.task.as_mut() else {
            return;
        };
        if std::thread::panicking() || !task.is_finished() {
            return;
        }
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let outcome = std::pin::Pin::new(task).poll(&mut context);
        match outcome {
            std::task::Poll::Ready(Ok(Err(e))) => panic!("the sidecar failed: {}", error_chain(&e)),
            std::task::Poll::Ready(Err(join)) if join.is_panic() => {
                panic!("the sidecar panicked: {}", panic_message(join))
            }
            _ => {}
        }
    }
}

/// Logs of the code under test, shown for failing tests (RUST_LOG, default warn).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
