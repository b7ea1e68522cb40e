//! The official Standard Webhooks library (PyPI `standardwebhooks`) as a verifier: a virtualenv
//! made once per target directory (or the Python named by `NETBOX_OUTBOX_TEST_PYTHON`, which
//! must have the package), and a script that verifies recorded requests with it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The pinned version the tests verify against.
const PACKAGE: &str = "standardwebhooks==1.3.0";

static MADE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// A Python interpreter that can `import standardwebhooks`; fails the test saying what to
/// install when none can be made.
pub fn python() -> PathBuf {
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(python) = made.as_ref() {
        return python.clone();
    }
    let python = match std::env::var_os("NETBOX_OUTBOX_TEST_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => {
            let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("standardwebhooks-venv");
            let python = venv.join("bin/python");
            if !imports(&python) {
                let _ = std::fs::remove_dir_all(&venv);
                let made = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .is_ok_and(|s| s.success())
                    && Command::new(venv.join("bin/pip"))
                        .args(["install", "--quiet", PACKAGE])
                        .status()
                        .is_ok_and(|s| s.success());
                assert!(
                    made,
                    "could not make a virtualenv with {PACKAGE} in {}: this test needs python3 \
                     with venv and pip, and PyPI (or set NETBOX_OUTBOX_TEST_PYTHON to a Python \
                     that has the package)",
                    venv.display()
                );
            }
            python
        }
    };
    assert!(
        imports(&python),
        "{} cannot import standardwebhooks (pip install {PACKAGE})",
        python.display()
    );
    *made = Some(python.clone());
    python
}

fn imports(python: &PathBuf) -> bool {
    Command::new(python)
        .args(["-c", "import standardwebhooks"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const VERIFY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
given = json.load(sys.stdin)
n = 0
for secret in given["secrets"]:
    hook = Webhook(secret)
    for case in given["cases"]:
        try:
            hook.verify(case["body"], case["headers"])
        except WebhookVerificationError as e:
            print("fail:", secret[:10], case["headers"]["webhook-id"], e)
            sys.exit(0)
        n += 1
print("ok", n)
"#;

/// Verifies each case (`{"body": ..., "headers": {...}}`) with each secret; "ok N" when all N
/// verify, else "fail: ..." naming the first that does not.
pub fn verify(python: &PathBuf, secrets: &[&str], cases: &[serde_json::Value]) -> String {
    use std::io::Write;
    let mut child = Command::new(python)
        .args(["-c", VERIFY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python");
    let input = serde_json::json!({ "secrets": secrets, "cases": cases });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the verifier failed to run");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}
