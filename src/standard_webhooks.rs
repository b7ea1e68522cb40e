//! Standard Webhooks signatures (<https://www.standardwebhooks.com>), for a webhook whose secret
//! in NetBox is one or more `whsec_<base64>` keys separated by whitespace.
//!
//! Unlike NetBox's `X-Hook-Signature` (frozen with the body), this scheme signs the delivery's id
//! and the attempt's timestamp with the body, so a receiver can refuse a captured request
//! replayed later: each attempt is signed when it is sent, with the secrets as NetBox holds them
//! then. Every key signs (`v1,<sig> v1,<sig>`), so a receiver that knows any one of them during
//! a rotation accepts the request.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix that marks a Standard Webhooks secret.
pub const PREFIX: &str = "whsec_";

/// Whether a NetBox webhook secret asks for Standard Webhooks (its first key is `whsec_...`).
pub fn is_standard(secret: &str) -> bool {
    secret.trim_start().starts_with(PREFIX)
}

/// The decoded signing keys. Its Debug never shows them.
#[derive(Clone, PartialEq)]
pub struct Secrets(Vec<Vec<u8>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} keys, redacted)", self.0.len())
    }
}

impl Secrets {
    /// Parses `whsec_<base64>` keys separated by whitespace. The error names the key by its
    /// position, never its text.
    pub fn parse(secret: &str) -> Result<Secrets, String> {
        let mut keys = Vec::new();
        for (i, token) in secret.split_whitespace().enumerate() {
            let n = i + 1;
            let Some(encoded) = token.strip_prefix(PREFIX) else {
                return Err(format!(
                    "secret: key {n} does not start with {PREFIX}; a Standard Webhooks secret is \
                     one or more whsec_<base64> keys separated by spaces (all of them, or use a \
                     plain secret for NetBox's X-Hook-Signature)"
                ));
            };
            match STANDARD.decode(encoded) {
                Ok(key) if !key.is_empty() => keys.push(key),
                _ => {
                    return Err(format!(
                        "secret: key {n} is not whsec_ followed by standard base64 (padded, \
                         with + and /); generate one with: openssl rand -base64 32"
                    ));
                }
            }
        }
        if keys.is_empty() {
            return Err("secret: no whsec_ key".into());
        }
        Ok(Secrets(keys))
    }

    /// The three headers of one attempt: `webhook-id`, `webhook-timestamp` (Unix seconds) and
    /// `webhook-signature` (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` per key, space
    /// separated).
    pub fn headers(&self, id: &str, timestamp: i64, body: &[u8]) -> [(&'static str, String); 3] {
        let signatures: Vec<String> = self
            .0
            .iter()
            .map(|key| {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
                mac.update(id.as_bytes());
                mac.update(b".");
                mac.update(timestamp.to_string().as_bytes());
                mac.update(b".");
                mac.update(body);
                format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
            })
            .collect();
        [
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signatures.join(" ")),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's own example (standard-webhooks, spec/standard-webhooks.md).
    #[test]
    fn signs_the_specification_example() {
        let secrets = Secrets::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let [id, ts, sig] = secrets.headers(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(id.1, "msg_p5jXN8AQM9LWM0D4loKWxJek");
        assert_eq!(ts.1, "1614265330");
        assert_eq!(sig.1, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_key_signs_and_bad_keys_are_named_by_position() {
        let two = Secrets::parse(" whsec_AAAA\twhsec_BBBB ").unwrap();
        let [_, _, sig] = two.headers("1", 2, b"x");
        assert_eq!(sig.1.split(' ').count(), 2);
        assert!(is_standard("  whsec_x"));
        assert!(!is_standard("s3cret"));
        let error = Secrets::parse("whsec_AAAA whsec_not*base64").unwrap_err();
        assert!(error.contains("key 2"), "{error}");
        assert!(
            !error.contains("not*base64"),
            "the key's text is never shown"
        );
        assert!(Secrets::parse("whsec_AAAA plain").is_err());
        assert!(!format!("{two:?}").contains("AAAA"));
    }
}
