//! A subscriber's bandwidth policy as a pure core (time passed in): how much of its estimate
//! the forwarded layers may use ([`Budget`]), and when and how to ask the estimator to look for
//! more ([`ProbePacer`]). The SFU shell feeds in str0m's estimates and carries out the answers;
//! [`crate::forwarding::select_layers`] spends the budget.

use std::time::Instant;

/// The bandwidth a subscriber's layers may use, from its estimates: down at once (congestion
/// must be relieved now), up only once the estimate has stayed higher for [`Budget::HOLD`]
/// (an estimate that swings with every probe would otherwise switch layers back and forth).
#[derive(Debug, Clone)]
pub struct Budget {
    bps: u64,
    /// since when the estimate has been above the budget
    higher_since: Option<Instant>,
}

impl Budget {
    /// How long a higher estimate must last before the budget follows.
    pub const HOLD: std::time::Duration = std::time::Duration::from_secs(1);
    /// Share of the estimate the media may use (RTCP and retransmissions need room); the audio
    /// comes out of it before the video ([`Budget::for_video`]).
    pub const SHARE: f64 = 0.9;

    /// A budget from a starting estimate.
    pub fn new(estimate_bps: u64) -> Budget {
        Budget {
            bps: (estimate_bps as f64 * Self::SHARE) as u64,
            higher_since: None,
        }
    }

    /// The budget now.
    pub fn bps(&self) -> u64 {
        self.bps
    }

    /// What the video layers may use, given the audio forwarded to the subscriber: audio is
    /// never held back, so it comes first (two bots' 128 kbit/s Opus over a 400 kbit/s link
    /// left the video a budget the link could not carry, and the losses drove the estimate down
    /// until the pinned video paused).
    pub fn for_video(&self, audio_bps: u64) -> u64 {
        self.bps.saturating_sub(audio_bps)
    }

    /// A new estimate at `now`; true when the budget changed.
    pub fn estimate(&mut self, estimate_bps: u64, now: Instant) -> bool {
        let wanted = (estimate_bps as f64 * Self::SHARE) as u64;
        if wanted < self.bps {
            self.bps = wanted;
            self.higher_since = None;
            return true;
        }
        if wanted == self.bps {
            return false;
        }
        let since = *self.higher_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= Self::HOLD {
            self.bps = wanted;
            self.higher_since = None;
            return true;
        }
        false
    }
}

/// How the shell asks the estimator to probe (see [`ProbePacer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Dip the desired bitrate for [`ProbePacer::DIP`], then restore it: str0m, like
    /// libwebrtc, probes on the rise (an allocation probe) — when its estimator lets it.
    Raise,
    /// Start the estimator afresh from the estimate now: its initial probes (3x and 6x)
    /// run whatever state the old one was in. GCC does not probe while its loss-based
    /// estimator holds a rate after losses — on a capped link that is most of the time, and
    /// the hold outlasts the cap by seconds (7-12 s to find a lifted 400 kbit/s cap).
    Restart,
}

/// When to probe the bandwidth for a layer held back by it: every second while probes pay off
/// (the estimate rose since the last), backing off to every [`ProbePacer::MAX`] while they do
/// not (a capped link: each probe only fills its queue).
///
/// A probe is asked for by raising the desired bitrate (str0m, like libwebrtc, probes on an
/// allocation increase). str0m reads the desired bitrate on its own BWE timer, so the rise must
/// be seen there: a probe first dips the desired bitrate for [`ProbePacer::DIP`] (the shell
/// sets half while [`ProbePacer::dipping`]), then restores it. After two probes that found
/// nothing, every other one is a [`Probe::Restart`] instead, if the estimate has not dropped
/// for [`ProbePacer::CALM`] (not on a link congested now): a lifted cap is found within about
/// 2 x [`ProbePacer::MAX`] of the estimate settling.
#[derive(Debug, Clone, Default)]
pub struct ProbePacer {
    last: Option<(Instant, u64)>,
    /// probes in a row that found no room (the next comes after [`ProbePacer::MIN`] while
    /// none, else after [`ProbePacer::MAX`])
    misses: u32,
    /// the last probe was a [`Probe::Restart`]
    restarted: bool,
    /// the dip of the probe under way ends then
    dip_until: Option<Instant>,
    /// the estimate last seen by [`ProbePacer::pad`], and when it last dropped
    seen_bps: u64,
    dropped_at: Option<Instant>,
}

impl ProbePacer {
    /// How long the desired bitrate stays dipped before a probe (several of str0m's BWE
    /// timer periods).
    pub const DIP: std::time::Duration = std::time::Duration::from_millis(150);

    /// Whether the desired bitrate should be dipped now (a probe's first half); false once the
    /// dip is over, when the full desired bitrate is the rise that makes the probe.
    pub fn dipping(&mut self, now: Instant) -> bool {
        match self.dip_until {
            Some(t) if now < t => true,
            Some(_) => {
                self.dip_until = None;
                false
            }
            None => false,
        }
    }

    /// Shortest interval between probes.
    pub const MIN: std::time::Duration = std::time::Duration::from_secs(1);
    /// Longest: a lifted cap is found within this (and a capped link sees a probe's queue no
    /// more often).
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(2);

    /// How long after a drop of the estimate no padding is sent.
    pub const CALM: std::time::Duration = std::time::Duration::from_secs(3);

    /// Whether to pad towards the held-back layers between probes, given the estimate now:
    /// not within [`ProbePacer::CALM`] of the estimate dropping. On a capped link padding at
    /// the estimate keeps its queue full, and the losses hold the estimator in loss-limited
    /// states where it does not probe, so a lifted cap would be found late; on a free link
    /// padding is what lets the estimate grow past 1.5x the media actually acknowledged.
    pub fn pad(&mut self, estimate_bps: u64, now: Instant) -> bool {
        if estimate_bps + estimate_bps / 20 < self.seen_bps {
            self.dropped_at = Some(now);
        }
        self.seen_bps = estimate_bps;
        self.calm(now)
    }

    fn calm(&self, now: Instant) -> bool {
        self.dropped_at
            .is_none_or(|t| now.saturating_duration_since(t) >= Self::CALM)
    }

    /// Whether to probe now, and how, given the estimate now (and the last seen by
    /// [`ProbePacer::pad`]); records the probe when it says one.
    pub fn due(&mut self, estimate_bps: u64, now: Instant) -> Option<Probe> {
        if let Some((at, before)) = self.last {
            let interval = if self.misses == 0 {
                Self::MIN
            } else {
                Self::MAX
            };
            if now.saturating_duration_since(at) < interval {
                return None;
            }
            // did the last probe find room?
            if estimate_bps > before + before / 20 {
                self.misses = 0;
            } else {
                self.misses = self.misses.saturating_add(1);
            }
        }
        self.last = Some((now, estimate_bps));
        self.restarted = self.misses >= 2 && !self.restarted && self.calm(now);
        if self.restarted {
            return Some(Probe::Restart);
        }
        self.dip_until = Some(now + Self::DIP);
        Some(Probe::Raise)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn budget_falls_at_once_and_rises_after_holding() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut b = Budget::new(1_000_000);
        assert_eq!(b.bps(), 900_000);
        assert!(b.estimate(500_000, at(0)));
        assert_eq!(b.bps(), 450_000);
        assert!(!b.estimate(2_000_000, at(100)));
        assert!(!b.estimate(1_800_000, at(1000)));
        assert!(b.estimate(1_800_000, at(2200)));
        assert_eq!(b.bps(), 1_620_000);
        // a dip resets the wait
        assert!(b.estimate(1_000_000, at(2300)));
        assert!(!b.estimate(3_000_000, at(2400)));
        assert!(!b.estimate(3_000_000, at(3300)));
        assert!(b.estimate(3_000_000, at(3500)));
    }

    #[test]
    fn audio_comes_out_of_the_budget_before_video() {
        let b = Budget::new(400_000);
        assert_eq!(b.for_video(2 * 44_000), 272_000);
        assert_eq!(
            b.for_video(1_000_000),
            0,
            "more audio than budget: no video"
        );
    }

    #[test]
    fn probes_back_off_while_they_find_nothing() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut p = ProbePacer::default();
        assert!(p.due(300_000, at(0)).is_some());
        assert!(p.due(300_000, at(500)).is_none());
        assert!(p.due(300_000, at(1000)).is_some()); // found nothing: next in 2 s, the longest
        assert!(p.due(300_000, at(2500)).is_none());
        assert!(p.due(300_000, at(3000)).is_some());
        assert!(p.due(300_000, at(4500)).is_none());
        assert!(p.due(300_000, at(5000)).is_some());
        assert!(p.due(600_000, at(7000)).is_some()); // it grew: every second again
        assert!(p.due(900_000, at(8000)).is_some());
    }

    #[test]
    fn every_other_probe_after_two_misses_restarts_the_estimator_when_calm() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut p = ProbePacer::default();
        assert_eq!(p.due(300_000, at(0)), Some(Probe::Raise));
        assert_eq!(p.due(300_000, at(1000)), Some(Probe::Raise), "one miss");
        assert_eq!(p.due(300_000, at(3000)), Some(Probe::Restart), "two misses");
        assert!(!p.dipping(at(3000)), "a restart needs no dip");
        assert_eq!(p.due(300_000, at(5000)), Some(Probe::Raise));
        assert_eq!(p.due(300_000, at(7000)), Some(Probe::Restart));
        // the estimate drops (congestion now): raises only, until it has been calm for 3 s
        assert!(p.pad(300_000, at(8000)));
        assert!(!p.pad(200_000, at(8500)));
        assert_eq!(p.due(200_000, at(9000)), Some(Probe::Raise));
        assert_eq!(
            p.due(200_000, at(11000)),
            Some(Probe::Raise),
            "not calm yet"
        );
        assert_eq!(
            p.due(200_000, at(13000)),
            Some(Probe::Restart),
            "calm again"
        );
        // a probe that finds room: raises every second again, restarts after two misses
        assert_eq!(p.due(800_000, at(15000)), Some(Probe::Raise));
        assert_eq!(p.due(800_000, at(16000)), Some(Probe::Raise));
        assert_eq!(p.due(800_000, at(18000)), Some(Probe::Restart));
    }

    #[test]
    fn no_padding_for_a_while_after_the_estimate_drops() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut p = ProbePacer::default();
        assert!(p.pad(1_000_000, at(0)));
        assert!(p.pad(1_200_000, at(500)), "rising");
        assert!(p.pad(1_180_000, at(600)), "a wobble is not a drop");
        assert!(!p.pad(400_000, at(1000)), "congestion: the padding stops");
        assert!(!p.pad(400_000, at(3999)));
        assert!(p.pad(400_000, at(4000)), "calm again");
        assert!(!p.pad(300_000, at(4500)));
    }

    #[test]
    fn a_probe_dips_the_desired_bitrate_first_then_restores_it() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut p = ProbePacer::default();
        assert!(!p.dipping(at(0)));
        assert_eq!(p.due(300_000, at(0)), Some(Probe::Raise));
        assert!(p.dipping(at(0)));
        assert!(p.dipping(at(149)));
        assert!(!p.dipping(at(150)), "the rise after the dip is the probe");
        assert!(!p.dipping(at(200)));
        assert!(p.due(300_000, at(500)).is_none());
        assert!(!p.dipping(at(500)));
    }
}
