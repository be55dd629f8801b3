//! Counting what arrives on a peer connection's remote tracks, and whose they are.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::{debug, warn};
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;

use crate::participant::{lock, Stats};
use crate::report::TrackStats;

/// Who published a received track.
#[derive(Clone)]
pub(crate) enum TrackNames {
    /// the msid stream id (tidecast's SFU names the publisher there)
    StreamId,
    /// a name looked up by the transceiver's mid (Janus)
    ByMid(Arc<Mutex<BTreeMap<String, String>>>),
    /// the one other side of a peer-to-peer call
    Peer(String),
}

/// Count what arrives on `pc`'s remote tracks into `stats`.
pub(crate) fn watch_tracks(
    pc: &RTCPeerConnection,
    stats: Stats,
    started: Instant,
    names: TrackNames,
) {
    pc.on_track(Box::new(move |track, _receiver, transceiver| {
        let stats = stats.clone();
        let names = names.clone();
        Box::pin(async move {
            let publisher = match &names {
                TrackNames::ByMid(n) => {
                    let mid = transceiver.mid().map(|m| m.to_string()).unwrap_or_default();
                    lock(n).get(&mid).cloned().unwrap_or(mid)
                }
                TrackNames::StreamId => track.stream_id(),
                TrackNames::Peer(id) => id.clone(),
            };
            let kind = match track.kind() {
                RTPCodecType::Audio => "audio",
                _ => "video",
            };
            debug!(%publisher, kind, "track received");
            let key = (publisher.clone(), kind.to_string());
            let ssrc = track.ssrc();
            let again = lock(&stats)
                .insert(
                    key.clone(),
                    TrackStats::new(&publisher, kind, ssrc, started, Instant::now()),
                )
                .is_some();
            if again {
                warn!(%publisher, kind, ssrc = track.ssrc(), "track received again");
            }
            tokio::spawn(async move {
                let ended = loop {
                    match track.read_rtp().await {
                        Ok((packet, _)) => {
                            // a track replaced under the same key (the room moved from
                            // peer-to-peer to the SFU) no longer counts into it
                            if let Some(s) = lock(&stats).get_mut(&key).filter(|s| s.is_of(ssrc)) {
                                s.packet(
                                    packet.header.sequence_number,
                                    packet.header.marker,
                                    &packet.payload,
                                    Instant::now(),
                                );
                            }
                        }
                        Err(e) => break e,
                    }
                };
                debug!(%publisher, kind, "track ended: {ended}");
            });
        })
    }));
}
