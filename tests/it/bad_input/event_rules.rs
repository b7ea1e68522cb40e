//! Event rule rows NetBox's UI would never save, and what the logs may hold.

use super::*;

/// Event rule rows NetBox's UI would never save (NULL event_types, a netbox-outbox action type
/// that does not exist, action data that is not an object): each is skipped with one log line
/// naming it; the other rules load and deliver.
#[tokio::test]
async fn bad_event_rule_rows_are_skipped() {
    let scene = scene().await;
    let client = &scene.client;
    client
        .batch_execute("alter table extras_eventrule alter column event_types drop not null")
        .await
        .unwrap();
    let hook = webhook(client, "other", &scene.receiver.url("/other"), &[]).await;
    let null_events = Rule::to_webhook("null events", hook)
        .create(client)
        .await
        .rule;
    client
        .execute(
            "update extras_eventrule set event_types = null where id = $1",
            &[&null_events],
        )
        .await
        .unwrap();
    Rule::to_webhook("typo", hook)
        .action_type("netbox_outbox.webhok")
        .create(client)
        .await;
    Rule::to_webhook("odd data", hook)
        .action_data("'\"text\"'")
        .create(client)
        .await;
    let running = SidecarBinary::start(&scene.db, &config_file(FAST));
    scene.site_delivers("alpha").await;
    eventually("the rule with odd action data to deliver", WAIT, || async {
        scene
            .receiver
            .received()
            .iter()
            .any(|r| r.path == "/other")
            .then_some(())
    })
    .await;
    let log = eventually("the skipped rules' log lines", WAIT, || async {
        let log = running.log();
        (log.contains("null events") && log.contains("typo")).then_some(log)
    })
    .await;
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("event rule skipped"))
        .collect();
    assert_eq!(lines.len(), 2, "one line per bad rule: {log}");
    let null_line = lines.iter().find(|l| l.contains("null events")).unwrap();
    assert!(null_line.contains("event_types"), "{null_line}");
    let typo_line = lines.iter().find(|l| l.contains("typo")).unwrap();
    assert!(
        typo_line.contains("netbox_outbox.webhok") && typo_line.contains("netbox_outbox.webhook"),
        "{typo_line}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal: {log:?}"
    );
    drop(running);
}

/// A rejection's log line names the webhook, rule and field but never the rendered URL (which
/// may carry a token); the delivery row keeps the detail.
#[tokio::test]
async fn rejection_logs_hold_no_url_tokens() {
    let scene = scene().await;
    scene
        .bad(
            "ftp://127.0.0.1/hook?token=TOPSECRET{{ data.id }}",
            &[],
            "null",
        )
        .await;
    let running = SidecarBinary::start(&scene.db, &config_file(FAST));
    scene.site_delivers("alpha").await;
    let d = scene.finished("bad").await;
    assert_eq!(d.state, "rejected");
    assert!(
        d.error.contains("TOPSECRET"),
        "the row keeps the detail: {}",
        d.error
    );
    let log = eventually("the rejection's log line", WAIT, || async {
        let log = running.log();
        log.contains("delivery rejected").then_some(log)
    })
    .await;
    assert!(!log.contains("TOPSECRET"), "{log}");
    assert!(log.contains("payload_url") && log.contains("bad"), "{log}");
    assert!(
        log.contains("netbox_outbox.failed"),
        "the line says where the detail is: {log}"
    );
}
