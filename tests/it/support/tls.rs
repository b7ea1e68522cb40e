//! A TLS webhook receiver with its own certificate authority, for the TLS settings of webhooks.

use std::path::PathBuf;
use std::sync::Arc;

use netbox_outbox::commands::receive::Receiver;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A receiver on https://127.0.0.1:<port>/ whose certificate (for 127.0.0.1 and `localhost`,
/// unless told otherwise) is signed by a private CA, written to `ca_file`.
pub struct TlsReceiver {
    pub receiver: Receiver,
    pub ca_file: PathBuf,
}

impl TlsReceiver {
    pub async fn start(name: &str) -> TlsReceiver {
        Self::start_for(name, &["127.0.0.1", "localhost"]).await
    }

    /// A receiver whose certificate names only `names` (a name mismatch when they leave out
    /// 127.0.0.1).
    pub async fn start_for(name: &str, names: &[&str]) -> TlsReceiver {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "netbox-outbox test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();

        let ca_file = std::env::temp_dir().join(format!("{name}-{}-ca.pem", std::process::id()));
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver::detached(listener.local_addr().unwrap());
        let r = receiver.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let r = r.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        r.serve(tls).await;
                    }
                });
            }
        });
        TlsReceiver { receiver, ca_file }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.receiver.addr)
    }
}
