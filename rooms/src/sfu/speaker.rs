//! Who is speaking, from the audio levels publishers put in their packets (RFC 6464, in -dBov:
//! 0 loudest, -127 silence). A pure core: levels and time in, a change of speaker out. The
//! loudest participant above a threshold, averaged over a short window, becomes the active
//! speaker only after holding it for a moment, so a cough does not move the stage.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Quieter than this (dBov) is silence.
const THRESHOLD_DBOV: f64 = -50.0;
/// A new speaker must lead this long.
const HOLD: Duration = Duration::from_millis(600);
/// Level samples older than this are forgotten.
const WINDOW: Duration = Duration::from_millis(1000);

#[derive(Debug, Default)]
struct Levels {
    samples: Vec<(Instant, i8)>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct SpeakerDetector {
    levels: BTreeMap<String, Levels>,
    current: Option<String>,
    /// the loudest now, and since when
    leader: Option<(String, Instant)>,
}

impl SpeakerDetector {
    /// An audio packet of `participant` with this level (-dBov), received at `now`.
    pub fn observe(&mut self, participant: &str, level: i8, now: Instant) {
        let l = self.levels.entry(participant.to_string()).or_default();
        // one sample per 50 ms is plenty (audio packets come every 20 ms)
        if l.samples
            .last()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) < Duration::from_millis(50))
        {
            return;
        }
        l.samples.push((now, level));
        l.samples
            .retain(|(t, _)| now.saturating_duration_since(*t) <= WINDOW);
    }

    /// A participant left.
    pub fn remove(&mut self, participant: &str) {
        self.levels.remove(participant);
        if self.current.as_deref() == Some(participant) {
            self.current = None;
        }
    }

    /// The active speaker if it changed since the last call.
    pub fn decide(&mut self, now: Instant) -> Option<String> {
        let mut best: Option<(&str, f64)> = None;
        for (id, l) in &self.levels {
            let recent: Vec<f64> = l
                .samples
                .iter()
                .filter(|(t, _)| now.saturating_duration_since(*t) <= WINDOW)
                .map(|(_, v)| f64::from(*v))
                .collect();
            if recent.is_empty() {
                continue;
            }
            let mean = recent.iter().sum::<f64>() / recent.len() as f64;
            if mean > THRESHOLD_DBOV && best.is_none_or(|(_, b)| mean > b) {
                best = Some((id, mean));
            }
        }
        let best = best.map(|(id, _)| id.to_string())?;
        if self.current.as_deref() == Some(best.as_str()) {
            self.leader = None;
            return None;
        }
        match &self.leader {
            Some((id, since)) if *id == best => {
                if now.saturating_duration_since(*since) >= HOLD {
                    self.leader = None;
                    self.current = Some(best.clone());
                    return Some(best);
                }
                None
            }
            _ => {
                self.leader = Some((best, now));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn talk(d: &mut SpeakerDetector, who: &str, level: i8, from: Instant, ms: u64) {
        for i in 0..ms / 20 {
            d.observe(who, level, from + Duration::from_millis(i * 20));
        }
    }

    #[test]
    fn the_loudest_becomes_speaker_after_holding_the_lead() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::default();
        talk(&mut d, "a", -30, t0, 1000);
        talk(&mut d, "b", -70, t0, 1000);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(d.decide(at(300)), None); // leads, not long enough
        assert_eq!(d.decide(at(1000)), Some("a".to_string()));
        assert_eq!(d.decide(at(1000)), None); // no change
                                              // b speaks up, a goes quiet
        talk(&mut d, "b", -20, at(1000), 1500);
        talk(&mut d, "a", -90, at(1000), 1500);
        assert_eq!(d.decide(at(2000)), None);
        assert_eq!(d.decide(at(2400)), None);
        assert_eq!(d.decide(at(2700)), Some("b".to_string()));
    }

    #[test]
    fn silence_elects_nobody_and_leavers_are_forgotten() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::default();
        talk(&mut d, "a", -100, t0, 2000);
        assert_eq!(d.decide(t0 + Duration::from_millis(1000)), None);
        assert_eq!(d.decide(t0 + Duration::from_millis(2000)), None);
        d.remove("a");
        assert_eq!(d.decide(t0 + Duration::from_millis(2000)), None);
    }
}
