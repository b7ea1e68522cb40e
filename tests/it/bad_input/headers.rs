//! Headers NetBox would skip or refuse, and a very large field.

use super::*;

/// NetBox skips a header line without a colon; so do we (same request), and `check` names the
/// line (not its text, which may hold a token) as a problem.
#[tokio::test]
async fn header_line_without_a_colon() {
    let mut scene = scene().await;
    let hook = scene.receiver.url("/bad");
    scene
        .bad(
            &hook,
            &[(
                "additional_headers",
                "E'X-Ok: 1\\nAuthorization Bearer s3cret-token'",
            )],
            "null",
        )
        .await;
    scene.start();
    scene.site_delivers("alpha").await;
    let d = scene.finished("bad").await;
    assert_eq!(d.state, "delivered");
    let sent = scene
        .receiver
        .received()
        .into_iter()
        .find(|r| r.path == "/bad")
        .unwrap();
    assert_eq!(sent.header("x-ok"), Some("1"));
    assert!(sent.header("authorization").is_none());
    scene.stop().await;

    let check = cli(&scene.db, &["check", "--offline"]).await;
    assert_eq!(check.status.code(), Some(5), "{}", out(&check));
    let text = out(&check);
    assert!(
        text.contains(
            "PROBLEM  webhook \"bad\": additional_headers line 2 has no colon, so it is not sent"
        ),
        "{text}"
    );
    assert!(text.contains("write it as Name: value"), "{text}");
    assert!(
        !text.contains("s3cret-token"),
        "check printed a header's text: {text}"
    );
}

#[tokio::test]
async fn header_with_control_characters() {
    let mut scene = scene().await;
    let hook = scene.receiver.url("/bad");
    scene
        .bad(
            &hook,
            &[("additional_headers", "'X-Site: {{ data.description }}'")],
            "null",
        )
        .await;
    scene.start();
    let id = insert_site(&scene.client, "alpha").await;
    scene
        .client
        .execute(
            "update dcim_site set description = E'bell\\x07' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    scene.good(2).await;
    let rejected = eventually("two rejections", WAIT, || async {
        let d = scene.deliveries("bad").await;
        (d.len() == 2 && d.iter().all(|d| d.state != "pending")).then_some(d)
    })
    .await;
    assert_eq!(
        rejected[0].state, "delivered",
        "the create had a clean header"
    );
    assert_eq!(rejected[1].state, "rejected");
    assert!(
        rejected[1].error.contains("additional_headers")
            && rejected[1].error.contains("X-Site")
            && rejected[1].error.contains("control character")
            && rejected[1].error.contains("header_safe"),
        "{:?}",
        rejected[1].error
    );
    scene.stop().await;
}

/// A 10 MB text field travels whole: captured, rendered and delivered.
#[tokio::test]
async fn ten_megabyte_text_field() {
    let mut scene = scene().await;
    let hook = scene.receiver.url("/bad");
    scene.bad(&hook, &[], "null").await;
    // A debug build on a loaded machine takes seconds to render 10 MB (seen: past the default
    // template_timeout, a rejected delivery); this test is about size, not time.
    scene.start_with("[netbox]\ntemplate_timeout = \"60s\"\n");
    let id = scene.site_delivers("alpha").await;
    scene
        .client
        .execute(
            "update dcim_site set comments = repeat('x', 10 * 1024 * 1024) where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let got = scene.good(2).await;
    let body = got[1].json();
    assert_eq!(body["event"], "updated");
    assert_eq!(
        body["data"]["comments"].as_str().map(str::len),
        Some(10 * 1024 * 1024)
    );
    assert!(got[1].body.len() > 10 * 1024 * 1024);
    scene.stop().await;
}
