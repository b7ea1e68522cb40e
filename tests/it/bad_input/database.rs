//! The database unreachable, refusing the role, or lost mid-run.

use super::*;

#[tokio::test]
async fn database_unreachable_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/netbox");
    let o = cli_env(&["run"], &[("DATABASE_URL", &url)]).await;
    assert_eq!(o.status.code(), Some(4), "{}", err(&o));
    let e = err(&o);
    assert!(
        e.contains(&format!(
            "could not connect to PostgreSQL at postgres@127.0.0.1:{port}/netbox"
        )),
        "{e}"
    );
    assert!(e.contains("check DATABASE_URL"), "{e}");
    assert!(e.contains("is PostgreSQL running"), "{e}");
    let help = cli_env(&["--help"], &[]).await;
    assert!(
        out(&help).contains("4 database unreachable"),
        "--help documents the exit codes: {}",
        out(&help)
    );
}

/// The password cannot be wrong on the trust-authenticated test server, so the test uses a role
/// the server refuses; both give the role and what to check.
#[tokio::test]
async fn wrong_password_or_role() {
    let db = TestDb::migrated().await;
    let url = db.url().replace("postgres@", "no_such_role:pw-xyzzy@");
    let o = cli_env(&["run"], &[("DATABASE_URL", &url)]).await;
    assert_eq!(o.status.code(), Some(4), "{}", err(&o));
    let e = err(&o);
    assert!(e.contains("role \"no_such_role\""), "{e}");
    assert!(e.contains("check the user name and password"), "{e}");
    assert!(!e.contains("xyzzy"), "the password is never printed: {e}");
}

/// A TCP proxy in front of PostgreSQL that the test can cut (every connection dropped, new ones
/// refused) and restore: the database lost and back, without touching the shared server.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    live: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let refused = Arc::new(AtomicUsize::new(0));
        let live: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (u, r, l) = (up.clone(), refused.clone(), live.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    r.fetch_add(1, Ordering::SeqCst);
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy {
            port,
            up,
            refused,
            live,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.live.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The database lost mid-run: the sidecar keeps trying (it never exits) and, once the database
/// is back, delivers what was committed meanwhile.
#[tokio::test]
async fn database_lost_mid_run() {
    let scene = scene().await;
    let proxy = Proxy::start().await;
    let through = Database::parse(
        &scene
            .db
            .url()
            .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port)),
    )
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone();
    let sidecar = tokio::spawn(netbox_outbox::sidecar::run(
        test_config(""),
        through,
        async move { signal.cancelled().await },
    ));
    scene.site_delivers("before").await;
    proxy.cut();
    insert_site(&scene.client, "during").await;
    eventually("the sidecar to keep trying", WAIT, || async {
        (proxy.refused.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    assert!(!sidecar.is_finished(), "the sidecar does not give up");
    proxy.restore();
    eventually(
        "the change made while the database was away",
        WAIT,
        || async {
            scene
                .receiver
                .received()
                .iter()
                .any(|r| r.json()["data"]["name"] == "during")
                .then_some(())
        },
    )
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(WAIT, sidecar).await;
}
