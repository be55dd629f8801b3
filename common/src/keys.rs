//! Stream-key checks, compared in constant time.

use std::collections::BTreeMap;

use subtle::ConstantTimeEq;

/// `a == b` in time that depends only on the lengths (secrets, bearer tokens).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// A random hex string of `bytes` random bytes (session ids, development secrets). The system
/// RNG failing leaves zeros (logged by nobody: it does not fail on Linux with getrandom).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Outcome of checking a publisher's stream key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyDecision {
    /// Publish allowed under this stream name.
    Allowed(String),
    /// No configured key matches.
    Refused,
}

/// Maps stream keys to stream names. With no keys configured publishing is open and the stream
/// name is the key itself (restricted to a safe character set).
#[derive(Debug, Clone, Default)]
pub struct StreamKeys {
    keys: Vec<(Vec<u8>, String)>,
}

impl StreamKeys {
    /// Build from a `key → stream name` map.
    pub fn new(map: &BTreeMap<String, String>) -> Self {
        StreamKeys {
            keys: map
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
                .collect(),
        }
    }

    /// True when no keys are configured (open publishing).
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// Check a key. Every configured key is compared (constant time per key, no early exit), so
    /// timing does not reveal which key or how much of it matched.
    pub fn check(&self, key: &str) -> KeyDecision {
        if self.is_open() {
            return if is_valid_stream_name(key) {
                KeyDecision::Allowed(key.to_string())
            } else {
                KeyDecision::Refused
            };
        }
        let mut found: Option<&String> = None;
        for (k, name) in &self.keys {
            let same: bool = k.as_slice().ct_eq(key.as_bytes()).into();
            if same {
                found = Some(name);
            }
        }
        match found {
            Some(name) => KeyDecision::Allowed(name.clone()),
            None => KeyDecision::Refused,
        }
    }
}

/// Stream names become URL path components: 1–64 chars of `[A-Za-z0-9_-]`, not starting with `-`.
pub fn is_valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_mode_uses_key_as_name() {
        let keys = StreamKeys::default();
        assert_eq!(keys.check("abc"), KeyDecision::Allowed("abc".into()));
        assert_eq!(keys.check("../etc"), KeyDecision::Refused);
        assert_eq!(keys.check(""), KeyDecision::Refused);
    }

    #[test]
    fn configured_keys_map_to_names() {
        let mut map = BTreeMap::new();
        map.insert("s3cret".to_string(), "main".to_string());
        let keys = StreamKeys::new(&map);
        assert_eq!(keys.check("s3cret"), KeyDecision::Allowed("main".into()));
        assert_eq!(keys.check("s3cre"), KeyDecision::Refused);
        assert_eq!(keys.check("main"), KeyDecision::Refused);
    }
}
