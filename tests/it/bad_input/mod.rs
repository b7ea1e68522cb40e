//! Bad input: each case gets a clear error that names the thing and says what to do, nothing is
//! lost, and one bad webhook or rule never stops the others (a good webhook delivers alongside).
//!
//! A sidecar test has two rules on `dcim.site`: "good" (to a sound webhook) and "bad" (the case
//! under test). CLI and configuration cases run the real binary.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netbox_outbox::commands::receive::Receiver;
use netbox_outbox::db::Database;
use tokio_postgres::Client;

use crate::support::binary::SidecarBinary;
use crate::support::cli::{cli, cli_env, err, out};
use crate::support::db::{TestDb, insert_site};
use crate::support::rules::{Rule, webhook};
use crate::support::sidecar::{Sidecar, test_config};
use crate::support::tls::TlsReceiver;
use crate::support::wait::eventually;

const WAIT: Duration = Duration::from_secs(30);

// ---- the scene: a good webhook beside the bad one -------------------------------------------

struct Scene {
    db: TestDb,
    client: Client,
    receiver: Receiver,
    sidecar: Option<Sidecar>,
}

async fn scene() -> Scene {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    Rule::new("good", &receiver.url("/good"))
        .create(&client)
        .await;
    Scene {
        db,
        client,
        receiver,
        sidecar: None,
    }
}

/// A delivery's state, error and attempt count, as an operator reads them.
#[derive(Debug)]
struct Delivery {
    id: i64,
    state: String,
    error: String,
    attempts: i32,
}

impl Scene {
    /// Webhook "bad" at `url` with `extra` columns, and rule "bad" with `conditions`.
    async fn bad(&self, url: &str, extra: &[(&str, &str)], conditions: &str) -> i64 {
        Rule::new("bad", url)
            .webhook_columns(extra)
            .conditions(conditions)
            .create(&self.client)
            .await
            .webhook
    }

    fn start(&mut self) {
        self.start_with("");
    }

    fn start_with(&mut self, toml: &str) {
        self.sidecar = Some(Sidecar::start(&self.db, test_config(toml)));
    }

    /// Waits for the good webhook to get `n` requests; returns them.
    async fn good(&self, n: usize) -> Vec<netbox_outbox::commands::receive::Received> {
        eventually("the good webhook's requests", WAIT, || async {
            let got: Vec<_> = self
                .receiver
                .received()
                .into_iter()
                .filter(|r| r.path == "/good")
                .collect();
            (got.len() >= n).then_some(got)
        })
        .await
    }

    /// The deliveries of rule `rule_name`, in id order.
    async fn deliveries(&self, rule_name: &str) -> Vec<Delivery> {
        self.client
            .query(
                "select id, state, coalesce(last_error, ''), attempts from netbox_outbox.delivery
                 where event_rule_name = $1 order by id",
                &[&rule_name],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| Delivery {
                id: r.get(0),
                state: r.get(1),
                error: r.get(2),
                attempts: r.get(3),
            })
            .collect()
    }

    /// Waits for rule `rule_name`'s first delivery to finish (not pending); returns it.
    async fn finished(&self, rule_name: &str) -> Delivery {
        eventually("the delivery to finish", WAIT, || async {
            self.deliveries(rule_name)
                .await
                .into_iter()
                .next()
                .filter(|d| d.state != "pending")
        })
        .await
    }

    /// Waits until no delivery is pending: whatever was going to be sent has been.
    async fn settled(&self) {
        eventually("every delivery to finish", WAIT, || async {
            let pending: i64 = self
                .client
                .query_one(
                    "select count(*) from netbox_outbox.delivery where state = 'pending'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (pending == 0).then_some(())
        })
        .await;
    }

    /// The errors of a delivery's attempts, in order.
    async fn attempt_errors(&self, delivery: i64) -> Vec<String> {
        self.client
            .query(
                "select coalesce(error, '') from netbox_outbox.attempt where delivery_id = $1 order by attempt",
                &[&delivery],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// A site created; the good webhook's request for it arrives (one bad webhook stops nothing).
    async fn site_delivers(&self, name: &str) -> i64 {
        let id = insert_site(&self.client, name).await;
        eventually("the good webhook's request for the site", WAIT, || async {
            self.receiver
                .received()
                .iter()
                .any(|r| r.path == "/good" && r.json()["data"]["name"] == name)
                .then_some(())
        })
        .await;
        id
    }

    /// Webhook "bad" with a body template that cannot render, the sidecar started, and site
    /// "alpha" created: the bad rule's delivery is rejected naming the field (what
    /// netbox_outbox.failed shows), the good webhook delivers. Returns the webhook's id and
    /// the rejected delivery.
    async fn rejected_for_a_bad_template(&mut self) -> (i64, Delivery) {
        let hook = self.receiver.url("/bad");
        let bad = self
            .bad(
                &hook,
                &[("body_template", "'{{ data.name | nosuchfilter }}'")],
                "null",
            )
            .await;
        self.start();
        self.site_delivers("alpha").await;
        let d = self.finished("bad").await;
        assert_eq!(d.state, "rejected");
        assert!(d.error.contains("body_template"), "{}", d.error);
        (bad, d)
    }

    /// Waits for the first request to `path` (one `replay --rerender` queued); returns it.
    async fn re_rendered(&self, path: &str) -> netbox_outbox::commands::receive::Received {
        eventually("the re-rendered request", WAIT, || async {
            self.receiver
                .received()
                .into_iter()
                .find(|r| r.path == path)
        })
        .await
    }

    async fn stop(&mut self) {
        if let Some(sidecar) = self.sidecar.take() {
            sidecar.stop().await;
        }
    }
}

/// The bad rule's delivery is rejected (nothing sent) with an error holding every `expected`
/// fragment, visible in netbox_outbox.failed; the good webhook delivers alongside.
async fn rejected_with(url: &str, extra: &[(&str, &str)], conditions: &str, expected: &[&str]) {
    let mut scene = scene().await;
    scene.bad(url, extra, conditions).await;
    scene.start();
    scene.site_delivers("alpha").await;
    let d = scene.finished("bad").await;
    assert_eq!(d.state, "rejected", "{d:?}");
    for fragment in expected {
        assert!(
            d.error.contains(fragment),
            "{fragment:?} missing from {:?}",
            d.error
        );
    }
    let failed: i64 = scene
        .client
        .query_one(
            "select count(*) from netbox_outbox.failed where id = $1",
            &[&d.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        failed, 1,
        "the rejection is visible in netbox_outbox.failed"
    );
    assert!(
        scene.receiver.received().iter().all(|r| r.path == "/good"),
        "nothing was sent for the bad webhook"
    );
    scene.stop().await;
}

/// The bad webhook's delivery fails at send time with every `expected` fragment in each attempt's
/// error, and ends dead (ready to replay); the good webhook delivers alongside.
async fn dead_with(url: &str, extra: &[(&str, &str)], expected: &[&str]) {
    let mut scene = scene().await;
    scene.bad(url, extra, "null").await;
    scene.start();
    scene.site_delivers("alpha").await;
    let d = scene.finished("bad").await;
    assert_eq!(d.state, "dead", "{d:?}");
    assert_eq!(d.attempts, 3, "every attempt of the schedule was made");
    let errors = scene.attempt_errors(d.id).await;
    assert_eq!(errors.len(), 3);
    for error in errors.iter().chain([&d.error]) {
        for fragment in expected {
            assert!(
                error.contains(fragment),
                "{fragment:?} missing from {error:?}"
            );
        }
    }
    scene.stop().await;
}

// ---- running the binary ----------------------------------------------------------------------

fn config_file(toml: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("nbo-bad-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, toml).unwrap();
    path
}

const FAST: &str = "[delivery]\npoll_interval = \"50ms\"\nretry_schedule = [\"200ms\"]\nretry_jitter = 0.0\n\
                    [assembly]\npoll_interval = \"50ms\"\n[rules]\nrefresh_interval = \"0s\"\n\
                    [metrics]\nlisten = \"\"\n";

mod after_the_fix;
mod check;
mod conditions;
mod config_files;
mod database;
mod event_rules;
mod headers;
mod mid_flight;
mod sending;
mod templates;
