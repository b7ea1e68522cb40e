//! Templates and URLs that cannot be rendered: the delivery is rejected, the good one goes out.

use super::*;

#[tokio::test]
async fn body_template_that_does_not_parse() {
    rejected_with(
        "http://127.0.0.1:1/",
        &[("body_template", "'{\"name\": \"{{ data.name }\"}'")],
        "null",
        &["body_template", "syntax error", "line 1", "fix the webhook"],
    )
    .await;
}

#[tokio::test]
async fn body_template_that_fails_at_render_time() {
    rejected_with(
        "http://127.0.0.1:1/",
        &[("body_template", "'{{ data.name + 1 }}'")],
        "null",
        &[
            "body_template",
            "line 1",
            "data.name + 1",
            "fix the webhook",
        ],
    )
    .await;
}

#[tokio::test]
async fn undefined_variable_path_in_a_template() {
    rejected_with(
        "http://127.0.0.1:1/",
        &[("body_template", "'{\"x\": \"{{ data.nosuch.field }}\"}'")],
        "null",
        &[
            "body_template",
            "undefined",
            "data.nosuch.field",
            "fix the webhook",
        ],
    )
    .await;
}

#[tokio::test]
async fn payload_url_rendering_an_invalid_url() {
    rejected_with(
        "http://{{ data.nosuch }}:80/hook",
        &[],
        "null",
        &["payload_url", "not a valid URL", "fix the webhook"],
    )
    .await;
}

#[tokio::test]
async fn payload_url_with_an_unsupported_scheme() {
    rejected_with(
        "ftp://127.0.0.1/{{ data.slug }}",
        &[],
        "null",
        &[
            "payload_url",
            "unsupported scheme \"ftp\"",
            "use http or https",
        ],
    )
    .await;
}
