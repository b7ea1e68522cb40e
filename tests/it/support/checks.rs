//! The support code fails when it should: a helper that cannot fail would hide the very
//! failures the tests are there to catch.

use std::time::Duration;

use netbox_outbox::commands::receive::Receiver;

use super::binary::SidecarBinary;
use super::db::{TestDb, insert_site};
use super::rules::Rule;
use super::sidecar::{Sidecar, Unclean, test_config};
use super::wait::{eventually, exactly};

/// A sidecar that cannot start (its database lacks the migrations) makes `stop` fail, naming
/// the cause, instead of passing for a sidecar that never ran.
#[tokio::test]
async fn stop_reports_a_sidecar_that_could_not_start() {
    let db = TestDb::bare().await;
    let sidecar = Sidecar::start(&db, test_config(""));
    match sidecar.try_stop().await {
        Err(Unclean::Failed(cause)) => assert!(cause.contains("migrate"), "{cause}"),
        other => panic!("expected the start error, got {other:?}"),
    }
}

/// The same through `stop`: the test fails, with the cause in its message.
#[tokio::test]
#[should_panic(expected = "the sidecar failed")]
async fn stop_fails_the_test_for_a_sidecar_that_could_not_start() {
    let db = TestDb::bare().await;
    Sidecar::start(&db, test_config("")).stop().await;
}

/// A sidecar binary that exited by itself (here: no migrations) fails the test when dropped.
#[tokio::test]
#[should_panic(expected = "exited by itself")]
async fn a_sidecar_binary_that_exited_fails_the_test() {
    let db = TestDb::bare().await;
    let config = std::env::temp_dir().join(format!("nbo-check-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&config, "[metrics]\nlisten = \"\"\n").unwrap();
    let mut binary = SidecarBinary::start(&db, &config);
    eventually("the binary to exit", Duration::from_secs(30), || {
        let exited = binary.exited();
        async move { exited.then_some(()) }
    })
    .await;
    let _ = std::fs::remove_file(&config);
}

/// A wait that times out says so, and shows what did arrive (method and path, no bodies).
#[tokio::test]
async fn wait_for_fails_on_timeout_with_what_arrived() {
    let receiver = Receiver::start().await.unwrap();
    reqwest::Client::new()
        .post(receiver.url("/only-one"))
        .body("secret body")
        .send()
        .await
        .unwrap();
    let too_few = receiver
        .wait_for(2, Duration::from_millis(300))
        .await
        .expect_err("only one request came");
    let message = too_few.to_string();
    assert_eq!((too_few.wanted, too_few.counted), (2, 1));
    assert!(message.contains("POST /only-one"), "{message}");
    assert!(!message.contains("secret body"), "{message}");
}

/// One delivery too many makes `exactly` fail, though the expected number had arrived when it
/// was called.
#[tokio::test]
async fn exactly_sees_an_extra_delivery() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let receiver = Receiver::start().await.unwrap();
    Rule::new("sites", &receiver.url("/hook"))
        .create(&client)
        .await;
    let sidecar = Sidecar::start(&db, test_config(""));
    insert_site(&client, "one").await;
    receiver.wait_for(1, Duration::from_secs(30)).await.unwrap();
    // Committed now, delivered later: only waiting for the pipeline to go idle can see it.
    insert_site(&client, "one too many").await;
    let check = {
        let receiver = receiver.clone();
        tokio::spawn(async move { exactly(&receiver, &client, 1).await })
    };
    let failed = check.await.expect_err("two requests are not exactly one");
    let message = failed.into_panic();
    let message = message
        .downcast_ref::<String>()
        .expect("a panic with a message");
    assert!(
        message.contains("expected exactly 1 requests, 2 arrived"),
        "{message}"
    );
    sidecar.stop().await;
}
