//! The packet path of a room's media: an RTP packet from a publisher is accounted (layer
//! bitrate, loss, speaker level), switches layers waiting for its keyframe, goes to the taps, and
//! is written — rewritten to continue each subscriber's stream — to everyone the forwarding
//! table (video) or the room (audio) says receives it. It runs for every packet.

use std::time::Instant;

use str0m::format::{Codec, PayloadParams};
use str0m::media::MediaKind;
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use tracing::debug;

use super::codec::{starts_keyframe, vp8_keyframe_size, VideoCodec};
use super::media::{RoomMedia, RECORDER};
use super::peer::{OutState, Peer};
use super::published::LAYER_IDLE;
use crate::forwarding::{Action, TrackKey};

/// One received packet on its way out: what each subscriber's copy is made from.
struct Forwarded<'a> {
    key: &'a TrackKey,
    layer: usize,
    packet: &'a RtpPacket,
    params: &'a PayloadParams,
    ext: ExtensionValues,
    nackable: bool,
    now: Instant,
}

impl Forwarded<'_> {
    /// Write the packet into `peer`'s outgoing stream of the track, rewritten to continue it;
    /// false when the peer has no open stream for it (or no matching codec).
    fn write_to(&self, peer: &mut Peer) -> bool {
        let Some(out) = peer.outputs.get_mut(self.key) else {
            return false;
        };
        let OutState::Open(out_mid) = out.state else {
            return false;
        };
        let in_pt = self.params.pt();
        let out_pt = match out.pt {
            Some((from, to)) if from == in_pt => to,
            _ => {
                let Some(to) = peer.rtc.codec_config().match_params(*self.params) else {
                    return false;
                };
                out.pt = Some((in_pt, to.pt()));
                to.pt()
            }
        };
        let header = &self.packet.header;
        let (seq, ts) = out.rewriter.rewrite(
            self.layer,
            header.sequence_number,
            header.timestamp,
            self.now,
        );
        let seq = out.seq.extend(seq);
        let mut api = peer.rtc.direct_api();
        let Some(stream) = api.stream_tx_by_mid(out_mid, None) else {
            return false;
        };
        stream.write_rtp(
            RtpWrite::new(
                out_pt,
                seq.into(),
                ts,
                self.packet.timestamp,
                self.packet.payload.clone(),
            )
            .marker(header.marker)
            .ext_vals(self.ext.clone())
            .nackable(self.nackable),
        );
        peer.dirty = true;
        true
    }
}

fn video_codec(codec: Codec) -> Option<VideoCodec> {
    match codec {
        Codec::Vp8 => Some(VideoCodec::Vp8),
        Codec::H264 => Some(VideoCodec::H264),
        _ => None,
    }
}

impl RoomMedia {
    /// An RTP packet from `publisher`: account it, switch layers on keyframes, forward it.
    pub fn forward(&mut self, publisher: &str, packet: &RtpPacket, now: Instant) {
        self.counts.received_packets += 1;
        let Some(peer) = self.peers.get_mut(publisher) else {
            return;
        };
        let Some((mid, rid)) = peer.source_of(packet.header.ssrc) else {
            return;
        };
        let params = peer
            .rtc
            .codec_config()
            .find(|p| p.pt() == packet.header.payload_type)
            .copied();
        let Some(params) = params else {
            return;
        };
        let key = TrackKey {
            publisher: publisher.to_string(),
            track: mid.to_string(),
        };
        let Some(published) = self.published.get_mut(&key) else {
            return;
        };
        let layer = published.layer_of(rid);
        let kind = published.kind;
        if let Some(level) = packet.header.ext_vals.audio_level {
            self.speakers.observe(publisher, level, now);
        }
        let mut newly_active = false;
        if let Some(stat) = published.layers.get_mut(layer) {
            newly_active = stat
                .last_packet
                .is_none_or(|t| now.saturating_duration_since(t) >= LAYER_IDLE);
            stat.bytes += packet.payload.len() as u64 + 12;
            stat.first_in_window.get_or_insert(now);
            stat.last_packet = Some(now);
            self.counts.lost_from_publishers += stat.loss.arrived(*packet.seq_no);
        }
        if kind == MediaKind::Video {
            let codec = video_codec(params.spec().codec);
            if codec.is_some_and(|c| starts_keyframe(c, &packet.payload)) {
                if let Some((_, h)) = vp8_keyframe_size(&packet.payload) {
                    if let Some(stat) = published.layers.get_mut(layer) {
                        stat.height = Some(u32::from(h));
                    }
                }
                let switched = self.table.keyframe(&key, layer);
                if !switched.is_empty() {
                    self.layers_changed = true;
                }
                for action in switched {
                    if let Action::Switched {
                        subscriber,
                        layer: Some(l),
                        ..
                    } = action
                    {
                        debug!(%subscriber, publisher, layer = l, "layer switched");
                    }
                }
            }
            if newly_active {
                for p in self.peers.values_mut() {
                    p.reselect = true;
                }
            }
        }
        if !self.taps.is_empty()
            && (kind != MediaKind::Video || self.table.current(RECORDER, &key) == Some(layer))
        {
            self.record(&key, layer, packet, &params, now);
        }
        let out = Forwarded {
            key: &key,
            layer,
            packet,
            params: &params,
            ext: ExtensionValues {
                audio_level: packet.header.ext_vals.audio_level,
                voice_activity: packet.header.ext_vals.voice_activity,
                video_orientation: packet.header.ext_vals.video_orientation,
                ..Default::default()
            },
            nackable: kind == MediaKind::Video,
            now,
        };
        // who gets it: video by the forwarding table, audio everyone else (no list is built:
        // this runs for every packet)
        let Self {
            peers,
            table,
            counts,
            ..
        } = self;
        let sent = match kind {
            MediaKind::Video => table
                .receivers(&key, layer)
                .filter(|sub| peers.get_mut(*sub).is_some_and(|peer| out.write_to(peer)))
                .count(),
            _ => peers
                .iter_mut()
                .filter(|(id, _)| id.as_str() != publisher)
                .map(|(_, peer)| out.write_to(peer))
                .filter(|&written| written)
                .count(),
        };
        counts.forwarded_packets += sent as u64;
        counts.forwarded_bytes += (sent * packet.payload.len()) as u64;
    }
}
