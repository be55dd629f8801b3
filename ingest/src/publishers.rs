//! Who publishes which stream name. A second publisher on a live name is refused, unless the
//! current one has gone quiet (a connection that died without a FIN): then the newcomer takes
//! over, which is what an encoder reconnecting after a network drop needs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Connection id assigned by the server.
pub type ConnId = u64;

/// Result of asking for a stream name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody had it.
    Granted,
    /// The previous publisher was idle and is displaced; the shell must close it.
    TookOver {
        /// The displaced connection.
        previous: ConnId,
    },
    /// Someone is actively publishing.
    Busy,
}

#[derive(Debug)]
struct Owner {
    conn: ConnId,
    last_media: Instant,
}

/// The table of live stream names. Pure: time is passed in.
#[derive(Debug, Default)]
pub struct PublisherTable {
    owners: HashMap<String, Owner>,
}

impl PublisherTable {
    /// Try to publish `stream` from `conn`.
    pub fn claim(&mut self, stream: &str, conn: ConnId, now: Instant, idle: Duration) -> Claim {
        match self.owners.get_mut(stream) {
            None => {
                self.owners.insert(
                    stream.to_string(),
                    Owner {
                        conn,
                        last_media: now,
                    },
                );
                Claim::Granted
            }
            Some(owner) if owner.conn == conn => Claim::Granted,
            Some(owner) if now.saturating_duration_since(owner.last_media) >= idle => {
                let previous = owner.conn;
                owner.conn = conn;
                owner.last_media = now;
                Claim::TookOver { previous }
            }
            Some(_) => Claim::Busy,
        }
    }

    /// Media arrived from `conn` for `stream`.
    pub fn touch(&mut self, stream: &str, conn: ConnId, now: Instant) {
        if let Some(owner) = self.owners.get_mut(stream) {
            if owner.conn == conn {
                owner.last_media = now;
            }
        }
    }

    /// `conn` stopped publishing `stream` (only the current owner can release it).
    pub fn release(&mut self, stream: &str, conn: ConnId) -> bool {
        if self.owners.get(stream).map(|o| o.conn) == Some(conn) {
            self.owners.remove(stream);
            true
        } else {
            false
        }
    }

    /// Number of live publishers.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// No live publishers.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_publisher_refused_then_takes_over_when_first_is_idle() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(3);
        let mut t = PublisherTable::default();
        assert_eq!(t.claim("a", 1, t0, idle), Claim::Granted);
        t.touch("a", 1, t0 + Duration::from_secs(1));
        assert_eq!(
            t.claim("a", 2, t0 + Duration::from_secs(2), idle),
            Claim::Busy
        );
        assert_eq!(
            t.claim("a", 2, t0 + Duration::from_secs(5), idle),
            Claim::TookOver { previous: 1 }
        );
        // the displaced connection can no longer release or refresh the name
        assert!(!t.release("a", 1));
        assert!(t.release("a", 2));
        assert!(t.is_empty());
    }

    #[test]
    fn released_name_is_free() {
        let t0 = Instant::now();
        let mut t = PublisherTable::default();
        t.claim("a", 1, t0, Duration::from_secs(3));
        t.release("a", 1);
        assert_eq!(t.claim("a", 2, t0, Duration::from_secs(3)), Claim::Granted);
    }
}
