//! The `netbox-outbox` command run as a child process (without blocking the test's runtime, which
//! serves the receiver), with a deadline, and its output as text.

use std::process::Output;
use std::time::Duration;

use super::db::TestDb;

/// Longer than any command takes; a command that hangs fails the test instead of the suite.
const DEADLINE: Duration = Duration::from_secs(60);

/// `netbox-outbox <args>` with only the environment given (no config file, database or log filter
/// inherited from the caller).
pub async fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_netbox-outbox"));
    command
        .args(args)
        .env_remove("NETBOX_OUTBOX_CONFIG")
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("the command ends")
        .expect("run netbox-outbox")
}

/// `netbox-outbox <args>` against `db`.
pub async fn cli(db: &TestDb, args: &[&str]) -> Output {
    cli_env(args, &[("DATABASE_URL", &db.url())]).await
}

/// What it printed on stdout.
pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What it printed on stderr.
pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
