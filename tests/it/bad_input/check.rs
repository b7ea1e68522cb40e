//! What `check` finds before any delivery.

use super::*;

/// `check --offline` names each misconfiguration that can be found before delivery, and exits 5.
#[tokio::test]
async fn check_catches_each_misconfiguration() {
    let scene = scene().await;
    let client = &scene.client;
    let not_a_cert = std::env::temp_dir().join(format!("not-a-cert-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&not_a_cert, "nope\n").unwrap();
    let not_a_cert = format!("'{}'", not_a_cert.display());
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "t-parse",
            "http://127.0.0.1:1/",
            vec![("body_template", "'{% if %}'")],
            "body_template does not parse",
        ),
        (
            "t-undefined",
            "http://127.0.0.1:1/",
            vec![("body_template", "'{{ nothing.here }}'")],
            "nothing.here",
        ),
        (
            "u-scheme",
            "ftp://127.0.0.1/x",
            vec![],
            "unsupported scheme",
        ),
        ("u-invalid", "http://exa mple/", vec![], "not a valid URL"),
        (
            "ca-missing",
            "https://127.0.0.1:1/",
            vec![("ca_file_path", "'/nonexistent/ca.pem'")],
            "cannot read it",
        ),
        (
            "ca-invalid",
            "https://127.0.0.1:1/",
            vec![("ca_file_path", &not_a_cert)],
            "no PEM certificate",
        ),
        (
            "h-colon",
            "http://127.0.0.1:1/",
            vec![("additional_headers", "'X-Token abc'")],
            "line 1 has no colon",
        ),
        (
            "h-control",
            "http://127.0.0.1:1/",
            vec![("additional_headers", "E'X-A: b\\x07'")],
            "control character",
        ),
    ];
    for (name, url, extra, _) in &cases {
        Rule::new(name, url)
            .webhook_columns(extra)
            .create(client)
            .await;
    }
    let good: i64 = client
        .query_one("select id from extras_webhook where name = 'good'", &[])
        .await
        .unwrap()
        .get(0);
    Rule::to_webhook("c-operator", good)
        .conditions(r#"'{"attr": "name", "op": "neq", "value": 1}'"#)
        .create(client)
        .await;
    Rule::to_webhook("c-shape", good)
        .conditions("'[1, 2]'")
        .create(client)
        .await;
    let dangling = Rule::to_webhook("dangling", good).create(client).await.rule;
    client
        .execute(
            "update extras_eventrule set action_object_id = 999999 where id = $1",
            &[&dangling],
        )
        .await
        .unwrap();
    Rule::to_webhook("typo", good)
        .action_type("netbox_outbox.webhok")
        .create(client)
        .await;

    let o = cli(&scene.db, &["check", "--offline"]).await;
    assert_eq!(o.status.code(), Some(5), "{}{}", out(&o), err(&o));
    let text = out(&o);
    let problems: Vec<&str> = text.lines().filter(|l| l.starts_with("PROBLEM")).collect();
    for (name, _, _, expected) in &cases {
        assert!(
            problems
                .iter()
                .any(|l| l.contains(&format!("webhook \"{name}\"")) && l.contains(expected)),
            "{name}: {expected:?} not reported as a problem:\n{text}"
        );
    }
    for (rule_name, expected) in [
        ("c-operator", "unknown operator \"neq\""),
        ("c-shape", "must be a JSON object"),
        ("dangling", "webhook 999999, which does not exist"),
        ("typo", "netbox_outbox.webhok"),
    ] {
        assert!(
            problems.iter().any(|l| l.contains(&format!("event rule \"{rule_name}\"")) && l.contains(expected)),
            "{rule_name}: {expected:?} not reported as a problem:\n{text}"
        );
    }

    // configuration errors end check before the database, with the configuration's exit code
    let path = config_file("[delivery]\nretry_schedule = [\"5s\", \"soon\"]\n");
    let o = cli(&scene.db, &["check", "--config", path.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    assert!(
        err(&o).contains("delivery.retry_schedule[1]: \"soon\" is not a duration"),
        "{}",
        err(&o)
    );
    let _ = std::fs::remove_file(path);
}
