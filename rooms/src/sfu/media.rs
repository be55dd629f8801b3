//! One room's media in the SFU: its peers, the tracks they publish (with per-layer bitrate and
//! size), and the forwarding table that decides which layer each subscriber gets. Packets come
//! in as `str0m` RTP events and go out through the subscribers' send streams (that path is
//! [`super::forward`]); what is decided (layers, switches) is in [`crate::forwarding`], which
//! this drives.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Rid};
use tracing::{debug, info};

use super::peer::{OutState, Peer, INITIAL_ESTIMATE_BPS};
use super::speaker::SpeakerDetector;
use crate::bandwidth::Probe;
use crate::forwarding::{
    select_layers, sticky, target_layer, Action, ForwardingTable, Need, RtpRewriter, TrackKey,
};
use crate::signal::Layer;
use crate::tap::{Tap, TapPurpose};

use super::published::LayerStat;
pub use super::published::{order_rids, Published};
pub use super::tapping::RECORDER;

/// Keyframe requests for one layer are at most this frequent.
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// Counters the shell turns into metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// RTP packets written towards subscribers.
    pub forwarded_packets: u64,
    /// Their payload bytes.
    pub forwarded_bytes: u64,
    /// Packets received from publishers.
    pub received_packets: u64,
    /// Subscribers' bandwidth estimators restarted to probe for a held-back layer.
    pub estimator_restarts: u64,
    /// Packets publishers sent that never reached the SFU (gaps in their sequence numbers).
    pub lost_from_publishers: u64,
    /// Packets subscribers report lost on the way to them (their RTCP receiver reports).
    pub lost_to_subscribers: u64,
}

/// See the module docs.
#[derive(Default)]
pub struct RoomMedia {
    /// The room's name (for logs).
    pub name: String,
    /// Peers by participant id.
    pub peers: BTreeMap<String, Peer>,
    /// Published tracks.
    pub published: BTreeMap<TrackKey, Published>,
    /// (subscriber, track) → layer.
    pub table: ForwardingTable,
    /// Since the last report.
    pub counts: Counts,
    /// Who speaks.
    pub speakers: SpeakerDetector,
    /// The forwarding table changed: layers to pause or resume may have changed.
    pub layers_changed: bool,
    /// subscriber → publisher → what its layout needs
    needs: BTreeMap<String, BTreeMap<String, Need>>,
    /// The room is recorded or restreamed: its packets also go here.
    pub(super) taps: BTreeMap<TapPurpose, Tap>,
    /// One continuous stream per tapped track.
    pub(super) recorded: BTreeMap<TrackKey, RtpRewriter>,
    /// Seconds since the recorder last asked for keyframes (one per chunk).
    recording_seconds: u32,
}

impl RoomMedia {
    /// The media of room `name`, empty.
    pub fn new(name: &str) -> RoomMedia {
        RoomMedia {
            name: name.to_string(),
            ..RoomMedia::default()
        }
    }

    /// Poll every peer on the next drive (after a command or on the second tick).
    pub fn touch_all(&mut self) {
        for p in self.peers.values_mut() {
            p.dirty = true;
        }
    }

    /// Participant `publisher` started sending `mid`.
    pub fn track_added(&mut self, publisher: &str, mid: Mid, kind: MediaKind, rids: &[Rid]) {
        let key = TrackKey {
            publisher: publisher.to_string(),
            track: mid.to_string(),
        };
        let rids = order_rids(rids);
        let layers = vec![LayerStat::default(); rids.len().max(1)];
        let paused = vec![false; layers.len()];
        info!(room = %self.name, publisher, %mid, ?kind, layers = layers.len(), "track published");
        self.published.insert(
            key.clone(),
            Published {
                kind,
                mid,
                rids,
                layers,
                paused,
            },
        );
        for (id, peer) in self.peers.iter_mut() {
            if id != publisher {
                peer.add_output(&key, kind);
                peer.reselect = true;
            }
        }
        self.select_recorded(Instant::now());
    }

    /// Tracks of others to send to a newly connected `peer`.
    pub fn outputs_for(&self, peer: &mut Peer) {
        for (key, p) in &self.published {
            if key.publisher != peer.id {
                peer.add_output(key, p.kind);
            }
        }
    }

    /// Participant `id` is gone: its peer, tracks and table entries go; others stop receiving it.
    pub fn remove(&mut self, id: &str) -> Option<Peer> {
        self.needs.remove(id);
        for n in self.needs.values_mut() {
            n.remove(id);
        }
        self.disconnect(id)
    }

    /// Participant `id`'s peer connection is gone (it stays in the room and may connect again,
    /// keeping what its layout asked for): its tracks and table entries go.
    pub fn disconnect(&mut self, id: &str) -> Option<Peer> {
        let peer = self.peers.remove(id);
        self.published.retain(|k, _| k.publisher != id);
        self.speakers.remove(id);
        self.layers_changed = true;
        self.table.remove_participant(id);
        for p in self.peers.values_mut() {
            p.remove_outputs_of(id);
            p.reselect = true;
        }
        peer
    }

    /// A subscriber's layout need for `publisher` (kept until the subscriber leaves: it may say
    /// so before its peer connection exists).
    pub fn set_need(&mut self, subscriber: &str, publisher: &str, need: Need) {
        self.needs
            .entry(subscriber.to_string())
            .or_default()
            .insert(publisher.to_string(), need);
        if let Some(p) = self.peers.get_mut(subscriber) {
            p.reselect = true;
        }
    }

    /// Recompute the layers of every subscriber marked for it; returns keyframe requests made.
    pub fn reselect(&mut self, now: Instant) {
        for p in self.peers.values_mut() {
            // a steady estimate sends no events: the budget's hold ends here, when it is over
            // (at the next one-second tick it took up to a second longer to follow a lifted cap)
            if p.budget.estimate(p.estimate_bps, now) {
                p.reselect = true;
            }
        }
        let ids: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.reselect)
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            peer.reselect = false;
            peer.dirty = true;
            let mut needs = BTreeMap::new();
            let mut layers = BTreeMap::new();
            // the audio this subscriber receives: never held back, so the video gets the rest
            let mut audio_bps = 0u64;
            for (key, p) in &self.published {
                if key.publisher == id {
                    continue;
                }
                let open = peer
                    .outputs
                    .get(key)
                    .is_some_and(|o| matches!(o.state, OutState::Open(_)));
                if p.kind != MediaKind::Video {
                    if open {
                        audio_bps += p.layers.iter().map(|l| l.bitrate_bps).sum::<u64>();
                    }
                    continue;
                }
                let need = self
                    .needs
                    .get(&id)
                    .and_then(|n| n.get(&key.publisher))
                    .copied()
                    .unwrap_or(Need {
                        layer: Layer::Low,
                        tile_height: None,
                    });
                needs.insert(
                    key.clone(),
                    if open {
                        need
                    } else {
                        Need {
                            layer: Layer::Off,
                            tile_height: None,
                        }
                    },
                );
                layers.insert(key.clone(), p.infos(now));
            }
            let budget = peer.budget.for_video(audio_bps);
            let table = &self.table;
            let chosen = select_layers(&needs, &sticky(&layers, |k| table.current(&id, k)), budget);
            // ask the estimator to find room for the layers the layout wants: probe towards
            // them and, while some track is held below its target and the estimate is not falling, pad up
            // to them so the estimate can grow (GCC never trusts more than it saw acknowledged)
            let mut desired = audio_bps + 50_000; // audio, RTCP
            let mut capped = false;
            for (k, n) in &needs {
                let Some(ls) = layers.get(k) else {
                    continue;
                };
                let Some(target) = target_layer(n, ls) else {
                    continue;
                };
                desired += ls[target].bitrate_bps.min(4_000_000);
                if chosen.get(k).copied().flatten().is_none_or(|c| c < target) {
                    capped = true;
                }
            }
            tracing::trace!(subscriber = %id, budget, audio_bps, capped, ?needs, ?chosen, ?layers, "layers selected");
            let minimum = if capped && peer.probe.pad(peer.estimate_bps, now) {
                desired
            } else {
                0
            };
            let desired = desired.max(INITIAL_ESTIMATE_BPS);
            let (min, want) = (
                str0m::bwe::Bitrate::bps(minimum),
                str0m::bwe::Bitrate::bps(desired),
            );
            // a held-back layer: ask GCC to probe for it now rather than wait for the estimate
            // to creep — str0m probes when it sees the desired rate rise on its BWE timer, so
            // dip it for a moment first (and come back here to raise it); or, when such probes
            // keep finding nothing, start its estimator afresh (see `Probe::Restart`)
            let dipping = capped && peer.probe.dipping(now);
            let probe = if capped && !dipping {
                peer.probe.due(peer.estimate_bps, now)
            } else {
                None
            };
            if probe == Some(Probe::Restart) {
                debug!(subscriber = %id, bps = peer.estimate_bps, "bandwidth estimator restarted to probe");
                peer.rtc
                    .bwe()
                    .reset(str0m::bwe::Bitrate::bps(peer.estimate_bps));
                self.counts.estimator_restarts += 1;
            }
            if dipping || probe == Some(Probe::Raise) {
                peer.rtc
                    .bwe()
                    .set_bitrate(min, str0m::bwe::Bitrate::bps(desired / 2));
                peer.reselect = true;
            } else {
                peer.rtc.bwe().set_bitrate(min, want);
            }
            self.select(&id, &chosen, now);
        }
    }

    /// Put `subscriber`'s layers in the forwarding table and carry out what that decides:
    /// keyframes of layers it now waits for, a pause of the streams it no longer gets.
    pub(super) fn select(
        &mut self,
        subscriber: &str,
        chosen: &BTreeMap<TrackKey, Option<usize>>,
        now: Instant,
    ) {
        let actions = self.table.set(subscriber, chosen);
        if !actions.is_empty() {
            self.layers_changed = true;
        }
        for action in actions {
            match action {
                Action::RequestKeyframe { track, layer } => {
                    self.request_keyframe(&track, layer, now)
                }
                Action::Switched {
                    subscriber, track, ..
                } => {
                    debug!(%subscriber, ?track, "forwarding stopped");
                    self.forwarding_stopped(&subscriber, &track);
                }
            }
        }
    }

    /// `track` is no longer forwarded to `subscriber`: its outgoing stream resumes, whenever it
    /// does, right after the last packet it was sent.
    fn forwarding_stopped(&mut self, subscriber: &str, track: &TrackKey) {
        let rewriter = if subscriber == RECORDER {
            self.recorded.get_mut(track)
        } else {
            self.peers
                .get_mut(subscriber)
                .and_then(|p| p.outputs.get_mut(track))
                .map(|o| &mut o.rewriter)
        };
        if let Some(r) = rewriter {
            r.pause();
        }
    }

    /// Ask `track`'s publisher for a keyframe of `layer` (throttled).
    pub fn request_keyframe(&mut self, track: &TrackKey, layer: usize, now: Instant) {
        let Some(p) = self.published.get_mut(track) else {
            return;
        };
        let Some(stat) = p.layers.get_mut(layer) else {
            return;
        };
        if stat
            .last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_INTERVAL)
        {
            return;
        }
        let rid = p.rids.get(layer).copied();
        let mid = p.mid;
        if let Some(peer) = self.peers.get_mut(&track.publisher) {
            // before the layer's first packet there is no stream to ask on: the next try will
            if let Some(s) = peer.rtc.direct_api().stream_rx_by_mid(mid, rid) {
                s.request_keyframe(KeyframeRequestKind::Pli);
                peer.dirty = true;
                stat.last_keyframe_request = Some(now);
            }
        }
    }

    /// A subscriber asked for a keyframe on `mid`: pass it to the publisher of what it gets.
    pub fn keyframe_wanted(&mut self, subscriber: &str, mid: Mid, now: Instant) {
        let Some(key) = self
            .peers
            .get(subscriber)
            .and_then(|p| p.output_on(mid))
            .cloned()
        else {
            return;
        };
        let layer = self.table.current(subscriber, &key).unwrap_or(0);
        self.request_keyframe(&key, layer, now);
    }

    /// Once a second: layer bitrates from the bytes counted.
    pub fn second(&mut self, elapsed: Duration, now: Instant) {
        let secs = elapsed.as_secs_f64().max(0.1);
        for p in self.published.values_mut() {
            for (i, l) in p.layers.iter_mut().enumerate() {
                if p.paused.get(i).copied().unwrap_or(false) && l.bytes == 0 {
                    // paused by us: its last rate is what resuming it will cost
                    continue;
                }
                // over the time it actually sent: a layer paused or resumed within the window
                // is not cheaper for it
                let span = match (l.first_in_window, l.last_packet) {
                    (Some(a), Some(b)) if l.bytes > 0 => {
                        (b.saturating_duration_since(a).as_secs_f64() + 0.033).min(secs)
                    }
                    _ => secs,
                };
                l.first_in_window = None;
                if span < 0.5 {
                    // a few packets around a pause or a resume say nothing about its rate
                    l.bytes = 0;
                    continue;
                }
                let rate = (l.bytes as f64 * 8.0 / span) as u64;
                // smooth: layers vary frame to frame
                l.bitrate_bps = if l.bitrate_bps == 0 {
                    rate
                } else {
                    (l.bitrate_bps * 3 + rate) / 4
                };
                l.bytes = 0;
            }
        }
        // a switch still waiting for its keyframe asks again
        for (track, layer) in self.table.waiting() {
            self.request_keyframe(&track, layer, now);
        }
        if !self.taps.is_empty() {
            self.select_recorded(now);
            // a keyframe per chunk: chunks of video start on one
            self.recording_seconds += 1;
            if u64::from(self.recording_seconds) >= crate::recording::track::CHUNK.as_secs() {
                self.recording_seconds = 0;
                self.request_tapped_keyframes(now);
            }
        }
        for p in self.peers.values_mut() {
            p.reselect = true;
        }
    }

    /// Layers to pause or resume at the publishers: (publisher, mid, RIDs to keep sending)
    /// for every simulcast video whose set changed. The lowest layer always stays on, so a
    /// newcomer gets a picture at once.
    pub fn layer_updates(&mut self) -> Vec<(String, Mid, Vec<Rid>)> {
        if !std::mem::take(&mut self.layers_changed) {
            return Vec::new();
        }
        let mut updates = Vec::new();
        for (k, p) in self.published.iter_mut() {
            if p.kind != MediaKind::Video || p.rids.len() < 2 {
                continue;
            }
            let used = self.table.layers_in_use(k);
            let paused: Vec<bool> = (0..p.rids.len())
                .map(|i| i > 0 && !used.contains(&i))
                .collect();
            if paused != p.paused {
                p.paused = paused;
                let keep = p
                    .rids
                    .iter()
                    .zip(&p.paused)
                    .filter(|(_, off)| !**off)
                    .map(|(r, _)| *r)
                    .collect();
                updates.push((k.publisher.clone(), p.mid, keep));
            }
        }
        updates
    }
}
