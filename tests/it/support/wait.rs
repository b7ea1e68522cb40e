//! Waiting for a condition with a deadline, never by sleeping and hoping: a condition, the
//! pipeline going idle, an exact number of requests.

use std::future::Future;
use std::time::{Duration, Instant};

use netbox_outbox::commands::receive::{Received, Receiver};
use tokio_postgres::Client;

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

/// How long the support waits give the pipeline by default.
pub const PIPELINE_WAIT: Duration = Duration::from_secs(30);

/// Waits until the pipeline has nothing left to do now: no committed change unread by the
/// assembler, and no pending delivery being sent (leased) or due. Retries scheduled for later
/// do not count: a test that expects them waits for them.
pub async fn idle(client: &Client) {
    eventually("the pipeline to be idle", PIPELINE_WAIT, || async {
        let busy: String = client
            .query_one(
                "select concat_ws(', ',
                     nullif((select count(*) from netbox_outbox.unread_change), 0) || ' unread changes',
                     nullif((select count(*) from netbox_outbox.delivery
                             where state = 'pending'
                               and (leased_until > now() or next_attempt_at <= now())), 0)
                         || ' deliveries leased or due')",
                &[],
            )
            .await
            .expect("read the pipeline's backlog")
            .get(0);
        busy.is_empty().then_some(())
    })
    .await;
}

/// Exactly `n` requests reach `receiver`: waits for `n`, then until the pipeline is idle (so
/// any extra one would have been sent), then checks that no more came. Returns the requests.
#[track_caller]
pub fn exactly<'a>(
    receiver: &'a Receiver,
    client: &'a Client,
    n: usize,
) -> impl Future<Output = Vec<Received>> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        receiver
            .wait_for(n, PIPELINE_WAIT)
            .await
            .unwrap_or_else(|too_few| panic!("{too_few} (at {caller})"));
        idle(client).await;
        let got = receiver.received();
        assert!(
            receiver.count() == n,
            "expected exactly {n} requests, {} arrived once the pipeline was idle (at {caller}):{}",
            receiver.count(),
            got.iter()
                .enumerate()
                .map(|(i, r)| format!("\n  {}. {} {}", i + 1, r.method, r.path))
                .collect::<String>()
        );
        got
    }
}
