//! netbox-outbox as a PostgreSQL client like psql: TLS by `sslmode` against a TLS-only cluster,
//! the `PG*` variables and `~/.pgpass`, and no secret in its logs at any level.

mod cluster;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use netbox_outbox::commands::receive::Receiver;
use netbox_outbox::db::Database;
use tokio_postgres::Client;

use crate::support::db::insert_site;
use crate::support::rules::{Rule, webhook};
use crate::support::wait::eventually;
use cluster::{CERT_USER, PASSWORD, TlsCluster, write_private};

const WAIT: Duration = Duration::from_secs(30);

/// The address from a URL alone: the test process's own PG* variables must not leak in.
fn database(url: &str) -> Database {
    Database::resolve(Some(url), &|_| None).unwrap_or_else(|e| panic!("{url}: {e}"))
}

async fn connect(url: &str) -> Result<Client, String> {
    database(url)
        .connect()
        .await
        .map_err(|e| netbox_outbox::error_chain(&e))
}

/// Whether this session is encrypted, as the server sees it.
async fn over_tls(client: &Client) -> bool {
    client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Runs the binary with only the given environment (plus PATH), so nothing of the test
/// process's own environment decides the outcome.
async fn netbox_outbox(args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_netbox-outbox"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run netbox-outbox")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `migrate --check` exits 5 (pending) only after it reached the database: a connection
/// failure exits 4.
fn reached_the_database(o: &Output) -> bool {
    o.status.code() == Some(5) && String::from_utf8_lossy(&o.stdout).contains("pending:")
}

#[tokio::test]
async fn require_connects_over_tls() {
    let cluster = TlsCluster::start("require");
    let client = connect(&cluster.url("postgres", "sslmode=require"))
        .await
        .unwrap();
    assert!(over_tls(&client).await);
}

#[tokio::test]
async fn verify_full_with_the_right_ca_connects() {
    let cluster = TlsCluster::start("verify-full");
    let url = cluster.url(
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", cluster.ca_file()),
    );
    let client = connect(&url).await.unwrap();
    assert!(over_tls(&client).await);
}

#[tokio::test]
async fn verify_full_with_a_wrong_ca_fails_clearly() {
    let cluster = TlsCluster::start("wrong-ca");
    let other = cluster::Ca::new(&cluster.dir, "some-other-ca");
    let url = cluster.url(
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", other.file.display()),
    );
    let error = connect(&url).await.unwrap_err();
    assert!(
        error.contains(&format!(
            "could not connect to PostgreSQL at postgres@127.0.0.1:{}/postgres (sslmode=verify-full)",
            cluster.port
        )),
        "{error}"
    );
    assert!(
        error.contains("not signed by a CA in sslrootcert")
            && error.contains(&other.file.display().to_string()),
        "{error}"
    );
    assert!(!error.contains(PASSWORD), "{error}");
}

#[tokio::test]
async fn hostname_mismatch_fails_verify_full_but_passes_verify_ca() {
    // The server's certificate names 127.0.0.1 only; localhost is the same server by another name.
    let cluster = TlsCluster::start("mismatch");
    let url = |mode: &str| {
        format!(
            "postgres://postgres:{PASSWORD}@localhost:{}/postgres?sslmode={mode}&sslrootcert={}",
            cluster.port,
            cluster.ca_file()
        )
    };
    let error = connect(&url("verify-full")).await.unwrap_err();
    assert!(
        error.contains("not issued for host \"localhost\"") && error.contains("sslmode=verify-ca"),
        "{error}"
    );
    let client = connect(&url("verify-ca")).await.unwrap();
    assert!(over_tls(&client).await);
}

#[tokio::test]
async fn disable_is_refused_by_a_tls_only_server() {
    let cluster = TlsCluster::start("disable");
    let error = connect(&cluster.url("postgres", "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(
        error.contains("(sslmode=disable)")
            && error.contains("only over TLS")
            && error.contains("set sslmode=require or stronger"),
        "{error}"
    );
}

#[tokio::test]
async fn client_certificate_authentication() {
    let cluster = TlsCluster::start("client-cert");
    let admin = connect(&cluster.url("postgres", "sslmode=require"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("create role {CERT_USER} login"))
        .await
        .unwrap();
    let (cert, key) = cluster.ca.issue(&cluster.dir, "client", &[], CERT_USER);
    let url = format!(
        "host=127.0.0.1 port={} user={CERT_USER} dbname=postgres sslmode=verify-full \
         sslrootcert='{}' sslcert='{}' sslkey='{}'",
        cluster.port,
        cluster.ca_file(),
        cert.display(),
        key.display()
    );
    let client = connect(&url).await.unwrap();
    let user: String = client
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, CERT_USER);

    // Without the certificate the server has no way to let this role in.
    let without = url.split(" sslcert").next().unwrap();
    let error = connect(without).await.unwrap_err();
    assert!(error.contains("could not connect"), "{error}");
}

#[tokio::test]
async fn pgpassword_and_pgpass_are_used_when_the_url_has_none() {
    let cluster = TlsCluster::start("passwords");
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        cluster.port,
        cluster.ca_file()
    );
    let with_pgpassword = netbox_outbox(
        &["migrate", "--check"],
        &[("DATABASE_URL", &url), ("PGPASSWORD", PASSWORD)],
    )
    .await;
    assert!(
        reached_the_database(&with_pgpassword),
        "{}",
        stderr(&with_pgpassword)
    );

    let home = cluster.dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let pgpass = home.join(".pgpass");
    write_private(
        &pgpass,
        &format!(
            "# host:port:database:user:password\n127.0.0.1:{}:*:postgres:{PASSWORD}\n",
            cluster.port
        ),
    );
    let home = home.display().to_string();
    let with_pgpass = netbox_outbox(
        &["migrate", "--check"],
        &[("DATABASE_URL", &url), ("HOME", &home)],
    )
    .await;
    assert!(
        reached_the_database(&with_pgpass),
        "{}",
        stderr(&with_pgpass)
    );

    // As libpq: a password file others may read is ignored, and the error says so.
    set_mode(&pgpass, 0o644);
    let too_open = netbox_outbox(
        &["migrate", "--check"],
        &[("DATABASE_URL", &url), ("HOME", &home)],
    )
    .await;
    assert_eq!(too_open.status.code(), Some(4), "{}", stderr(&too_open));
    assert!(
        stderr(&too_open).contains("was ignored: others may read it; chmod 0600 it"),
        "{}",
        stderr(&too_open)
    );
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn pg_variables_name_the_database_when_there_is_no_url() {
    let cluster = TlsCluster::start("pg-variables");
    let port = cluster.port.to_string();
    let ca = cluster.ca_file();
    let output = netbox_outbox(
        &["migrate", "--check"],
        &[
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", &port),
            ("PGUSER", "postgres"),
            ("PGDATABASE", "template1"),
            ("PGPASSWORD", PASSWORD),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", &ca),
        ],
    )
    .await;
    assert!(reached_the_database(&output), "{}", stderr(&output));

    // The variables are honoured, not merely tolerated: a wrong PGDATABASE is named.
    let wrong = netbox_outbox(
        &["migrate", "--check"],
        &[
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", &port),
            ("PGUSER", "postgres"),
            ("PGDATABASE", "no_such_db"),
            ("PGPASSWORD", PASSWORD),
            ("PGSSLMODE", "require"),
        ],
    )
    .await;
    assert_eq!(wrong.status.code(), Some(4), "{}", stderr(&wrong));
    assert!(
        stderr(&wrong).contains("there is no database \"no_such_db\""),
        "{}",
        stderr(&wrong)
    );
}

/// A NetBox-shaped database named `netbox` in the cluster, migrated, reached over TLS.
async fn netbox_database(cluster: &TlsCluster) -> Client {
    let admin = connect(&cluster.url("postgres", "sslmode=require"))
        .await
        .unwrap();
    admin.batch_execute("create database netbox").await.unwrap();
    let mut client = connect(&cluster.url("netbox", "sslmode=require"))
        .await
        .unwrap();
    client
        .batch_execute(include_str!("../fixtures/netbox_schema.sql"))
        .await
        .expect("fixture schema loads");
    netbox_outbox::migrations::run(&mut client)
        .await
        .expect("migrations apply");
    client
}

/// The sidecar binary, killed when dropped, and its stderr, read as it comes (a full pipe
/// would block its logging).
fn spawn_sidecar(
    cluster: &TlsCluster,
    url: &str,
    toml: &str,
    env: &[(&str, &str)],
) -> (tokio::process::Child, tokio::task::JoinHandle<String>) {
    let config = cluster
        .dir
        .join(format!("sidecar-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&config, toml).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_netbox-outbox"))
        .args(["run", "--config"])
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", url)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the sidecar binary");
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut log = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut log).await;
        String::from_utf8_lossy(&log).into_owned()
    });
    (child, log)
}

const FAST: &str = "[delivery]\npoll_interval = \"50ms\"\nretry_schedule = [\"200ms\"]\n\
                    retry_jitter = 0.0\n[assembly]\npoll_interval = \"50ms\"\n[rules]\n\
                    refresh_interval = \"0s\"\n[metrics]\nlisten = \"\"\n";

#[tokio::test]
async fn the_sidecar_delivers_over_verified_tls() {
    let cluster = TlsCluster::start("sidecar");
    let client = netbox_database(&cluster).await;
    let receiver = Receiver::start().await.unwrap();
    let hook = webhook(&client, "crm", &receiver.url("/hook"), &[]).await;
    Rule::to_webhook("sites", hook).create(&client).await;
    let url = cluster.url(
        "netbox",
        &format!("sslmode=verify-full&sslrootcert={}", cluster.ca_file()),
    );
    let (_sidecar, _log) = spawn_sidecar(&cluster, &url, FAST, &[]);
    insert_site(&client, "over-tls").await;
    let got = receiver.wait_for(1, WAIT).await.unwrap();
    assert_eq!(
        got.len(),
        1,
        "the webhook arrived from the sidecar connected over TLS"
    );
    assert_eq!(got[0].json()["data"]["name"], "over-tls");
    // Every connection of the sidecar (claims, LISTEN, ...) is encrypted.
    eventually("the sidecar's connections, all over TLS", WAIT, || async {
        let row = client
            .query_one(
                "select count(*), count(*) filter (where s.ssl)
                 from pg_stat_activity a join pg_stat_ssl s using (pid)
                 where a.application_name = 'netbox-outbox' and a.pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        let (all, tls): (i64, i64) = (row.get(0), row.get(1));
        (all >= 2 && all == tls).then_some(())
    })
    .await;
}

/// At the most verbose level, with RUST_LOG=trace too, the log holds no webhook secret, no
/// header value, no body and no database password; and it is verbose (our debug lines show).
#[tokio::test]
async fn no_secrets_in_logs_at_trace() {
    const SECRET: &str = "hmac-Secret-4c1e";
    const BEARER: &str = "Bearer-Token-9d2b";
    const API_KEY: &str = "Api-Key-Value-51f0";
    const MARKER: &str = "Body-Marker-a7e3";
    let cluster = TlsCluster::start("logs");
    let client = netbox_database(&cluster).await;
    let receiver = Receiver::start().await.unwrap();
    let secret_hook = webhook(
        &client,
        "secret",
        &receiver.url("/secret"),
        &[
            ("secret", &format!("'{SECRET}'")),
            (
                "additional_headers",
                &format!("'Authorization: Bearer {BEARER}\nX-Api-Key: {API_KEY}'"),
            ),
            (
                "body_template",
                &format!("'{{\"marker\": \"{MARKER}\", \"name\": \"{{{{ data.name }}}}\"}}'"),
            ),
        ],
    )
    .await;
    let plain_hook = webhook(&client, "plain", &receiver.url("/plain"), &[]).await;
    for hook in [secret_hook, plain_hook] {
        Rule::to_webhook(&format!("sites-{hook}"), hook)
            .create(&client)
            .await;
    }
    let url = cluster.url("netbox", "sslmode=require");
    let (mut sidecar, log) = spawn_sidecar(
        &cluster,
        &url,
        &format!("{FAST}[log]\nlevel = \"trace\"\n"),
        &[("RUST_LOG", "trace")],
    );
    insert_site(&client, "logged").await;
    let got = receiver.wait_for(2, WAIT).await.unwrap();
    let secret = got
        .iter()
        .find(|r| r.path == "/secret")
        .expect("the secret webhook arrived");
    assert!(
        got.iter().any(|r| r.path == "/plain"),
        "the unrelated webhook arrived too"
    );
    // The secrets really were in play: they reached the receiver.
    assert_eq!(
        secret.header("authorization"),
        Some(format!("Bearer {BEARER}").as_str())
    );
    assert_eq!(secret.header("x-api-key"), Some(API_KEY));
    assert!(secret.signature_valid(SECRET));
    assert!(String::from_utf8_lossy(&secret.body).contains(MARKER));

    sidecar.start_kill().unwrap();
    sidecar.wait().await.unwrap();
    let log = log.await.unwrap();
    assert!(
        log.contains("TRACE") && log.contains("DEBUG"),
        "the log is at trace level:\n{log}"
    );
    for (what, needle) in [
        ("the webhook secret", SECRET),
        ("the Authorization value", BEARER),
        ("the X-Api-Key value", API_KEY),
        ("the body", MARKER),
        ("the database password", PASSWORD),
    ] {
        assert!(!log.contains(needle), "{what} is in the log:\n{log}");
    }
}
