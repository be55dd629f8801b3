//! A room's taps (recording, restreaming): the `RECORDER` place in the forwarding table (the
//! best layer of every video), keyframes when a tap starts, and each tapped packet on one
//! continuous RTP stream per track.

use std::collections::BTreeMap;
use std::time::Instant;

use str0m::format::{Codec, PayloadParams};
use str0m::media::MediaKind;
use str0m::rtp::RtpPacket;

use super::media::RoomMedia;
use crate::forwarding::{LayerInfo, RtpRewriter, TrackKey};
use crate::recording::index::RecordedCodec;
use crate::tap::{Tap, TapPurpose, TappedPacket};

/// The recorder's place in the forwarding table: a subscriber to the best layer of every video
/// (not a valid identity, so no participant can have it).
pub const RECORDER: &str = "\u{1}recorder";

impl RoomMedia {
    /// Where the room's packets go besides its subscribers (the recorder, the restreamer).
    pub fn set_taps(&mut self, taps: BTreeMap<TapPurpose, Tap>) {
        let same = taps.len() == self.taps.len()
            && taps
                .iter()
                .all(|(p, t)| self.taps.get(p).is_some_and(|o| o.same(t)));
        if same {
            return;
        }
        let now = Instant::now();
        if taps.is_empty() {
            self.table.remove_participant(RECORDER);
            self.layers_changed = true;
            self.recorded.clear();
        }
        self.taps = taps;
        self.select_recorded(now);
        // a new tap starts on a keyframe of every video
        self.request_tapped_keyframes(now);
    }

    /// Ask for a keyframe of every layer the taps take.
    pub(super) fn request_tapped_keyframes(&mut self, now: Instant) {
        let tapped: Vec<(TrackKey, usize)> = self
            .published
            .keys()
            .filter_map(|k| Some((k.clone(), self.table.current(RECORDER, k)?)))
            .collect();
        for (track, layer) in tapped {
            self.request_keyframe(&track, layer, now);
        }
    }

    /// Tell the taps who speaks.
    pub fn tap_speaker(&self, participant: &str) {
        for tap in self.taps.values() {
            tap.active_speaker(participant);
        }
    }

    /// The recorder takes the best layer each video has (a paused one resumes for it).
    pub(super) fn select_recorded(&mut self, now: Instant) {
        if self.taps.is_empty() {
            return;
        }
        let chosen: BTreeMap<TrackKey, Option<usize>> = self
            .published
            .iter()
            .filter(|(_, p)| p.kind == MediaKind::Video)
            .map(|(k, p)| {
                let infos = p.infos(now);
                let best = infos
                    .iter()
                    .rposition(|l| l.bitrate_bps != LayerInfo::UNAVAILABLE);
                (
                    k.clone(),
                    Some(best.unwrap_or(infos.len().saturating_sub(1))),
                )
            })
            .collect();
        self.select(RECORDER, &chosen, now);
    }

    /// A packet of a recorded track to the recorder, on the track's continuous stream.
    pub(super) fn record(
        &mut self,
        key: &TrackKey,
        layer: usize,
        packet: &RtpPacket,
        params: &PayloadParams,
        now: Instant,
    ) {
        if self.taps.is_empty() {
            return;
        }
        let spec = params.spec();
        let codec = match spec.codec {
            Codec::Vp8 => RecordedCodec::Vp8,
            Codec::H264 => RecordedCodec::H264,
            Codec::Opus => RecordedCodec::Opus,
            _ => return,
        };
        let clock_rate = spec.clock_rate.get();
        let rewriter = self
            .recorded
            .entry(key.clone())
            .or_insert_with(|| RtpRewriter::new(clock_rate));
        let (seq, timestamp) = rewriter.rewrite(
            layer,
            packet.header.sequence_number,
            packet.header.timestamp,
            now,
        );
        let kind = if codec == RecordedCodec::Opus {
            "audio"
        } else {
            "video"
        };
        let tapped = TappedPacket {
            publisher: key.publisher.clone(),
            track: format!("{kind}-{}", key.track),
            codec,
            pt: *params.pt(),
            clock_rate,
            seq,
            timestamp,
            marker: packet.header.marker,
            payload: packet.payload.clone(),
        };
        for tap in self.taps.values() {
            tap.send(tapped.clone());
        }
    }
}
