//! Credentials: the TURN REST API scheme (username `expiry:identity`, password
//! base64(HMAC-SHA1(secret, username))), the long-term key (RFC 8489 §9.2.2) and stateless
//! nonces that expire.

use base64::Engine;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// How long a nonce is good for, seconds.
pub const NONCE_LIFETIME_SECS: u64 = 600;

/// The shared secret and realm.
#[derive(Clone)]
pub struct Credentials {
    secret: Vec<u8>,
    realm: String,
    /// keys nonces (derived from the secret, so every node of a deployment agrees)
    nonce_key: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> Vec<u8> {
    match Hmac::<Sha1>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

impl Credentials {
    /// Credentials for `realm` signed with `secret`.
    pub fn new(secret: &str, realm: &str) -> Credentials {
        Credentials {
            secret: secret.as_bytes().to_vec(),
            realm: realm.to_string(),
            nonce_key: hmac_sha1(secret.as_bytes(), b"tidecast turn nonce"),
        }
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The REST API password of `username`.
    pub fn password(&self, username: &str) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(hmac_sha1(&self.secret, username.as_bytes()))
    }

    /// A username and password for `identity`, valid until `now_unix + ttl_secs`.
    pub fn mint(&self, identity: &str, now_unix: u64, ttl_secs: u64) -> (String, String) {
        let username = format!("{}:{identity}", now_unix + ttl_secs);
        let password = self.password(&username);
        (username, password)
    }

    /// The long-term key of `username`: MD5(username ":" realm ":" password).
    pub fn key(&self, username: &str) -> [u8; 16] {
        let mut h = Md5::new();
        h.update(format!(
            "{username}:{}:{}",
            self.realm,
            self.password(username)
        ));
        h.finalize().into()
    }

    /// A nonce good until `now_unix + NONCE_LIFETIME_SECS`.
    pub fn nonce(&self, now_unix: u64) -> String {
        let expiry = now_unix + NONCE_LIFETIME_SECS;
        let mac = hmac_sha1(&self.nonce_key, &expiry.to_be_bytes());
        let tag: String = mac.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("{expiry:x}-{tag}")
    }

    /// Whether `nonce` is one of ours and still good.
    pub fn nonce_ok(&self, nonce: &str, now_unix: u64) -> bool {
        let Some((expiry, tag)) = nonce.split_once('-') else {
            return false;
        };
        let Ok(expiry) = u64::from_str_radix(expiry, 16) else {
            return false;
        };
        let mac = hmac_sha1(&self.nonce_key, &expiry.to_be_bytes());
        let want: String = mac.iter().take(8).map(|b| format!("{b:02x}")).collect();
        bool::from(want.as_bytes().ct_eq(tag.as_bytes())) && expiry > now_unix
    }
}

/// The expiry (Unix seconds) of a REST API username `expiry:identity` (or just `expiry`).
pub fn username_expiry(username: &str) -> Option<u64> {
    username.split(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_passwords_match_coturns_scheme() {
        // base64(HMAC-SHA1("secret", "1700000000:alice")), as `turnutils_uclient -W` computes
        let c = Credentials::new("secret", "tidecast");
        let p = c.password("1700000000:alice");
        assert_eq!(p.len(), 28);
        assert_eq!(p, c.password("1700000000:alice"));
        assert_ne!(
            p,
            Credentials::new("other", "tidecast").password("1700000000:alice")
        );
        let (u, pw) = c.mint("bob", 1_000, 300);
        assert_eq!(u, "1300:bob");
        assert_eq!(pw, c.password("1300:bob"));
        assert_eq!(username_expiry(&u), Some(1300));
        assert_eq!(username_expiry("bob"), None);
    }

    #[test]
    fn nonces_expire_and_cannot_be_forged() {
        let c = Credentials::new("secret", "tidecast");
        let n = c.nonce(1_000);
        assert!(c.nonce_ok(&n, 1_000));
        assert!(c.nonce_ok(&n, 1_000 + NONCE_LIFETIME_SECS - 1));
        assert!(!c.nonce_ok(&n, 1_000 + NONCE_LIFETIME_SECS));
        assert!(!Credentials::new("other", "tidecast").nonce_ok(&n, 1_000));
        let forged = format!("{:x}-0000000000000000", 5_000u64);
        assert!(!c.nonce_ok(&forged, 1_000));
        assert!(!c.nonce_ok("zz", 1_000));
    }
}
