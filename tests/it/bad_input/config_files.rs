//! Configuration files the binary refuses before touching the database (exit 3).

use super::*;

/// `run` with this config file: exits 3 before touching the database, stderr holding each
/// fragment.
async fn config_refused(toml: &str, env: &[(&str, &str)], expected: &[&str]) {
    let path = config_file(toml);
    let mut vars = vec![("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")];
    vars.extend_from_slice(env);
    let o = cli_env(&["run", "--config", path.to_str().unwrap()], &vars).await;
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    for fragment in expected {
        assert!(
            err(&o).contains(fragment),
            "{fragment:?} missing from {}",
            err(&o)
        );
    }
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn config_with_an_unknown_key() {
    config_refused(
        "[delivery]\nconcurency = 3\n",
        &[],
        &[
            "unknown key `concurency` in [delivery]",
            "did you mean `concurrency`",
            "valid keys: concurrency, per_webhook_concurrency",
        ],
    )
    .await;
}

#[tokio::test]
async fn config_with_a_bad_duration() {
    config_refused(
        "[delivery]\npoll_interval = \"5 parsecs\"\n",
        &[],
        &[
            "delivery.poll_interval: \"5 parsecs\" is not a duration",
            "500ms, 30s, 5m, 2h or 1d",
        ],
    )
    .await;
}

#[tokio::test]
async fn config_with_a_zero_poll_interval() {
    config_refused(
        "[assembly]\npoll_interval = \"0s\"\n",
        &[],
        &["assembly.poll_interval: must be more than zero"],
    )
    .await;
}

#[tokio::test]
async fn config_with_conflicting_options() {
    config_refused(
        "[delivery]\nconcurrency = 4\nper_webhook_concurrency = 8\n",
        &[],
        &["delivery.per_webhook_concurrency: 8 exceeds delivery.concurrency (4)"],
    )
    .await;
    // two sources for the database, disagreeing: which one is meant is anyone's guess
    config_refused(
        "",
        &[(
            "NETBOX_OUTBOX_DATABASE_URL",
            "postgres://other@127.0.0.1:1/x",
        )],
        &[
            "database_url",
            "DATABASE_URL",
            "NETBOX_OUTBOX_DATABASE_URL",
            "set only one",
        ],
    )
    .await;
}
