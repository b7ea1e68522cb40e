//! Waiting for a condition with a deadline, never by sleeping and hoping.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics after `deadline` naming what was awaited and
/// where the caller waited.
#[track_caller]
pub fn eventually<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> impl Future<Output = T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let caller = std::panic::Location::caller();
    let what = what.to_string();
    async move {
        let start = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if start.elapsed() > deadline {
                panic!("timed out after {deadline:?} waiting for {what} (at {caller})");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}
