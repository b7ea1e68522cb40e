//! The sidecar binary run as a child process, its log in a file: for tests that read what it
//! logs or scrape its endpoints. It fails the test if it exited on its own before the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::db::TestDb;

pub struct SidecarBinary {
    child: Child,
    log: PathBuf,
}

impl SidecarBinary {
    /// `netbox-outbox run --config <config>` on `db`, logging at warn level to a file.
    pub fn start(db: &TestDb, config: &Path) -> SidecarBinary {
        let log = std::env::temp_dir().join(format!("nbo-log-{}.txt", uuid::Uuid::new_v4()));
        let child = Command::new(env!("CARGO_BIN_EXE_netbox-outbox"))
            .args(["run", "--config"])
            .arg(config)
            .env("DATABASE_URL", db.url())
            .env("NETBOX_OUTBOX_LOG__LEVEL", "warn")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the log file"))
            .spawn()
            .expect("start the sidecar binary");
        SidecarBinary { child, log }
    }

    /// Whether it has exited (by itself: only `drop` kills it).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SidecarBinary {
    /// Kills it; a sidecar that had already exited (it could not start, or stopped on an error)
    /// fails the test with its log, unless the test is failing already.
    fn drop(&mut self) {
        let exited = self.child.try_wait().ok().flatten();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.log();
        let _ = std::fs::remove_file(&self.log);
        if let Some(status) = exited
            && !std::thread::panicking()
        {
            panic!("the sidecar binary exited by itself ({status}) before the test ended:\n{log}");
        }
    }
}
