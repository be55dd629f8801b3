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

    /// Forwarding stopped (the layer was paused for this subscriber): whatever layer comes next
    /// starts right after the last packet sent, as a switch does. Without this a layer resumed
    /// after a pause went on from the source's own sequence numbers, and the receiver counted
    /// every packet it was not sent as lost (and asked for them again).
    pub fn pause(&mut self) {
        self.layer = None;
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
    fn a_layer_resumed_after_a_pause_goes_on_from_the_last_packet_sent() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut r = RtpRewriter::new(90_000);
        assert_eq!(r.rewrite(0, 100, 9_000, at(0)), (100, 9_000));
        assert_eq!(r.rewrite(0, 101, 12_000, at(33)), (101, 12_000));
        r.pause();
        // 30 packets (1 s) of layer 0 not forwarded, then the same layer again
        let (seq, ts) = r.rewrite(0, 132, 102_000, at(1033));
        assert_eq!(seq, 102, "no gap for packets never meant to be sent");
        assert_eq!(ts, 12_000 + 90_000, "time still moves on");
        assert_eq!(r.rewrite(0, 133, 105_000, at(1066)), (103, 105_000));
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
