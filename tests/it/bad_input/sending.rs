//! Sending that cannot succeed (host, DNS, TLS): each attempt's error recorded, then dead.

use super::*;

#[tokio::test]
async fn unreachable_host() {
    // a port nothing listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    dead_with(
        &format!("http://127.0.0.1:{port}/hook"),
        &[],
        &["connection failed", "is the receiver running"],
    )
    .await;
}

#[tokio::test]
async fn dns_failure() {
    dead_with(
        "http://no-such-host.invalid/hook",
        &[],
        &[
            "DNS lookup failed",
            "no-such-host.invalid",
            "check the host name",
        ],
    )
    .await;
}

#[tokio::test]
async fn ca_file_that_does_not_exist() {
    dead_with(
        "https://127.0.0.1:1/hook",
        &[("ca_file_path", "'/nonexistent/netbox-outbox-ca.pem'")],
        &[
            "ca_file_path /nonexistent/netbox-outbox-ca.pem",
            "cannot read it",
            "fix the path",
        ],
    )
    .await;
}

#[tokio::test]
async fn ca_file_that_is_not_a_certificate() {
    let path = std::env::temp_dir().join(format!("not-a-cert-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&path, "hello, I am not a certificate\n").unwrap();
    dead_with(
        "https://127.0.0.1:1/hook",
        &[("ca_file_path", &format!("'{}'", path.display()))],
        &[
            &format!("ca_file_path {}", path.display()),
            "no PEM certificate",
            "point ca_file_path at",
        ],
    )
    .await;
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn tls_name_mismatch() {
    let tls = TlsReceiver::start_for("mismatch", &["receiver.example"]).await;
    dead_with(
        &tls.url("/hook"),
        &[("ca_file_path", &format!("'{}'", tls.ca_file.display()))],
        &[
            "TLS handshake failed",
            "certificate",
            "the name in payload_url",
        ],
    )
    .await;
    assert_eq!(tls.receiver.count(), 0, "no request got through");
}
