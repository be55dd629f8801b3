//! Join tokens: JWT (HS256) scoped to one room, one identity and a role, with an expiry —
//! the scheme LiveKit and Twilio use, so integrators mint them the same way from their backend
//! (`POST /api/rooms/{room}/tokens` with the API secret, or `tidecast token room …`). The
//! signature check is ring's HMAC verification (constant time).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a participant may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomRole {
    /// Sends and receives media.
    Publisher,
    /// Receives only.
    Viewer,
}

impl RoomRole {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomRole::Publisher => "publisher",
            RoomRole::Viewer => "viewer",
        }
    }
}

/// The claims of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    /// The room it admits to.
    pub room: String,
    /// The participant's identity (unique in the room; a second join with it replaces the first).
    pub sub: String,
    /// Display name (the client may change it when joining).
    #[serde(default)]
    pub name: String,
    /// Publisher or viewer.
    pub role: RoomRole,
    /// May start and stop the call's recording (the `record` signaling message).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record: bool,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    /// Past its `exp`.
    #[error("token expired")]
    Expired,
    /// For another room.
    #[error("token is for another room")]
    WrongRoom,
    /// Bad signature, malformed, wrong algorithm.
    #[error("invalid token")]
    Invalid,
}

impl JoinTokenError {
    /// Error code sent to clients and used as a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            JoinTokenError::Expired => "token_expired",
            JoinTokenError::WrongRoom => "token_wrong_room",
            JoinTokenError::Invalid => "token_invalid",
        }
    }
}

/// Mints and verifies join tokens with one secret.
#[derive(Clone)]
pub struct JoinTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinTokens")
    }
}

impl JoinTokens {
    /// Tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> JoinTokens {
        JoinTokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A signed token carrying `claims`.
    pub fn mint(&self, claims: &JoinClaims) -> String {
        // HS256 over serialisable claims cannot fail
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .unwrap_or_default()
    }

    /// The claims of `token` if it is genuine, unexpired at `now` (seconds since the epoch) and
    /// for `room`.
    pub fn verify(&self, token: &str, room: &str, now: u64) -> Result<JoinClaims, JoinTokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        // expiry is checked here against the caller's clock (no leeway), not jsonwebtoken's
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<JoinClaims>(token, &self.decoding, &validation)
            .map_err(|_| JoinTokenError::Invalid)?;
        let claims = data.claims;
        if claims.exp <= now {
            return Err(JoinTokenError::Expired);
        }
        if claims.room != room {
            return Err(JoinTokenError::WrongRoom);
        }
        Ok(claims)
    }
}

/// Room names and identities: 1–64 of `A-Z a-z 0-9 _ - .` (they appear in URLs, logs and
/// metric labels).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(room: &str, exp: u64) -> JoinClaims {
        JoinClaims {
            room: room.into(),
            sub: "alice".into(),
            name: "Alice".into(),
            role: RoomRole::Publisher,
            record: false,
            iat: 100,
            exp,
        }
    }

    #[test]
    fn tokens_are_scoped_signed_and_expire() {
        let tokens = JoinTokens::new(b"secret");
        let t = tokens.mint(&claims("r1", 200));
        assert_eq!(tokens.verify(&t, "r1", 150), Ok(claims("r1", 200)));
        assert_eq!(tokens.verify(&t, "r1", 200), Err(JoinTokenError::Expired));
        assert_eq!(tokens.verify(&t, "r2", 150), Err(JoinTokenError::WrongRoom));
        let other = JoinTokens::new(b"other");
        assert_eq!(other.verify(&t, "r1", 150), Err(JoinTokenError::Invalid));
        // tampered payload: same signature, other room
        let parts: Vec<&str> = t.split('.').collect();
        let forged_claims = JoinTokens::new(b"x").mint(&claims("r2", 200));
        let forged_payload = forged_claims.split('.').nth(1).unwrap_or_default();
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(
            tokens.verify(&forged, "r2", 150),
            Err(JoinTokenError::Invalid)
        );
        // alg none / garbage
        let unsigned = format!("eyJhbGciOiJub25lIn0.{}.", parts[1]);
        assert_eq!(
            tokens.verify(&unsigned, "r1", 150),
            Err(JoinTokenError::Invalid)
        );
        assert_eq!(tokens.verify("", "r1", 150), Err(JoinTokenError::Invalid));
        assert_eq!(
            tokens.verify("a.b.c", "r1", 150),
            Err(JoinTokenError::Invalid)
        );
    }

    #[test]
    fn names() {
        assert!(is_valid_name("standup-2026.11"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name(&"x".repeat(65)));
    }
}
