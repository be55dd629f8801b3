//! `OriginPool`: which upstream (origin or shield) serves a stream. Rendezvous hashing of the
//! stream name over the upstreams (adding or losing one moves only its own streams), health
//! from active probes and from request failures with rise/fall thresholds, and a failover
//! order: healthy upstreams by score, then the unhealthy ones as a last resort. Pure: probe
//! results and `now` are passed in.

use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// Consecutive failures that mark an upstream down.
const FALL: u32 = 2;
/// Consecutive successes that bring it back.
const RISE: u32 = 2;

#[derive(Debug, Clone)]
struct Upstream {
    base: String,
    healthy: bool,
    successes: u32,
    failures: u32,
    changed_at: Option<Instant>,
}

/// Upstreams and their health.
#[derive(Debug, Clone)]
pub struct OriginPool {
    upstreams: Vec<Upstream>,
}

/// A stable 64-bit hash (FNV-1a): the same on every edge, so every edge picks the same origin.
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

impl OriginPool {
    /// A pool of base URLs (`http://host:port`), all assumed healthy at first.
    pub fn new(bases: &[String]) -> Self {
        OriginPool {
            upstreams: bases
                .iter()
                .map(|b| Upstream {
                    base: b.trim_end_matches('/').to_string(),
                    healthy: true,
                    successes: 0,
                    failures: 0,
                    changed_at: None,
                })
                .collect(),
        }
    }

    /// Base URLs, in configuration order.
    pub fn bases(&self) -> impl Iterator<Item = &str> {
        self.upstreams.iter().map(|u| u.base.as_str())
    }

    /// Upstreams to try for `stream`, best first.
    pub fn order(&self, stream: &str) -> Vec<String> {
        let mut scored: Vec<(bool, u64, &str)> = self
            .upstreams
            .iter()
            .map(|u| (!u.healthy, fnv(&[stream, &u.base]), u.base.as_str()))
            .collect();
        // healthy first (false < true), then highest score
        scored.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        scored.into_iter().map(|(_, _, b)| b.to_string()).collect()
    }

    /// Record a probe or request outcome; returns `Some(healthy)` when the state flipped.
    pub fn record(&mut self, base: &str, ok: bool, now: Instant) -> Option<bool> {
        let u = self.upstreams.iter_mut().find(|u| u.base == base)?;
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
        self.upstreams.iter().any(|u| u.base == base && u.healthy)
    }

    /// Healthy upstream count.
    pub fn healthy_count(&self) -> usize {
        self.upstreams.iter().filter(|u| u.healthy).count()
    }

    /// How long since `base` last changed state.
    pub fn since_change(&self, base: &str, now: Instant) -> Option<Duration> {
        self.upstreams
            .iter()
            .find(|u| u.base == base)?
            .changed_at
            .map(|t| now.saturating_duration_since(t))
    }
}

/// The stream a path belongs to (`/live/{stream}/…`, `/vod/{stream}/…`), for upstream choice.
pub fn stream_of(path: &str) -> &str {
    let mut it = path.trim_start_matches('/').split('/');
    match (it.next(), it.next()) {
        (Some("live" | "vod"), Some(stream)) => stream,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> OriginPool {
        let bases: Vec<String> = (0..n).map(|i| format!("http://o{i}:8080")).collect();
        OriginPool::new(&bases)
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
        let p2 = OriginPool::new(&["http://o0:8080".into(), "http://o1:8080".into()]);
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
    fn stream_from_path() {
        assert_eq!(stream_of("/live/main/720p/1.m4s"), "main");
        assert_eq!(stream_of("/vod/main/1/master.m3u8"), "main");
        assert_eq!(stream_of("/demo/"), "");
    }
}
