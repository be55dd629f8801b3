//! Selective forwarding as a pure core: which simulcast layer of each published video track each
//! subscriber gets, and how a forwarded stream stays continuous across layer switches. No
//! sockets, no clock (time is passed in), decisions as values — the SFU shell carries them out.
//!
//! * [`select_layers`]: one subscriber's choice for all its tracks from its layout needs
//!   (`high` pinned, `low` thumbnail, `off` hidden, optional tile height) and its bandwidth
//!   estimate, the pinned track served first.
//! * [`ForwardingTable`]: (subscriber, track) → the layer forwarded now and the one wanted; a
//!   switch waits for a keyframe of the new layer (asking for one), then happens at once.
//! * [`RtpRewriter`]: per (subscriber, track), maps the forwarded layer's sequence numbers and
//!   timestamps onto one continuous outgoing stream.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::signal::Layer;

/// A published track: publisher identity and track id (the `mid` or a name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrackKey {
    /// Publisher.
    pub publisher: String,
    /// Track within the publisher.
    pub track: String,
}

/// One simulcast layer as received from the publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// Frame height.
    pub height: u32,
    /// Measured bitrate (bits per second); [`LayerInfo::UNAVAILABLE`] when the publisher sends
    /// none of it.
    pub bitrate_bps: u64,
}

impl LayerInfo {
    /// The bitrate of a layer the publisher does not send: no budget carries it, so it is never
    /// chosen (and sums of a few of them do not overflow).
    pub const UNAVAILABLE: u64 = u64::MAX / 16;
}

/// What a subscriber's layout needs of one track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// High (pinned), low (thumbnail), off (hidden).
    pub layer: Layer,
    /// Height of the tile showing it, if known: no layer taller than needed is sent.
    pub tile_height: Option<u32>,
}

/// The layer a need asks for among `layers` (low → high), before any bandwidth limit: `off`
/// none, `low` the lowest, `high` the smallest at least as tall as the tile (else the top).
pub fn target_layer(need: &Need, layers: &[LayerInfo]) -> Option<usize> {
    let top = layers.len().checked_sub(1)?;
    match need.layer {
        Layer::Off => None,
        Layer::Low => Some(0),
        Layer::High => Some(match need.tile_height {
            Some(h) => layers.iter().position(|l| l.height >= h).unwrap_or(top),
            None => top,
        }),
    }
}

/// Share of its cost a layer being forwarded counts for when choosing again: staying costs less
/// than switching (a keyframe, a visible change), so a rate that wobbles around a threshold does
/// not flip the layer back and forth.
pub const STAY_DISCOUNT: f64 = 0.8;

/// `layers` with the layer each track is forwarded in now counted at [`STAY_DISCOUNT`] of its
/// bitrate, for [`select_layers`].
pub fn sticky(
    layers: &BTreeMap<TrackKey, Vec<LayerInfo>>,
    current: impl Fn(&TrackKey) -> Option<usize>,
) -> BTreeMap<TrackKey, Vec<LayerInfo>> {
    layers
        .iter()
        .map(|(k, ls)| {
            let mut ls = ls.clone();
            if let Some(l) = current(k).and_then(|i| ls.get_mut(i)) {
                l.bitrate_bps = (l.bitrate_bps as f64 * STAY_DISCOUNT) as u64;
            }
            (k.clone(), ls)
        })
        .collect()
}

/// The layer each track should get (`None`: paused), for one subscriber. `layers` are a track's
/// layers ordered low → high; `budget_bps` is the subscriber's bandwidth estimate. Every wanted
/// track first gets its lowest layer (pinned tracks first; what the budget cannot carry is
/// paused, thumbnails before pinned), then tracks are raised one layer at a time towards their
/// target, pinned tracks first, while the budget allows.
///
/// The first wanted track whose lowest layer is sent (the pinned one, if any) keeps that layer
/// whatever the budget:
/// a subscriber with every video paused receives only audio, and str0m did not pad that up to
/// the estimate (the lab link carried 130-180 kbit/s under a 270 kbit/s estimate), so the
/// estimate sank towards the audio rate and the video did not come back (on a 400 kbit/s link
/// it fell to 90 kbit/s and the pinned video stayed paused for 13 s, past the lifting of the
/// cap).
pub fn select_layers(
    needs: &BTreeMap<TrackKey, Need>,
    layers: &BTreeMap<TrackKey, Vec<LayerInfo>>,
    budget_bps: u64,
) -> BTreeMap<TrackKey, Option<usize>> {
    // target layer per track, by need and tile size
    let mut wanted: Vec<(&TrackKey, usize, bool)> = Vec::new(); // (track, target, pinned)
    let mut chosen: BTreeMap<TrackKey, Option<usize>> = BTreeMap::new();
    for (key, need) in needs {
        chosen.insert(key.clone(), None);
        let Some(ls) = layers.get(key).filter(|l| !l.is_empty()) else {
            continue;
        };
        let Some(target) = target_layer(need, ls) else {
            continue;
        };
        wanted.push((key, target, need.layer == Layer::High));
    }
    // pinned first, then by key for determinism
    wanted.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(b.0)));
    let rate = |key: &TrackKey, i: usize| layers[key][i].bitrate_bps;
    let mut spent = 0u64;
    let mut one_flows = false;
    for (key, _, _) in &wanted {
        let cost = rate(key, 0);
        if cost < LayerInfo::UNAVAILABLE && (!one_flows || spent + cost <= budget_bps) {
            spent += cost;
            one_flows = true;
            chosen.insert((*key).clone(), Some(0));
        }
    }
    loop {
        let mut raised = false;
        for (key, target, _) in &wanted {
            let Some(Some(cur)) = chosen.get(*key).copied() else {
                continue;
            };
            if cur >= *target {
                continue;
            }
            let extra = rate(key, cur + 1).saturating_sub(rate(key, cur));
            if spent + extra <= budget_bps {
                spent += extra;
                chosen.insert((*key).clone(), Some(cur + 1));
                raised = true;
                break; // re-scan from the top: pinned tracks climb first
            }
        }
        if !raised {
            return chosen;
        }
    }
}

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
    interval_ms: u64,
    /// probes in a row that found no room
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
        let min = Self::MIN.as_millis() as u64;
        let max = Self::MAX.as_millis() as u64;
        let interval = self.interval_ms.clamp(min, max);
        if let Some((at, before)) = self.last {
            if (now.saturating_duration_since(at).as_millis() as u64) < interval {
                return None;
            }
            // did the last probe find room?
            if estimate_bps > before + before / 20 {
                self.interval_ms = min;
                self.misses = 0;
            } else {
                self.interval_ms = (interval * 2).min(max);
                self.misses = self.misses.saturating_add(1);
            }
        } else {
            self.interval_ms = min;
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

/// What the shell must do after a table change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask the publisher for a keyframe of this layer (PLI on its stream).
    RequestKeyframe {
        /// The track.
        track: TrackKey,
        /// Its layer.
        layer: usize,
    },
    /// Start forwarding `layer` to `subscriber` (after a keyframe), or stop (`None`).
    Switched {
        /// Who receives.
        subscriber: String,
        /// The track.
        track: TrackKey,
        /// Layer forwarded from now on.
        layer: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Entry {
    current: Option<usize>,
    target: Option<usize>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct ForwardingTable {
    /// track → subscriber → entry: a packet's receivers are one lookup, not a scan of the room
    entries: BTreeMap<TrackKey, BTreeMap<String, Entry>>,
    switches: u64,
}

impl ForwardingTable {
    /// Set what `subscriber` should receive (from [`select_layers`]). A stop is immediate; a
    /// start or switch waits for a keyframe of the new layer.
    pub fn set(
        &mut self,
        subscriber: &str,
        chosen: &BTreeMap<TrackKey, Option<usize>>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        for (track, layer) in chosen {
            let e = self
                .entries
                .entry(track.clone())
                .or_default()
                .entry(subscriber.to_string())
                .or_default();
            if e.target == *layer && (e.current == *layer || layer.is_some()) {
                continue;
            }
            e.target = *layer;
            match layer {
                None => {
                    if e.current.is_some() {
                        e.current = None;
                        self.switches += 1;
                        actions.push(Action::Switched {
                            subscriber: subscriber.to_string(),
                            track: track.clone(),
                            layer: None,
                        });
                    }
                }
                Some(l) if e.current != Some(*l) => actions.push(Action::RequestKeyframe {
                    track: track.clone(),
                    layer: *l,
                }),
                Some(_) => {}
            }
        }
        actions.dedup();
        actions
    }

    /// A keyframe of `track`'s `layer` arrived: every subscriber waiting for that layer switches
    /// now (before this packet is forwarded).
    pub fn keyframe(&mut self, track: &TrackKey, layer: usize) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(subs) = self.entries.get_mut(track) else {
            return actions;
        };
        for (sub, e) in subs.iter_mut() {
            if e.target == Some(layer) && e.current != Some(layer) {
                e.current = Some(layer);
                self.switches += 1;
                actions.push(Action::Switched {
                    subscriber: sub.clone(),
                    track: track.clone(),
                    layer: Some(layer),
                });
            }
        }
        actions
    }

    /// The layer of `track` forwarded to `subscriber` now.
    pub fn current(&self, subscriber: &str, track: &TrackKey) -> Option<usize> {
        self.entries.get(track)?.get(subscriber)?.current
    }

    /// Subscribers that get `track`'s `layer` now (who a packet of it goes to).
    pub fn receivers<'a>(
        &'a self,
        track: &'a TrackKey,
        layer: usize,
    ) -> impl Iterator<Item = &'a str> {
        self.entries
            .get(track)
            .into_iter()
            .flatten()
            .filter(move |(_, e)| e.current == Some(layer))
            .map(|(s, _)| s.as_str())
    }

    /// Switches still waiting for a keyframe: (track, layer), each once. The shell asks again
    /// (a request can be lost, or made before the layer's first packet).
    pub fn waiting(&self) -> BTreeSet<(TrackKey, usize)> {
        self.entries
            .iter()
            .flat_map(|(t, subs)| {
                subs.values().filter_map(move |e| match e.target {
                    Some(l) if e.current != Some(l) => Some((t.clone(), l)),
                    _ => None,
                })
            })
            .collect()
    }

    /// Layers of `track` anyone receives or waits for (the others can be paused at the
    /// publisher).
    pub fn layers_in_use(&self, track: &TrackKey) -> BTreeSet<usize> {
        self.entries
            .get(track)
            .into_iter()
            .flat_map(|subs| subs.values())
            .flat_map(|e| e.current.into_iter().chain(e.target))
            .collect()
    }

    /// A participant left: its subscriptions and the entries of its tracks go.
    pub fn remove_participant(&mut self, id: &str) {
        self.entries.retain(|track, subs| {
            subs.remove(id);
            track.publisher != id && !subs.is_empty()
        });
    }

    /// Entries held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries.values().map(BTreeMap::len).sum()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Layer switches done so far.
    pub fn switches(&self) -> u64 {
        self.switches
    }
}

/// Keeps one outgoing RTP stream continuous while the incoming layer changes: sequence numbers
/// go on by one per packet, timestamps by the time that passed (at `clock_rate`) across a
/// switch, and as the source's own timestamps within a layer.
#[derive(Debug, Clone)]
pub struct RtpRewriter {
    clock_rate: u32,
    /// source layer forwarded now
    layer: Option<usize>,
    seq_offset: u16,
    ts_offset: u32,
    last_out: Option<(u16, u32, Instant)>,
    /// highest source sequence number forwarded in this layer
    last_in_seq: Option<u16>,
}

impl RtpRewriter {
    /// A rewriter for a stream with this RTP clock rate (90 kHz video, 48 kHz Opus).
    pub fn new(clock_rate: u32) -> RtpRewriter {
        RtpRewriter {
            clock_rate,
            layer: None,
            seq_offset: 0,
            ts_offset: 0,
            last_out: None,
            last_in_seq: None,
        }
    }

    /// The outgoing (sequence number, timestamp) of a source packet of `layer` that arrived at
    /// `now`. A packet of another layer than the last one starts the new layer right after the
    /// last packet sent.
    pub fn rewrite(&mut self, layer: usize, seq: u16, ts: u32, now: Instant) -> (u16, u32) {
        if self.layer != Some(layer) {
            let (next_seq, next_ts) = match self.last_out {
                Some((s, t, at)) => {
                    let elapsed = now.saturating_duration_since(at).as_secs_f64();
                    // at least one tick later, so the receiver never sees time stand still
                    let ticks = ((elapsed * f64::from(self.clock_rate)) as u32).max(1);
                    (s.wrapping_add(1), t.wrapping_add(ticks))
                }
                None => (seq, ts),
            };
            self.seq_offset = next_seq.wrapping_sub(seq);
            self.ts_offset = next_ts.wrapping_sub(ts);
            self.layer = Some(layer);
            self.last_in_seq = None;
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        // a late (reordered) packet keeps its place; only newer ones move the reference
        let newer = self
            .last_in_seq
            .is_none_or(|last| seq.wrapping_sub(last) < 0x8000 && seq != last);
        if newer {
            self.last_in_seq = Some(seq);
            self.last_out = Some((out_seq, out_ts, now));
        }
        (out_seq, out_ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(p: &str) -> TrackKey {
        TrackKey {
            publisher: p.into(),
            track: "video".into(),
        }
    }

    fn simulcast() -> Vec<LayerInfo> {
        vec![
            LayerInfo {
                height: 180,
                bitrate_bps: 150_000,
            },
            LayerInfo {
                height: 360,
                bitrate_bps: 500_000,
            },
            LayerInfo {
                height: 720,
                bitrate_bps: 1_500_000,
            },
        ]
    }

    fn needs(list: &[(&str, Layer, Option<u32>)]) -> BTreeMap<TrackKey, Need> {
        list.iter()
            .map(|(p, layer, h)| {
                (
                    key(p),
                    Need {
                        layer: *layer,
                        tile_height: *h,
                    },
                )
            })
            .collect()
    }

    fn layers(ps: &[&str]) -> BTreeMap<TrackKey, Vec<LayerInfo>> {
        ps.iter().map(|p| (key(p), simulcast())).collect()
    }

    #[test]
    fn pinned_gets_high_when_the_budget_allows_thumbnails_low_hidden_off() {
        let n = needs(&[
            ("a", Layer::High, None),
            ("b", Layer::Low, None),
            ("c", Layer::Off, None),
        ]);
        let l = layers(&["a", "b", "c"]);
        let c = select_layers(&n, &l, 10_000_000);
        assert_eq!(c[&key("a")], Some(2));
        assert_eq!(c[&key("b")], Some(0));
        assert_eq!(c[&key("c")], None);
        // 400 kbit/s: both get their lowest (300k), the pinned one cannot climb to 360p (+350k)
        let c = select_layers(&n, &l, 400_000);
        assert_eq!((c[&key("a")], c[&key("b")]), (Some(0), Some(0)));
        // 700 kbit/s: the pinned one climbs first
        let c = select_layers(&n, &l, 700_000);
        assert_eq!((c[&key("a")], c[&key("b")]), (Some(1), Some(0)));
        // 200 kbit/s: only the pinned one fits
        let c = select_layers(&n, &l, 200_000);
        assert_eq!((c[&key("a")], c[&key("b")]), (Some(0), None));
        // below its lowest layer the pinned one still gets it: one video always flows
        let c = select_layers(&n, &l, 50_000);
        assert_eq!((c[&key("a")], c[&key("b")]), (Some(0), None));
        let n = needs(&[("b", Layer::Low, None), ("c", Layer::Low, None)]);
        let c = select_layers(&n, &layers(&["b", "c"]), 0);
        assert_eq!(
            (c[&key("b")], c[&key("c")]),
            (Some(0), None),
            "no pinned: the first"
        );
        // a pinned track its publisher does not send (camera off) neither gets a layer nor
        // takes the budget: the others are served as before
        let n = needs(&[("a", Layer::High, None), ("b", Layer::High, None)]);
        let mut l = layers(&["a", "b"]);
        for layer in l.get_mut(&key("a")).into_iter().flatten() {
            layer.bitrate_bps = LayerInfo::UNAVAILABLE;
        }
        let c = select_layers(&n, &l, 700_000);
        assert_eq!((c[&key("a")], c[&key("b")]), (None, Some(1)));
        let c = select_layers(&n, &l, 0);
        assert_eq!(
            (c[&key("a")], c[&key("b")]),
            (None, Some(0)),
            "b is the one that flows"
        );
    }

    #[test]
    fn the_layer_never_exceeds_the_tile() {
        let n = needs(&[("a", Layer::High, Some(300))]);
        let c = select_layers(&n, &layers(&["a"]), 10_000_000);
        assert_eq!(c[&key("a")], Some(1), "360p covers a 300 px tile");
        let n = needs(&[("a", Layer::High, Some(1080))]);
        assert_eq!(
            select_layers(&n, &layers(&["a"]), 10_000_000)[&key("a")],
            Some(2)
        );
    }

    #[test]
    fn switches_wait_for_a_keyframe_of_the_new_layer() {
        let mut t = ForwardingTable::default();
        let a = key("a");
        let high: BTreeMap<_, _> = [(a.clone(), Some(2))].into();
        assert_eq!(
            t.set("s", &high),
            vec![Action::RequestKeyframe {
                track: a.clone(),
                layer: 2
            }]
        );
        assert_eq!(t.current("s", &a), None);
        assert_eq!(
            t.waiting(),
            [(a.clone(), 2)].into(),
            "asked again until it comes"
        );
        assert!(t.keyframe(&a, 0).is_empty(), "another layer's keyframe");
        assert_eq!(
            t.keyframe(&a, 2),
            vec![Action::Switched {
                subscriber: "s".into(),
                track: a.clone(),
                layer: Some(2)
            }]
        );
        assert_eq!(t.receivers(&a, 2).collect::<Vec<_>>(), vec!["s"]);
        assert!(t.waiting().is_empty());
        // down to low: high keeps flowing until low's keyframe
        let low: BTreeMap<_, _> = [(a.clone(), Some(0))].into();
        assert_eq!(
            t.set("s", &low),
            vec![Action::RequestKeyframe {
                track: a.clone(),
                layer: 0
            }]
        );
        assert_eq!(t.current("s", &a), Some(2));
        assert_eq!(t.layers_in_use(&a), [0, 2].into());
        t.keyframe(&a, 0);
        assert_eq!(t.current("s", &a), Some(0));
        assert_eq!(t.layers_in_use(&a), [0].into(), "layer 2 can be paused");
        // off: immediate
        let off: BTreeMap<_, _> = [(a.clone(), None)].into();
        assert_eq!(
            t.set("s", &off),
            vec![Action::Switched {
                subscriber: "s".into(),
                track: a.clone(),
                layer: None
            }]
        );
        assert_eq!(t.receivers(&a, 0).count(), 0);
        assert_eq!(t.switches(), 3);
        t.remove_participant("a");
        assert!(t.is_empty());
    }

    #[test]
    fn receivers_are_the_tracks_subscribers_on_that_layer_and_a_leaver_goes_everywhere() {
        let mut t = ForwardingTable::default();
        let (a, b) = (key("a"), key("b"));
        for (sub, la, lb) in [
            ("b", Some(0), None),
            ("c", Some(2), Some(0)),
            ("d", Some(0), Some(0)),
        ] {
            let chosen: BTreeMap<_, _> = [(a.clone(), la), (b.clone(), lb)].into();
            t.set(sub, &chosen);
        }
        t.keyframe(&a, 0);
        t.keyframe(&a, 2);
        t.keyframe(&b, 0);
        assert_eq!(t.receivers(&a, 0).collect::<Vec<_>>(), vec!["b", "d"]);
        assert_eq!(t.receivers(&a, 2).collect::<Vec<_>>(), vec!["c"]);
        assert_eq!(t.receivers(&b, 0).collect::<Vec<_>>(), vec!["c", "d"]);
        assert_eq!(
            t.receivers(&key("x"), 0).count(),
            0,
            "a track nobody asked for"
        );
        assert_eq!(t.len(), 6);
        // d leaves: its subscriptions go; b leaves: its track and its subscriptions go
        t.remove_participant("d");
        assert_eq!(t.receivers(&a, 0).collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(t.len(), 4);
        t.remove_participant("b");
        assert_eq!(t.receivers(&b, 0).count(), 0);
        assert_eq!(t.receivers(&a, 0).count(), 0);
        assert_eq!(t.current("c", &a), Some(2));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn rewritten_stream_is_continuous_across_switches() {
        let t0 = Instant::now();
        let mut r = RtpRewriter::new(90_000);
        // layer 0: seq 100.., ts 1000.. (3000 ticks per frame at 30 fps)
        let mut out = Vec::new();
        for i in 0..3u16 {
            out.push(r.rewrite(
                0,
                100 + i,
                1000 + 3000 * u32::from(i),
                t0 + Duration::from_millis(33 * u64::from(i)),
            ));
        }
        // switch to layer 2 (unrelated numbering, wrapping), 33 ms after the last packet
        let at = t0 + Duration::from_millis(99);
        out.push(r.rewrite(2, 65534, 4_000_000_000, at));
        out.push(r.rewrite(2, 65535, 4_000_003_000, at + Duration::from_millis(33)));
        out.push(r.rewrite(2, 0, 4_000_006_000, at + Duration::from_millis(66)));
        for w in out.windows(2) {
            assert_eq!(
                w[1].0,
                w[0].0.wrapping_add(1),
                "sequence continues: {out:?}"
            );
            let dt = w[1].1.wrapping_sub(w[0].1);
            assert!(
                (2900..=3100).contains(&dt),
                "timestamps advance one frame: {out:?}"
            );
        }
        // a reordered packet of the current layer keeps its relative place
        let late = r.rewrite(2, 65535, 4_000_003_000, at + Duration::from_millis(70));
        assert_eq!(late, out[4]);
    }

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

    #[test]
    fn the_current_layer_is_kept_near_the_threshold() {
        let a = key("a");
        let layers: BTreeMap<_, _> = [(a.clone(), simulcast())].into();
        let pinned: BTreeMap<_, _> = [(
            a.clone(),
            Need {
                layer: Layer::High,
                tile_height: None,
            },
        )]
        .into();
        // 1.4 Mbit/s does not fit the top layer (1.5)...
        assert_eq!(select_layers(&pinned, &layers, 1_400_000)[&a], Some(1));
        // ...but a subscriber already on it keeps it until the budget falls clearly below
        let kept = sticky(&layers, |_| Some(2));
        assert_eq!(select_layers(&pinned, &kept, 1_400_000)[&a], Some(2));
        assert_eq!(select_layers(&pinned, &kept, 1_000_000)[&a], Some(1));
    }
}
