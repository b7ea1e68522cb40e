//! The sidecars: the real binary, started with the suite's configuration, killed with SIGKILL
//! and replaced; any exit the suite did not cause is recorded (a sidecar must ride out a
//! database restart by itself).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;

struct Running {
    child: Child,
    number: usize,
}

/// The sidecar processes of one run.
pub struct Fleet {
    config: PathBuf,
    database_url: String,
    log_dir: PathBuf,
    clock: Instant,
    running: Vec<Running>,
    started: usize,
    /// When each SIGKILL was sent, since the run started.
    pub kills: Vec<Duration>,
    /// Sidecars that exited without being killed: which, when and how.
    pub unexpected_exits: Vec<String>,
    /// The sizes the fleet ran at.
    pub sizes: Vec<usize>,
}

impl Fleet {
    pub fn new(config: PathBuf, database_url: String, log_dir: PathBuf, clock: Instant) -> Fleet {
        Fleet {
            config,
            database_url,
            log_dir,
            clock,
            running: Vec::new(),
            started: 0,
            kills: Vec::new(),
            unexpected_exits: Vec::new(),
            sizes: Vec::new(),
        }
    }

    /// Starts or kills sidecars until `n` run.
    pub fn resize(&mut self, n: usize) {
        self.reap();
        while self.running.len() < n {
            self.spawn();
        }
        while self.running.len() > n {
            self.kill(self.running.len() - 1);
        }
        if self.sizes.last() != Some(&n) {
            self.sizes.push(n);
        }
    }

    /// SIGKILLs one sidecar at random and starts another in its place.
    pub fn kill_one_and_replace(&mut self) {
        self.reap();
        if self.running.is_empty() {
            return;
        }
        let victim = rand::rng().random_range(0..self.running.len());
        self.kill(victim);
        self.spawn();
    }

    /// Notes sidecars that exited by themselves, and starts others in their place.
    pub fn reap(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            match self.running[i].child.try_wait() {
                Ok(Some(status)) => {
                    let gone = self.running.remove(i);
                    self.unexpected_exits.push(format!(
                        "sidecar #{} exited by itself at {:.1}s with {status} (log: {})",
                        gone.number,
                        self.clock.elapsed().as_secs_f64(),
                        self.log_path(gone.number).display()
                    ));
                    self.spawn();
                }
                _ => i += 1,
            }
        }
    }

    /// Whether every running sidecar has finished starting (it logs so once it is connected,
    /// registered and working; a database restart before that makes it exit, by design).
    pub fn all_started(&self) -> bool {
        self.running.iter().all(|r| {
            std::fs::read_to_string(self.log_path(r.number))
                .is_ok_and(|log| log.contains("netbox-outbox running"))
        })
    }

    /// Kills every sidecar (the end of the run).
    pub fn kill_all(&mut self) {
        self.reap();
        while !self.running.is_empty() {
            let mut gone = self.running.remove(0);
            let _ = gone.child.kill();
            let _ = gone.child.wait();
        }
    }

    fn kill(&mut self, index: usize) {
        let mut victim = self.running.remove(index);
        victim.child.kill().expect("SIGKILL a sidecar");
        victim.child.wait().expect("reap a killed sidecar");
        self.kills.push(self.clock.elapsed());
    }

    fn spawn(&mut self) {
        self.started += 1;
        let number = self.started;
        let log = std::fs::File::create(self.log_path(number)).expect("a sidecar log file");
        let child = Command::new(env!("CARGO_BIN_EXE_netbox-outbox"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("DATABASE_URL", &self.database_url)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a sidecar log file"))
            .stderr(log)
            .spawn()
            .expect("start the sidecar binary");
        self.running.push(Running { child, number });
    }

    fn log_path(&self, number: usize) -> PathBuf {
        self.log_dir.join(format!("sidecar-{number}.log"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.kill_all();
    }
}
