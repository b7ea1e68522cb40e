//! TLS to PostgreSQL with libpq's meanings: `sslmode` from `disable` to `verify-full`, the CA
//! in `sslrootcert` (or `system` for the operating system's roots), and a client certificate
//! in `sslcert` and `sslkey`. rustls, as for webhooks; no OpenSSL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::ConnectError;
use super::conninfo::Extras;

/// How much TLS a connection insists on, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it, else plain; the certificate is not checked (libpq's default).
    Prefer,
    /// TLS or nothing; the certificate is not checked unless a CA is given.
    Require,
    /// TLS, and the certificate must be signed by the CA in `sslrootcert`.
    VerifyCa,
    /// As verify-ca, and the certificate must name the host we connect to.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<Self, ConnectError> {
        Ok(match text {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => {
                return Err(ConnectError::Invalid {
                    reason: format!(
                        "sslmode {text:?} is not one of disable, prefer, require, verify-ca, \
                         verify-full (libpq's 'allow' is not supported: use prefer)"
                    ),
                });
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres needs to know: whether to ask for TLS and whether to insist.
    pub fn driver_mode(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Driver;
        match self {
            Self::Disable => Driver::Disable,
            Self::Prefer => Driver::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => Driver::Require,
        }
    }
}

/// Where trusted CAs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// The operating system's trusted roots (`sslrootcert=system`).
    System,
}

impl std::fmt::Display for RootCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::System => f.write_str("system"),
        }
    }
}

/// The TLS settings of one database address, checked, and the connector built from them.
#[derive(Clone)]
pub struct Tls {
    pub mode: SslMode,
    pub rootcert: Option<RootCert>,
    pub connector: MakeRustlsConnect,
}

impl Tls {
    /// Checks the settings and reads the certificate files, so a wrong path is a configuration
    /// error at start rather than a connection error later.
    pub fn from_extras(extras: &Extras) -> Result<Self, ConnectError> {
        let invalid = |reason: String| ConnectError::Invalid { reason };
        let rootcert = extras.sslrootcert.as_deref().map(|r| match r {
            "system" => RootCert::System,
            path => RootCert::File(PathBuf::from(path)),
        });
        let mode = match (extras.sslmode.as_deref(), &rootcert) {
            (Some(mode), _) => SslMode::parse(mode)?,
            // As libpq 16: the public roots prove only that someone owns the name, so they are
            // only worth anything when the name is checked too.
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
        };
        if rootcert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(invalid(format!(
                "sslrootcert=system needs sslmode=verify-full (not {}): any public CA would \
                 otherwise do",
                mode.as_str()
            )));
        }
        // libpq: with a CA at hand, require checks it (as verify-ca).
        let checks_ca =
            mode >= SslMode::VerifyCa || (mode == SslMode::Require && rootcert.is_some());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = if checks_ca {
            let Some(rootcert) = &rootcert else {
                return Err(invalid(format!(
                    "sslmode={} checks the server's certificate against a CA, and none is given: \
                     set sslrootcert to the CA's PEM file (or sslrootcert=system for the \
                     operating system's roots with verify-full), or PGSSLROOTCERT",
                    mode.as_str()
                )));
            };
            let roots = Arc::new(roots(rootcert)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| invalid(format!("sslrootcert {rootcert}: {e}")))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(CaOnly(webpki))
            }
        } else {
            Arc::new(Unverified(provider.clone()))
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&extras.sslcert, &extras.sslkey) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = certificates(Path::new(cert), "sslcert")?;
                let key = private_key(Path::new(key))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    invalid(format!("sslcert {cert} and sslkey do not go together: {e}"))
                })?
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "a client certificate needs both sslcert (the certificate) and sslkey (its \
                     private key)"
                        .to_string(),
                ));
            }
        };
        Ok(Self {
            mode,
            rootcert,
            connector: MakeRustlsConnect::new(config),
        })
    }
}

fn roots(rootcert: &RootCert) -> Result<RootCertStore, ConnectError> {
    let mut roots = RootCertStore::empty();
    match rootcert {
        RootCert::File(path) => {
            let (added, _) = roots.add_parsable_certificates(certificates(path, "sslrootcert")?);
            if added == 0 {
                return Err(ConnectError::Invalid {
                    reason: format!(
                        "sslrootcert {}: no usable CA certificate in it",
                        path.display()
                    ),
                });
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(ConnectError::Invalid {
                    reason: "sslrootcert=system: the operating system has no trusted roots \
                             (install ca-certificates, or set SSL_CERT_FILE)"
                        .to_string(),
                });
            }
        }
    }
    Ok(roots)
}

/// The certificates in a PEM file; `key` names the setting in errors.
fn certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| ConnectError::Invalid {
            reason: format!(
                "{key} {}: cannot read PEM certificates: {e}",
                path.display()
            ),
        })?;
    if certs.is_empty() {
        return Err(ConnectError::Invalid {
            reason: format!("{key} {}: no PEM certificate in it", path.display()),
        });
    }
    Ok(certs)
}

/// The client's private key. As libpq, refuses a key others may read.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConnectError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let invalid = |reason: String| ConnectError::Invalid { reason };
    let meta =
        std::fs::metadata(path).map_err(|e| invalid(format!("sslkey {}: {e}", path.display())))?;
    let mode = meta.permissions().mode();
    let allowed = if meta.uid() == 0 { 0o037 } else { 0o077 };
    if mode & allowed != 0 {
        return Err(invalid(format!(
            "sslkey {} may be read by others (mode {:o}): chmod 0600 it (0640 if owned by root)",
            path.display(),
            mode & 0o777
        )));
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        invalid(format!(
            "sslkey {}: cannot read a PEM private key: {e}",
            path.display()
        ))
    })
}

/// verify-ca: the chain must lead to the CA; the name in the certificate is not checked.
#[derive(Debug)]
struct CaOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first and the name last: a name error means the chain passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// prefer and require without a CA: encrypted, but anyone may present any certificate (as in
/// libpq). The handshake's signatures are still checked, so the session keys are the server's.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What to check after a failed TLS handshake, from rustls' error in the chain.
pub fn handshake_hint(
    error: &(dyn std::error::Error + 'static),
    tls: &Tls,
    host: &str,
) -> Option<String> {
    let mut current = Some(error);
    while let Some(e) = current {
        let rustls_error = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls_error) = rustls_error {
            let ca = tls
                .rootcert
                .as_ref()
                .map_or_else(|| "(none)".to_string(), ToString::to_string);
            return Some(match rustls_error {
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ) => format!(
                    "the server's certificate is not issued for host {host:?} (sslmode=verify-full \
                     checks the name): connect by a name the certificate lists, or use \
                     sslmode=verify-ca to check only the CA"
                ),
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                ) => "the server's certificate has expired: renew it on the server".to_string(),
                rustls::Error::InvalidCertificate(_) => format!(
                    "the server's certificate is not signed by a CA in sslrootcert ({ca}): point \
                     sslrootcert (or PGSSLROOTCERT) at the CA that issued the server's certificate"
                ),
                rustls::Error::AlertReceived(alert) => format!(
                    "the server ended the TLS handshake ({alert:?}): if it wants a client \
                     certificate, set sslcert and sslkey; check its ssl settings and log"
                ),
                other => format!(
                    "the TLS handshake failed ({other}): check sslmode and the server's ssl settings"
                ),
            });
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(pairs: &[(&str, &str)]) -> Result<Tls, String> {
        let mut extras = Extras::default();
        for (key, value) in pairs {
            let value = Some(value.to_string());
            match *key {
                "sslmode" => extras.sslmode = value,
                "sslrootcert" => extras.sslrootcert = value,
                "sslcert" => extras.sslcert = value,
                "sslkey" => extras.sslkey = value,
                _ => unreachable!("{key}"),
            }
        }
        Tls::from_extras(&extras).map_err(|e| e.to_string())
    }

    fn temp_file(name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("nbo-tls-unit-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn prefer_is_the_default_and_modes_are_libpqs() {
        assert_eq!(tls(&[]).unwrap().mode, SslMode::Prefer);
        assert_eq!(
            tls(&[("sslmode", "disable")]).unwrap().mode,
            SslMode::Disable
        );
        let error = tls(&[("sslmode", "allow")]).err().unwrap();
        assert!(error.contains("sslmode \"allow\" is not one of"), "{error}");
    }

    #[test]
    fn checking_the_certificate_needs_a_ca() {
        for mode in ["verify-ca", "verify-full"] {
            let error = tls(&[("sslmode", mode)]).err().unwrap();
            assert!(error.contains("set sslrootcert"), "{error}");
        }
        let error = tls(&[("sslmode", "require"), ("sslrootcert", "system")])
            .err()
            .unwrap();
        assert!(
            error.contains("sslrootcert=system needs sslmode=verify-full"),
            "{error}"
        );
        let error = tls(&[
            ("sslmode", "verify-full"),
            ("sslrootcert", "/nonexistent/ca.pem"),
        ])
        .err()
        .unwrap();
        assert!(error.contains("sslrootcert /nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_the_key_must_be_private() {
        let error = tls(&[("sslcert", "/x.crt")]).err().unwrap();
        assert!(error.contains("needs both sslcert"), "{error}");

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_file = temp_file("client.crt", &cert.pem(), 0o644);
        let open_key = temp_file("open.key", &key.serialize_pem(), 0o644);
        let private_key = temp_file("private.key", &key.serialize_pem(), 0o600);
        let cert_path = cert_file.display().to_string();
        let error = tls(&[
            ("sslcert", &cert_path),
            ("sslkey", &open_key.display().to_string()),
        ])
        .err()
        .unwrap();
        assert!(error.contains("may be read by others"), "{error}");
        assert!(
            tls(&[
                ("sslcert", &cert_path),
                ("sslkey", &private_key.display().to_string()),
            ])
            .is_ok()
        );
        for file in [cert_file, open_key, private_key] {
            let _ = std::fs::remove_file(file);
        }
    }
}
