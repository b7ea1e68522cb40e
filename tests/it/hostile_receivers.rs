//! Receivers that answer badly, a host clock that is off, redirects and shutdown mid-request:
//! each case shows its local outcome in the delivery log, and an unrelated webhook on the same
//! sidecar is delivered meanwhile.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use netbox_outbox::commands::receive::{Receiver, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_postgres::Client;

use crate::support::db::{TestDb, insert_site};
use crate::support::rules::Rule;
use crate::support::sidecar::{Sidecar, test_config};
use crate::support::wait::{eventually, exactly};

const WAIT: Duration = Duration::from_secs(20);

/// A receiver written by hand on a TCP socket: reads each request (headers, and a body of
/// Content-Length bytes), answers with `answer` byte for byte and closes. Returns its URL and
/// how many requests it got.
async fn raw_receiver(answer: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                if read_request(&mut stream).await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    // the client may hang up early (a huge answer): that is its right
                    let _ = stream.write_all(&answer).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    (url, hits)
}

/// Reads one HTTP/1.1 request with a Content-Length body; false if the client went away.
async fn read_request(stream: &mut tokio::net::TcpStream) -> bool {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return true;
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

/// One test's world: its database, a healthy receiver with the unrelated webhook "healthy",
/// and a rule sending every site change to each named webhook.
struct World {
    db: TestDb,
    client: Client,
    healthy: Receiver,
}

impl World {
    async fn new() -> World {
        let db = TestDb::migrated().await;
        let client = db.client().await;
        let healthy = Receiver::start().await.unwrap();
        let world = World {
            db,
            client,
            healthy,
        };
        world
            .hook("healthy", &world.healthy.url("/healthy"), &[])
            .await;
        world
    }

    /// A webhook with a rule for every site change.
    async fn hook(&self, name: &str, url: &str, extra: &[(&str, &str)]) -> i64 {
        Rule::new(name, url)
            .webhook_columns(extra)
            .create(&self.client)
            .await
            .webhook
    }

    /// Waits until the healthy webhook's delivery of the site is recorded as delivered.
    async fn healthy_delivered(&self) {
        eventually("the unrelated webhook to be delivered", WAIT, || async {
            let state: Option<String> = self
                .client
                .query_opt(
                    "select state from netbox_outbox.delivery where webhook_name = 'healthy'",
                    &[],
                )
                .await
                .unwrap()
                .map(|r| r.get(0));
            (state.as_deref() == Some("delivered")).then_some(())
        })
        .await;
        assert_eq!(self.healthy.count(), 1, "sent once, recorded once");
    }

    /// Waits until the named webhook's delivery leaves `pending`; returns its state.
    async fn finished(&self, name: &str) -> String {
        eventually(&format!("{name}'s delivery to finish"), WAIT, || async {
            self.client
                .query_opt(
                    "select state from netbox_outbox.delivery where webhook_name = $1 and state <> 'pending'",
                    &[&name],
                )
                .await
                .unwrap()
                .map(|r| r.get::<_, String>(0))
        })
        .await
    }

    /// The attempts of the named webhook's delivery: (status, error, excerpt), in order.
    async fn attempts(&self, name: &str) -> Vec<(Option<i32>, Option<String>, Option<String>)> {
        self.client
            .query(
                "select a.status, a.error, a.response_excerpt from netbox_outbox.attempt a
                 join netbox_outbox.delivery d on d.id = a.delivery_id
                 where d.webhook_name = $1 order by a.id",
                &[&name],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }
}

/// A 200 whose body holds a NUL byte (PostgreSQL's text cannot store it) is recorded as
/// delivered with the NUL replaced; recording goes on for everyone else.
#[tokio::test]
async fn a_nul_byte_in_the_answer_is_recorded() {
    let world = World::new().await;
    let (url, hits) = raw_receiver(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nab\0cd".to_vec(),
    )
    .await;
    world.hook("nul", &url, &[]).await;
    let sidecar = Sidecar::start(&world.db, test_config(""));
    insert_site(&world.client, "alpha").await;

    world.healthy_delivered().await;
    assert_eq!(world.finished("nul").await, "delivered");
    assert_eq!(
        world.attempts("nul").await,
        [(Some(200), None, Some("ab\u{FFFD}cd".to_string()))]
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "not sent again");
    sidecar.stop().await;
}

/// A UTF-16 answer (invalid UTF-8, NULs) to a failing request: every attempt is recorded with
/// the bytes replaced, and the delivery runs its schedule to `dead`.
#[tokio::test]
async fn an_invalid_utf8_answer_is_recorded() {
    let world = World::new().await;
    let body: Vec<u8> = [0xff, 0xfe]
        .into_iter()
        .chain("busy".encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    let mut answer = format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-16\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    let (url, hits) = raw_receiver(answer).await;
    world.hook("utf16", &url, &[]).await;
    let sidecar = Sidecar::start(&world.db, test_config(""));
    insert_site(&world.client, "alpha").await;

    world.healthy_delivered().await;
    assert_eq!(world.finished("utf16").await, "dead");
    let attempts = world.attempts("utf16").await;
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    for (status, error, excerpt) in attempts {
        assert_eq!(status, Some(500));
        assert_eq!(error.as_deref(), Some("HTTP 500"));
        assert_eq!(
            excerpt.as_deref(),
            Some("\u{FFFD}\u{FFFD}b\u{FFFD}u\u{FFFD}s\u{FFFD}y\u{FFFD}")
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    sidecar.stop().await;
}

/// A 64 MiB binary answer: only the excerpt is read, capped, and stored.
#[tokio::test]
async fn a_huge_binary_answer_is_cut_to_the_excerpt() {
    let world = World::new().await;
    let size = 64 << 20;
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
    )
    .into_bytes();
    answer.resize(answer.len() + size, 0);
    let (url, _) = raw_receiver(answer).await;
    world.hook("huge", &url, &[]).await;
    let sidecar = Sidecar::start(&world.db, test_config(""));
    insert_site(&world.client, "alpha").await;

    world.healthy_delivered().await;
    assert_eq!(world.finished("huge").await, "delivered");
    let attempts = world.attempts("huge").await;
    assert_eq!(attempts.len(), 1);
    let excerpt = attempts[0].2.clone().unwrap();
    assert!(excerpt.len() <= 1024, "{} bytes kept", excerpt.len());
    assert!(excerpt.chars().all(|c| c == '\u{FFFD}'));
    sidecar.stop().await;
}

/// Status lines and headers a well-behaved server never sends: each attempt is recorded (a
/// status where one could be read, else the error), nothing stops.
#[tokio::test]
async fn odd_status_lines_and_headers_are_recorded() {
    let world = World::new().await;
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "status_299",
            b"HTTP/1.1 299 Fine I Guess\r\nContent-Length: 0\r\n\r\n",
            "delivered",
        ),
        (
            "status_999",
            b"HTTP/1.1 999 Beyond\r\nContent-Length: 0\r\n\r\n",
            "dead",
        ),
        ("not_http", b"SMTP ready\r\n\r\n", "dead"),
        (
            "binary_header",
            b"HTTP/1.1 200 OK\r\nX-Odd: \xff\xfe\r\nRetry-After: \xff\r\nContent-Length: 2\r\n\r\nok",
            "delivered",
        ),
        (
            "retry_after_year_9999",
            b"HTTP/1.1 503 Busy\r\nRetry-After: Fri, 31 Dec 9999 23:59:59 GMT\r\nContent-Length: 0\r\n\r\n",
            "pending",
        ),
    ];
    for (name, answer, _) in &cases {
        let (url, _) = raw_receiver(answer.to_vec()).await;
        world.hook(name, &url, &[]).await;
    }
    let sidecar = Sidecar::start(
        &world.db,
        test_config("[delivery]\nmax_retry_after = \"1h\"\n"),
    );
    insert_site(&world.client, "alpha").await;

    world.healthy_delivered().await;
    for (name, _, expected) in &cases {
        if *expected == "pending" {
            continue;
        }
        assert_eq!(&world.finished(name).await, expected, "{name}");
    }
    assert_eq!(
        world.attempts("status_999").await[0].0,
        Some(999),
        "the status as sent"
    );
    let (status, error, _) = world.attempts("not_http").await[0].clone();
    assert_eq!(status, None);
    assert!(error.is_some_and(|e| !e.is_empty()));
    // Retry-After far in the future: capped at max_retry_after, counted by the database
    let row = world
        .client
        .query_one(
            "select attempts, extract(epoch from next_attempt_at - now())::float8
             from netbox_outbox.delivery where webhook_name = 'retry_after_year_9999'",
            &[],
        )
        .await
        .unwrap();
    let (attempts, wait): (i32, f64) = (row.get(0), row.get(1));
    assert_eq!(attempts, 1);
    assert!((3500.0..=3600.0).contains(&wait), "retry in {wait}s");
    sidecar.stop().await;
}

/// The sidecar host's clock an hour behind the database's: retries still wait their schedule.
/// The database's clock is moved with a session hook: for the sidecar's connections, `now()`
/// resolves to a function an hour ahead of pg_catalog's (the sidecar's SQL calls `now()`
/// unqualified, so it sees the shifted clock; the host's clock is left alone).
#[tokio::test]
async fn a_host_clock_behind_the_database_does_not_hurry_retries() {
    let world = World::new().await;
    world
        .client
        .batch_execute(&format!(
            "create schema skewed_clock;
             create function skewed_clock.now() returns timestamptz language sql stable
                 as $$ select pg_catalog.now() + interval '1 hour' $$;
             alter database {} set search_path = skewed_clock, pg_catalog, public",
            world.db.name
        ))
        .await
        .unwrap();
    let failing = Receiver::start().await.unwrap();
    failing.default_reply(Reply::Status(503));
    world.hook("failing", &failing.url("/hook"), &[]).await;
    let sidecar = Sidecar::start(
        &world.db,
        test_config("[delivery]\nretry_schedule = [\"1s\", \"1s\"]\n"),
    );
    insert_site(&world.client, "alpha").await;

    world.healthy_delivered().await;
    assert_eq!(world.finished("failing").await, "dead");
    let got = failing.received();
    assert_eq!(got.len(), 3);
    for pair in got.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at).unwrap();
        assert!(
            gap >= Duration::from_millis(900),
            "a 1 s retry came after {gap:?}"
        );
    }
    // the log's times are the database's: one second apart too
    let gaps: Vec<f64> = world
        .client
        .query(
            "select extract(epoch from started_at - lag(started_at) over (order by id))::float8
             from netbox_outbox.attempt a where a.delivery_id =
                 (select id from netbox_outbox.delivery where webhook_name = 'failing')
             order by id offset 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(gaps.len(), 2);
    assert!(gaps.iter().all(|g| *g >= 0.9), "{gaps:?}");
    sidecar.stop().await;
}

/// Redirects: a 307 or 308 to the same origin is followed with the method, body, headers and
/// signature; 301/302/303 (which would turn the webhook into a body-less GET) and any redirect
/// to another origin are not: the attempt fails naming where it points, and the other origin
/// receives nothing, no secret header, no signature.
#[tokio::test]
async fn redirects_follow_only_307_and_308_to_the_same_origin() {
    let world = World::new().await;
    let origin = Receiver::start().await.unwrap();
    let elsewhere = Receiver::start().await.unwrap();
    // a name that is another origin for the same listener: http://localhost:<port>
    let elsewhere_origin = format!("http://localhost:{}", elsewhere.addr.port());
    let headers = "'Authorization: Bearer s3cret-token'";
    for code in [301u16, 302, 303, 307, 308] {
        let location = |to: &str| vec![("Location".to_string(), to.to_string())];
        origin.script_path(
            &format!("/same/{code}"),
            [Reply::WithHeaders(
                code,
                location(&format!("/landed/{code}?token=t")),
            )],
        );
        origin.script_path(
            &format!("/other/{code}"),
            [Reply::WithHeaders(
                code,
                location(&format!("{elsewhere_origin}/landed/{code}?token=t")),
            )],
        );
        for place in ["same", "other"] {
            world
                .hook(
                    &format!("{place}_{code}"),
                    &origin.url(&format!("/{place}/{code}")),
                    &[("secret", "'sig'"), ("additional_headers", headers)],
                )
                .await;
        }
    }
    let sidecar = Sidecar::start(&world.db, test_config("[delivery]\nretry_schedule = []\n"));
    insert_site(&world.client, "alpha").await;

    world.healthy_delivered().await;
    for code in [301, 302, 303, 307, 308] {
        let same = format!("same_{code}");
        let other = format!("other_{code}");
        let landed: Vec<_> = origin
            .received()
            .into_iter()
            .filter(|r| r.path == format!("/landed/{code}?token=t"))
            .collect();
        if code >= 307 {
            assert_eq!(world.finished(&same).await, "delivered", "{same}");
            let first = origin
                .received()
                .into_iter()
                .find(|r| r.path == format!("/same/{code}"))
                .unwrap();
            assert_eq!(landed.len(), 1, "{same}");
            assert_eq!(landed[0].method, "POST");
            assert_eq!(landed[0].body, first.body, "the same body");
            assert_eq!(
                landed[0].header("authorization"),
                Some("Bearer s3cret-token")
            );
            assert!(landed[0].signature_valid("sig"));
            assert_eq!(landed[0].header("referer"), None);
        } else {
            assert_eq!(world.finished(&same).await, "dead", "{same}");
            assert!(landed.is_empty(), "{same} followed: {landed:?}");
            let (status, error, _) = world.attempts(&same).await[0].clone();
            assert_eq!(status, Some(code));
            let error = error.unwrap();
            assert!(error.contains("GET without its body"), "{error}");
            assert!(error.contains("payload_url"), "{error}");
        }
        assert_eq!(world.finished(&other).await, "dead", "{other}");
        let (status, error, _) = world.attempts(&other).await[0].clone();
        assert_eq!(status, Some(code));
        let error = error.unwrap();
        assert!(error.contains("another origin"), "{error}");
        assert!(error.contains(&elsewhere_origin), "{error}");
        assert!(
            !error.contains("token"),
            "the path stays out of the log: {error}"
        );
    }
    assert_eq!(
        elsewhere.count(),
        0,
        "another origin got a request (with the secret headers)"
    );
    sidecar.stop().await;
}

/// The removed `follow_redirects` setting is refused, naming what replaced it.
#[tokio::test]
async fn follow_redirects_is_refused_naming_its_replacement() {
    let error = netbox_outbox::config::Config::from_toml(
        "[delivery]\nfollow_redirects = true\n",
        "netbox-outbox.toml",
        std::iter::empty(),
    )
    .expect_err("follow_redirects is refused")
    .to_string();
    assert!(error.contains("follow_redirects"), "{error}");
    assert!(error.contains("307 or 308"), "{error}");
    assert!(error.contains("payload_url"), "{error}");
}

/// The sidecar binary with a config file, as an operator runs it.
fn spawn_sidecar(db: &TestDb, toml: &str) -> Child {
    let path = std::env::temp_dir().join(format!("{}-{}.toml", db.name, uuid::Uuid::new_v4()));
    std::fs::write(&path, toml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_netbox-outbox"))
        .args(["run", "--config"])
        .arg(&path)
        .env("DATABASE_URL", db.url())
        .env("NETBOX_OUTBOX_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the sidecar binary")
}

/// SIGTERM while a receiver holds a request past the grace period: the request is recorded as
/// an attempt with an unknown outcome (it counts; it is not "released unsent"), and after a
/// restart it is sent again, the same delivery id twice.
#[tokio::test]
async fn sigterm_with_a_request_held_records_an_unknown_outcome() {
    let world = World::new().await;
    let holding = Receiver::start().await.unwrap();
    holding.script([Reply::Delay(Duration::from_secs(60), 200)]);
    world.hook("holding", &holding.url("/hook"), &[]).await;
    let mut child = spawn_sidecar(
        &world.db,
        "[delivery]\npoll_interval = \"50ms\"\nretry_schedule = [\"200ms\"]\nretry_jitter = 0.0\n\
         [assembly]\npoll_interval = \"50ms\"\n[rules]\nrefresh_interval = \"0s\"\n\
         [metrics]\nlisten = \"\"\n[shutdown]\ngrace_period = \"1s\"\n",
    );
    insert_site(&world.client, "alpha").await;

    world.healthy_delivered().await;
    holding.wait_for(1, WAIT).await.unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");

    let row = world
        .client
        .query_one(
            "select state, attempts, last_error from netbox_outbox.delivery where webhook_name = 'holding'",
            &[],
        )
        .await
        .unwrap();
    let (state, attempts, last_error): (String, i32, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    assert_eq!(state, "pending");
    assert_eq!(attempts, 1, "the abandoned request counts as an attempt");
    let logged = world.attempts("holding").await;
    assert_eq!(logged.len(), 1, "{logged:?}");
    let (status, error, _) = logged[0].clone();
    assert_eq!(status, None);
    let error = error.unwrap();
    assert!(error.contains("unknown"), "{error}");
    assert!(error.contains("may arrive twice"), "{error}");
    assert_eq!(last_error.as_deref(), Some(error.as_str()));

    // after a restart it is sent again: the receiver may get it twice, with one delivery id
    let sidecar = Sidecar::start(&world.db, test_config(""));
    assert_eq!(world.finished("holding").await, "delivered");
    let got = exactly(&holding, &world.client, 2).await;
    assert_eq!(
        got[0].header("x-netbox-outbox-delivery"),
        got[1].header("x-netbox-outbox-delivery")
    );
    assert_eq!(world.attempts("holding").await.len(), 2);
    sidecar.stop().await;
}

/// The database refusing one outcome (here a constraint an operator added on the log) stops
/// neither that delivery nor the others: record() stores it without the receiver's text, the
/// error saying why, and the batch's other outcomes as they came.
#[tokio::test]
async fn an_outcome_the_database_refuses_does_not_stop_the_others() {
    let world = World::new().await;
    world
        .client
        .batch_execute(
            "alter table netbox_outbox.attempt add constraint no_poison
                 check (response_excerpt not like '%poison%')",
        )
        .await
        .unwrap();
    let (url, hits) = raw_receiver(
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\npoison".to_vec(),
    )
    .await;
    world.hook("poisonous", &url, &[]).await;
    let sidecar = Sidecar::start(&world.db, test_config(""));
    insert_site(&world.client, "alpha").await;

    world.healthy_delivered().await;
    assert_eq!(world.finished("poisonous").await, "delivered");
    let attempts = world.attempts("poisonous").await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let (status, error, excerpt) = attempts[0].clone();
    assert_eq!(status, Some(200));
    assert_eq!(excerpt, None);
    let error = error.unwrap();
    assert!(error.contains("could not store"), "{error}");
    assert!(error.contains("no_poison"), "{error}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "not sent again");
    sidecar.stop().await;
}
