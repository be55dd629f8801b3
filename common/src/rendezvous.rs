//! `NodePool`: which of several nodes owns a name — the upstream (origin or shield) an edge
//! fetches a stream from, the rooms node a room lives on. Rendezvous hashing of the name over
//! the nodes (adding or losing one moves only its own names), health from active probes and
//! from request failures with rise/fall thresholds, and a failover order: healthy nodes by
//! score, then the unhealthy ones as a last resort. Pure: probe results and `now` are passed
//! in.

use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// Consecutive failures that mark a node down.
const FALL: u32 = 2;
/// Consecutive successes that bring it back.
const RISE: u32 = 2;

#[derive(Debug, Clone)]
struct Node {
    base: String,
    healthy: bool,
    successes: u32,
    failures: u32,
    changed_at: Option<Instant>,
}

/// Nodes and their health.
#[derive(Debug, Clone)]
pub struct NodePool {
    nodes: Vec<Node>,
}

/// A stable 64-bit hash (FNV-1a): the same in every process, so every edge picks the same
/// origin for a stream and every rooms node the same owner for a room.
fn fnv(parts: &[&str]) -> u64 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

impl Node {
    fn fresh(base: &str) -> Node {
        Node {
            base: base.trim_end_matches('/').to_string(),
            healthy: true,
            successes: 0,
            failures: 0,
            changed_at: None,
        }
    }
}

impl NodePool {
    /// A pool of base URLs (`http://host:port`), all assumed healthy at first.
    pub fn new(bases: &[String]) -> Self {
        NodePool {
            nodes: bases.iter().map(|b| Node::fresh(b)).collect(),
        }
    }

    /// Make `bases` the members (a discovery round found them): a node that stays keeps its
    /// health and counts, a new one is assumed healthy as at the start, a missing one leaves.
    /// True when the members changed.
    pub fn set_bases(&mut self, bases: &[String]) -> bool {
        let mut wanted: Vec<&str> = Vec::new();
        for b in bases.iter().map(|b| b.trim_end_matches('/')) {
            if !wanted.contains(&b) {
                wanted.push(b);
            }
        }
        let same = wanted.len() == self.nodes.len()
            && wanted
                .iter()
                .all(|w| self.nodes.iter().any(|n| n.base == *w));
        if same {
            return false;
        }
        let mut old = std::mem::take(&mut self.nodes);
        self.nodes = wanted
            .into_iter()
            .map(|b| match old.iter().position(|n| n.base == b) {
                Some(i) => old.swap_remove(i),
                None => Node::fresh(b),
            })
            .collect();
        true
    }

    /// Base URLs, in configuration order.
    pub fn bases(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|u| u.base.as_str())
    }

    /// Nodes to try for `name` (a stream, a room), best first.
    pub fn order(&self, name: &str) -> Vec<String> {
        let mut scored: Vec<(bool, u64, &str)> = self
            .nodes
            .iter()
            .map(|u| (!u.healthy, fnv(&[name, &u.base]), u.base.as_str()))
            .collect();
        // healthy first (false < true), then highest score
        scored.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        scored.into_iter().map(|(_, _, b)| b.to_string()).collect()
    }

    /// Record a probe or request outcome; returns `Some(healthy)` when the state flipped.
    pub fn record(&mut self, base: &str, ok: bool, now: Instant) -> Option<bool> {
        let u = self.nodes.iter_mut().find(|u| u.base == base)?;
        if ok {
            u.successes += 1;
            u.failures = 0;
        } else {
            u.failures += 1;
            u.successes = 0;
        }
        let flip = if u.healthy && u.failures >= FALL {
            Some(false)
        } else if !u.healthy && u.successes >= RISE {
            Some(true)
        } else {
            None
        };
        if let Some(h) = flip {
            u.healthy = h;
            u.changed_at = Some(now);
        }
        flip
    }

    /// Is `base` currently considered healthy?
    pub fn is_healthy(&self, base: &str) -> bool {
        self.nodes.iter().any(|u| u.base == base && u.healthy)
    }

    /// Healthy node count.
    pub fn healthy_count(&self) -> usize {
        self.nodes.iter().filter(|u| u.healthy).count()
    }

    /// How long since `base` last changed state.
    pub fn since_change(&self, base: &str, now: Instant) -> Option<Duration> {
        self.nodes
            .iter()
            .find(|u| u.base == base)?
            .changed_at
            .map(|t| now.saturating_duration_since(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> NodePool {
        let bases: Vec<String> = (0..n).map(|i| format!("http://o{i}:8080")).collect();
        NodePool::new(&bases)
    }

    #[test]
    fn streams_spread_and_stick() {
        let p = pool(3);
        let mut counts = [0usize; 3];
        for i in 0..300 {
            let first = p.order(&format!("s{i}"))[0].clone();
            let idx = p.bases().position(|b| b == first).unwrap();
            counts[idx] += 1;
            assert_eq!(p.order(&format!("s{i}"))[0], first, "deterministic");
        }
        assert!(counts.iter().all(|&c| c > 60), "spread: {counts:?}");
    }

    #[test]
    fn losing_one_moves_only_its_streams() {
        let p3 = pool(3);
        let p2 = NodePool::new(&["http://o0:8080".into(), "http://o1:8080".into()]);
        for i in 0..200 {
            let s = format!("s{i}");
            let a = &p3.order(&s)[0];
            if a != "http://o2:8080" {
                assert_eq!(&p2.order(&s)[0], a, "{s} moved");
            }
        }
    }

    #[test]
    fn failover_after_two_failures_and_back_after_two_successes() {
        let now = Instant::now();
        let mut p = pool(2);
        let s = "main";
        let first = p.order(s)[0].clone();
        assert_eq!(p.record(&first, false, now), None);
        assert_eq!(p.order(s)[0], first, "one failure is not enough");
        assert_eq!(p.record(&first, false, now), Some(false));
        assert_ne!(p.order(s)[0], first);
        assert_eq!(p.order(s)[1], first, "still a last resort");
        assert_eq!(p.healthy_count(), 1);
        assert_eq!(p.record(&first, true, now), None);
        assert_eq!(p.record(&first, true, now), Some(true));
        assert_eq!(p.order(s)[0], first);
    }

    #[test]
    fn new_members_start_healthy_and_staying_ones_keep_their_health() {
        let now = Instant::now();
        let mut p = pool(2);
        p.record("http://o1:8080", false, now);
        p.record("http://o1:8080", false, now);
        assert!(!p.is_healthy("http://o1:8080"));
        let same = ["http://o1:8080/".to_string(), "http://o0:8080".into()];
        assert!(!p.set_bases(&same), "the same members, in another order");
        let next = [
            "http://o1:8080".to_string(),
            "http://o2:8080".into(),
            "http://o2:8080".into(),
        ];
        assert!(p.set_bases(&next));
        assert_eq!(
            p.bases().collect::<Vec<_>>(),
            ["http://o1:8080", "http://o2:8080"]
        );
        assert!(!p.is_healthy("http://o1:8080"), "o1 stays down");
        assert!(
            p.is_healthy("http://o2:8080"),
            "a new member starts healthy"
        );
        assert!(!p.is_healthy("http://o0:8080"), "o0 left");
        // a stream of o0 moves to a member, as when o0 fails
        assert_eq!(p.order("main").len(), 2);
    }
}
