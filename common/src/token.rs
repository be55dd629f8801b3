//! Signed playback tokens: HMAC-SHA256 over an expiry, a path prefix and optionally a client IP.
//!
//! Text form (URL-safe, goes in `?token=` or the `tidecast_token` cookie):
//! `exp=1767225600~path=/live/main/~ip=203.0.113.9~sig=<hex>` (`ip` optional). The signature
//! covers `exp=…~path=…[~ip=…]` exactly. Verification is pure (time passed in) and compares
//! signatures in constant time.

use ring::hmac;

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token presented.
    #[error("no token")]
    Missing,
    /// Not of the `exp=…~path=…~sig=…` form.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match (tampered or another secret).
    #[error("bad signature")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Signed for another path prefix.
    #[error("token not valid for this path")]
    WrongPath,
    /// Bound to another client address.
    #[error("token not valid for this client")]
    WrongClient,
}

impl TokenError {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::WrongPath => "wrong_path",
            TokenError::WrongClient => "wrong_client",
        }
    }
}

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// Unix seconds after which it is refused.
    pub expires: u64,
    /// Paths it opens start with this (e.g. `/live/main/`).
    pub path_prefix: String,
    /// Only this client address, if set.
    pub client_ip: Option<String>,
}

fn payload(c: &TokenClaims) -> String {
    let mut p = format!("exp={}~path={}", c.expires, c.path_prefix);
    if let Some(ip) = &c.client_ip {
        p.push_str("~ip=");
        p.push_str(ip);
    }
    p
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Signs and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct TokenSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    /// A signer for `secret`.
    pub fn new(secret: &[u8]) -> Self {
        TokenSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The token text for `claims`.
    pub fn sign(&self, claims: &TokenClaims) -> String {
        let p = payload(claims);
        let tag = hmac::sign(&self.key, p.as_bytes());
        format!("{p}~sig={}", hex(tag.as_ref()))
    }

    /// Check `token` for a request of `path` from `client_ip` at `now_unix` (seconds).
    pub fn verify(
        &self,
        token: &str,
        path: &str,
        client_ip: &str,
        now_unix: u64,
    ) -> Result<TokenClaims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let (signed, sig) = token.rsplit_once("~sig=").ok_or(TokenError::Malformed)?;
        let sig = unhex(sig).ok_or(TokenError::Malformed)?;
        // signature first: nothing in an unsigned token is trusted, not even its expiry
        hmac::verify(&self.key, signed.as_bytes(), &sig).map_err(|_| TokenError::BadSignature)?;
        let mut claims = TokenClaims {
            expires: 0,
            path_prefix: String::new(),
            client_ip: None,
        };
        let mut seen_exp = false;
        for field in signed.split('~') {
            match field.split_once('=') {
                Some(("exp", v)) => {
                    claims.expires = v.parse().map_err(|_| TokenError::Malformed)?;
                    seen_exp = true;
                }
                Some(("path", v)) => claims.path_prefix = v.to_string(),
                Some(("ip", v)) => claims.client_ip = Some(v.to_string()),
                _ => return Err(TokenError::Malformed),
            }
        }
        if !seen_exp || !claims.path_prefix.starts_with('/') {
            return Err(TokenError::Malformed);
        }
        if now_unix > claims.expires {
            return Err(TokenError::Expired);
        }
        if !path.starts_with(&claims.path_prefix) {
            return Err(TokenError::WrongPath);
        }
        if claims
            .client_ip
            .as_deref()
            .is_some_and(|ip| ip != client_ip)
        {
            return Err(TokenError::WrongClient);
        }
        Ok(claims)
    }
}

/// The token in a query string (`token=…`) or a `Cookie` header (`tidecast_token=…`).
pub fn find_token<'a>(query: Option<&'a str>, cookie: Option<&'a str>) -> Option<&'a str> {
    let from_query = query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .filter(|t| !t.is_empty())
    });
    from_query.or_else(|| {
        cookie.and_then(|c| {
            c.split(';')
                .find_map(|kv| kv.trim().strip_prefix("tidecast_token="))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(ip: Option<&str>) -> TokenClaims {
        TokenClaims {
            expires: 1000,
            path_prefix: "/live/main/".into(),
            client_ip: ip.map(str::to_string),
        }
    }

    #[test]
    fn sign_and_verify() {
        let s = TokenSigner::new(b"secret");
        let t = s.sign(&claims(None));
        assert!(t.starts_with("exp=1000~path=/live/main/~sig="), "{t}");
        let ok = s.verify(&t, "/live/main/720p/3.m4s", "10.0.0.1", 999);
        assert_eq!(ok, Ok(claims(None)));
        assert_eq!(
            s.verify(&t, "/live/main/x", "1.1.1.1", 1001),
            Err(TokenError::Expired)
        );
        assert_eq!(
            s.verify(&t, "/live/other/x", "1.1.1.1", 10),
            Err(TokenError::WrongPath)
        );
        let other = TokenSigner::new(b"other");
        assert_eq!(
            other.verify(&t, "/live/main/x", "1.1.1.1", 10),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampering_is_detected() {
        let s = TokenSigner::new(b"secret");
        let t = s.sign(&claims(None));
        let longer = t.replace("exp=1000", "exp=9999");
        assert_eq!(
            s.verify(&longer, "/live/main/x", "ip", 10),
            Err(TokenError::BadSignature)
        );
        let wider = t.replace("path=/live/main/", "path=/live/");
        assert_eq!(
            s.verify(&wider, "/live/x", "ip", 10),
            Err(TokenError::BadSignature)
        );
        for bad in ["", "garbage", "exp=1~sig=zz", "exp=1~path=/~sig=abc"] {
            assert!(s.verify(bad, "/live/x", "ip", 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_binding() {
        let s = TokenSigner::new(b"k");
        let t = s.sign(&claims(Some("10.1.2.3")));
        assert!(s.verify(&t, "/live/main/a", "10.1.2.3", 5).is_ok());
        assert_eq!(
            s.verify(&t, "/live/main/a", "10.1.2.4", 5),
            Err(TokenError::WrongClient)
        );
    }

    #[test]
    fn token_from_query_or_cookie() {
        assert_eq!(find_token(Some("a=1&token=xyz"), None), Some("xyz"));
        assert_eq!(
            find_token(None, Some("x=1; tidecast_token=abc")),
            Some("abc")
        );
        assert_eq!(find_token(Some("token="), None), None);
    }
}
