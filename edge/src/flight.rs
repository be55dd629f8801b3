//! Coalescing: one upstream fetch per uncached key, however many clients ask. A [`Flight`] holds
//! what has arrived so far (response head, body chunks, end or failure); every waiter reads it
//! at its own pace and gets each chunk as soon as it lands — not after the whole body, so an
//! LL-DASH segment or LL-HLS part in production streams through the edge.
//! [`CoalescingTable`] maps keys to the flight in progress.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper::StatusCode;
use tokio::sync::watch;

/// Status and headers of the upstream response.
#[derive(Debug, Clone)]
pub struct Head {
    /// Upstream status.
    pub status: StatusCode,
    /// Upstream headers (hop-by-hop ones dropped).
    pub headers: HeaderMap,
}

#[derive(Debug, Default)]
struct FlightState {
    head: Option<Head>,
    chunks: Vec<Bytes>,
    done: bool,
    failed: Option<String>,
}

/// One upstream fetch in progress.
#[derive(Debug)]
pub struct Flight {
    state: Mutex<FlightState>,
    changed: watch::Sender<u64>,
}

/// What a waiter sees next.
#[derive(Debug)]
pub enum Next {
    /// More body.
    Chunks(Vec<Bytes>),
    /// The body is complete.
    End,
    /// The fetch failed (before or during the body).
    Failed(String),
}

impl Default for Flight {
    fn default() -> Self {
        Flight {
            state: Mutex::new(FlightState::default()),
            changed: watch::channel(0).0,
        }
    }
}

impl Flight {
    fn state(&self) -> MutexGuard<'_, FlightState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The upstream answered.
    pub fn set_head(&self, head: Head) {
        self.state().head = Some(head);
        self.bump();
    }

    /// A body chunk arrived.
    pub fn push(&self, chunk: Bytes) {
        self.state().chunks.push(chunk);
        self.bump();
    }

    /// The body is complete; returns it whole (for the cache).
    pub fn finish(&self) -> Bytes {
        let mut s = self.state();
        s.done = true;
        // a single chunk is copied too: it is a slice of the connection's read buffer, and
        // keeping it in the cache would pin that whole buffer for as long as the entry lives
        let body = if s.chunks.len() == 1 {
            Bytes::copy_from_slice(&s.chunks[0])
        } else {
            let mut all = Vec::with_capacity(s.chunks.iter().map(Bytes::len).sum());
            for c in &s.chunks {
                all.extend_from_slice(c);
            }
            Bytes::from(all)
        };
        drop(s);
        self.bump();
        body
    }

    /// The fetch failed.
    pub fn fail(&self, why: String) {
        self.state().failed = Some(why);
        self.bump();
    }

    /// Wait for the response head; `Err` if the fetch failed first.
    pub async fn head(&self) -> Result<Head, String> {
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            {
                let s = self.state();
                if let Some(h) = &s.head {
                    return Ok(h.clone());
                }
                if let Some(why) = &s.failed {
                    return Err(why.clone());
                }
            }
            if rx.changed().await.is_err() {
                return Err("fetch abandoned".into());
            }
        }
    }

    /// Body chunks from index `from` on, waiting until there are some (or the end).
    pub async fn next(&self, from: usize) -> Next {
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            {
                let s = self.state();
                if from < s.chunks.len() {
                    return Next::Chunks(s.chunks[from..].to_vec());
                }
                if let Some(why) = &s.failed {
                    return Next::Failed(why.clone());
                }
                if s.done {
                    return Next::End;
                }
            }
            if rx.changed().await.is_err() {
                return Next::Failed("fetch abandoned".into());
            }
        }
    }
}

/// Whether a caller leads the fetch or joins one.
#[derive(Debug)]
pub enum Role {
    /// First asker: must fetch and feed the flight, then call [`CoalescingTable::finish`].
    Leader(Arc<Flight>),
    /// A fetch is in progress: read from it.
    Follower(Arc<Flight>),
}

/// Fetches in progress by cache key.
#[derive(Debug, Default)]
pub struct CoalescingTable {
    flights: Mutex<HashMap<String, Arc<Flight>>>,
}

impl CoalescingTable {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Flight>>> {
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lead a new fetch for `key` or join the one in progress.
    pub fn join(&self, key: &str) -> Role {
        let mut map = self.map();
        if let Some(f) = map.get(key) {
            return Role::Follower(f.clone());
        }
        let f = Arc::new(Flight::default());
        map.insert(key.to_string(), f.clone());
        Role::Leader(f)
    }

    /// The leader is done with `key` (the result is cached or failed): new askers start over.
    pub fn finish(&self, key: &str) {
        self.map().remove(key);
    }

    /// Fetches in progress.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// No fetch in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_chunks_as_they_arrive() {
        let table = CoalescingTable::default();
        let Role::Leader(flight) = table.join("/a") else {
            panic!("first is leader")
        };
        let Role::Follower(f2) = table.join("/a") else {
            panic!("second follows")
        };
        assert_eq!(table.len(), 1);
        let reader = tokio::spawn(async move {
            let head = f2.head().await.unwrap();
            let mut got = Vec::new();
            let mut i = 0;
            loop {
                match f2.next(i).await {
                    Next::Chunks(c) => {
                        i += c.len();
                        got.extend(c);
                    }
                    Next::End => return (head.status, got),
                    Next::Failed(w) => panic!("{w}"),
                }
            }
        });
        flight.set_head(Head {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
        });
        flight.push(Bytes::from_static(b"ab"));
        tokio::task::yield_now().await;
        flight.push(Bytes::from_static(b"cd"));
        assert_eq!(&flight.finish()[..], b"abcd");
        table.finish("/a");
        let (status, got) = reader.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got.concat(), b"abcd");
        assert!(table.is_empty());
        assert!(matches!(table.join("/a"), Role::Leader(_)));
    }

    #[tokio::test]
    async fn failure_reaches_waiters() {
        let f = Flight::default();
        f.fail("upstream down".into());
        assert_eq!(f.head().await.unwrap_err(), "upstream down");
        assert!(matches!(f.next(0).await, Next::Failed(_)));
    }
}
