//! The suite's own throwaway PostgreSQL cluster: restarting it mid-stream disturbs nobody else.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A PostgreSQL cluster in a temporary directory, listening on a free port of 127.0.0.1, removed
/// when dropped.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// PostgreSQL refuses to run as root: then it runs as this OS user.
    run_as: Option<&'static str>,
    /// Keep the data directory when dropped (a failed run, to look into).
    keep: std::sync::atomic::AtomicBool,
}

impl Cluster {
    /// Creates and starts a cluster (initdb, trust authentication, superuser `postgres`).
    pub fn create() -> Cluster {
        let bin = server_bindir();
        let run_as = running_as_root().then_some("postgres");
        let dir = std::env::temp_dir().join(format!("netbox-outbox-chaos-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the chaos cluster's directory");
        if let Some(user) = run_as {
            must(
                Command::new("chown").args([user]).arg(&dir),
                "give the chaos cluster's directory to the postgres OS user",
            );
        }
        let cluster = Cluster {
            port: free_port(),
            dir,
            bin,
            run_as,
            keep: false.into(),
        };
        must(
            &mut cluster.pg(
                "initdb",
                &[
                    "-D",
                    &cluster.data().display().to_string(),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
            ),
            "initdb the chaos cluster",
        );
        cluster.start();
        cluster
    }

    /// A URL of a database of this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c max_connections=200",
            self.port,
            self.dir.display()
        );
        must(
            &mut self.pg(
                "pg_ctl",
                &[
                    "-D",
                    &self.data().display().to_string(),
                    "-l",
                    &self.dir.join("postgresql.log").display().to_string(),
                    "-o",
                    &options,
                    "-w",
                    "start",
                ],
            ),
            "start the chaos cluster",
        );
    }

    /// Stops the server the hard way: every backend dies at once, as in a crash, and the next
    /// start runs crash recovery.
    pub fn stop_immediately(&self) {
        must(
            &mut self.pg(
                "pg_ctl",
                &[
                    "-D",
                    &self.data().display().to_string(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            ),
            "stop the chaos cluster",
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        let mut command = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .current_dir(&self.dir);
        command
    }
}

impl Cluster {
    /// Keeps the cluster's files when it is dropped, and says how to start it again.
    pub fn keep(&self) {
        self.keep.store(true, std::sync::atomic::Ordering::SeqCst);
        println!(
            "the chaos database is kept in {}; look into it with:\n  {}pg_ctl -D {} -o '-p {} -c \
             listen_addresses=127.0.0.1 -c unix_socket_directories={}' start && psql {}",
            self.dir.display(),
            self.run_as.map_or(String::new(), |u| format!(
                "runuser -u {u} -- {}/",
                self.bin.display()
            )),
            self.data().display(),
            self.port,
            self.dir.display(),
            self.url("netbox")
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .pg(
                "pg_ctl",
                &[
                    "-D",
                    &self.data().display().to_string(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            )
            .stderr(Stdio::null())
            .status();
        if !self.keep.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs a command to completion; a failure stops the suite with what was being done.
fn must(command: &mut Command, what: &str) {
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("could not {what}: {command:?} exited with {status}"),
        Err(e) => panic!("could not {what}: {command:?}: {e}"),
    }
}

/// The server programs: `pg_config --bindir`, else the newest /usr/lib/postgresql/<version>/bin.
fn server_bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "the chaos suite needs PostgreSQL's server programs (initdb, pg_ctl): install them \
             and put pg_config on PATH"
        )
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port for the chaos cluster")
}
