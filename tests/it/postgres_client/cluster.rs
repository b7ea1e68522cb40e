//! A second, TLS-only PostgreSQL 15 cluster for one test: its own data directory and port,
//! certificates from a private CA, `hostssl` lines only, and passwords (or a client
//! certificate for the role `certuser`). Stopped and removed when dropped, also on panic.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The superuser's password: the tests look for it in logs.
pub const PASSWORD: &str = "Tls-Cluster-Passw0rd-7f3a";

/// The role that logs in with a client certificate (`hostssl ... cert`), no password.
pub const CERT_USER: &str = "certuser";

/// A certificate authority, written to a PEM file for `sslrootcert`.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub file: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let file = dir.join(format!("{name}.crt"));
        std::fs::write(&file, issuer.pem()).unwrap();
        Ca { issuer, file }
    }

    /// A certificate and key signed by this CA, written as `<name>.crt` and `<name>.key`
    /// (mode 0600); `common_name` is what `cert` authentication reads as the role.
    pub fn issue(
        &self,
        dir: &Path,
        name: &str,
        sans: &[&str],
        common_name: &str,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_file, key_file) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        write_private(&key_file, &key.serialize_pem());
        (cert_file, key_file)
    }
}

pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The running cluster. Its server certificate names only 127.0.0.1, so `localhost` is a
/// name mismatch.
pub struct TlsCluster {
    pub port: u16,
    /// The CA that signed the server's and the client's certificates.
    pub ca: Ca,
    /// Files for the client side: CA, client certificate and key.
    pub dir: PathBuf,
    data: PathBuf,
}

/// PostgreSQL refuses to run as root: run its programs as the `postgres` user then.
fn as_postgres(program: &str) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", &format!("{BIN}/{program}")]);
        command
    } else {
        Command::new(format!("{BIN}/{program}"))
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Gives a path to the `postgres` user when we run as root.
fn give_to_postgres(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "chown {}", path.display());
    }
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TlsCluster {
    pub fn start(name: &str) -> TlsCluster {
        let root = std::env::temp_dir().join(format!(
            "nbo-tls-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let dir = root.join("client");
        let data = root.join("data");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        let ca = Ca::new(&dir, "cluster-ca");
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        give_to_postgres(&root);
        // From here on the guard owns the directory: a failed start still removes it.
        let mut cluster = TlsCluster {
            port: 0,
            ca,
            dir,
            data,
        };
        run(
            as_postgres("initdb")
                .args([
                    "--no-sync",
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    "--pwfile",
                ])
                .arg(&pwfile)
                .arg("-D")
                .arg(&cluster.data),
            "initdb",
        );
        let server_dir = root.join("server");
        std::fs::create_dir_all(&server_dir).unwrap();
        cluster
            .ca
            .issue(&server_dir, "server", &["127.0.0.1"], "127.0.0.1");
        std::fs::copy(&cluster.ca.file, server_dir.join("ca.crt")).unwrap();
        give_to_postgres(&server_dir);
        std::fs::write(
            cluster.data.join("pg_hba.conf"),
            format!(
                "# TLS only: no host lines, so plain connections are refused.\n\
                 hostssl all {CERT_USER} 127.0.0.1/32 cert\n\
                 hostssl all all 127.0.0.1/32 scram-sha-256\n\
                 hostssl all all ::1/128 scram-sha-256\n\
                 local all all scram-sha-256\n"
            ),
        )
        .unwrap();
        cluster.port = free_port();
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sock}'\n\
             ssl = on\nssl_cert_file = '{s}/server.crt'\nssl_key_file = '{s}/server.key'\n\
             ssl_ca_file = '{s}/ca.crt'\nfsync = off\nshared_buffers = 16MB\nmax_connections = 40\n",
            port = cluster.port,
            sock = cluster.data.display(),
            s = server_dir.display(),
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(cluster.data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
        give_to_postgres(&root);
        run(
            as_postgres("pg_ctl")
                .args(["start", "-w", "-t", "60", "-l"])
                .arg(root.join("server.log"))
                .arg("-D")
                .arg(&cluster.data),
            "pg_ctl start",
        );
        cluster
    }

    /// A URL for `user` (with the cluster's password) and `dbname` plus `query` parameters.
    pub fn url(&self, dbname: &str, query: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{dbname}?{query}",
            self.port
        )
    }

    /// The CA file's path, for `sslrootcert`.
    pub fn ca_file(&self) -> String {
        self.ca.file.display().to_string()
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&self.data)
            .output();
        if let Some(root) = self.data.parent() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}
