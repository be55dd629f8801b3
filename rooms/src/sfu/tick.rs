//! The SFU loop's once-a-second pass: each room's counts, the active speaker, and the metrics.

use std::time::Instant;

use tracing::debug;

use super::router::Router;
use super::Signal;
use crate::signal::ServerMessage;

impl Router {
    pub(super) fn second(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_second);
        self.last_second = now;
        let mut peers = 0;
        for (name, media) in self.rooms.iter_mut() {
            media.second(elapsed, now);
            media.touch_all();
            if let Some(speaker) = media.speakers.decide(now) {
                debug!(room = %name, %speaker, "active speaker");
                media.tap_speaker(&speaker);
                for id in media.peers.keys() {
                    let _ = self.signals.send(Signal {
                        room: name.clone(),
                        to: id.clone(),
                        message: ServerMessage::ActiveSpeaker {
                            participant: speaker.clone(),
                        },
                    });
                }
            }
            peers += media.peers.len();
            let c = std::mem::take(&mut media.counts);
            let r = &self.registry;
            r.counter(
                "tidecast_sfu_forwarded_packets_total",
                "RTP packets the SFU forwarded to subscribers.",
                &[],
            )
            .add(c.forwarded_packets as i64);
            r.counter(
                "tidecast_sfu_forwarded_bytes_total",
                "RTP payload bytes the SFU forwarded to subscribers.",
                &[],
            )
            .add(c.forwarded_bytes as i64);
            r.counter(
                "tidecast_sfu_received_packets_total",
                "RTP packets the SFU received from publishers.",
                &[],
            )
            .add(c.received_packets as i64);
            r.counter(
                "tidecast_sfu_estimator_restarts_total",
                "Subscribers' bandwidth estimators restarted to probe for a layer held back by it.",
                &[],
            )
            .add(c.estimator_restarts as i64);
            let lost = "RTP packets lost: from_publishers, gaps in what publishers sent the SFU; \
                        to_subscribers, what subscribers report missing (RTCP receiver reports).";
            r.counter(
                "tidecast_sfu_lost_packets_total",
                lost,
                &[("direction", "from_publishers")],
            )
            .add(c.lost_from_publishers as i64);
            r.counter(
                "tidecast_sfu_lost_packets_total",
                lost,
                &[("direction", "to_subscribers")],
            )
            .add(c.lost_to_subscribers as i64);
            let total = media.table.switches();
            let before = self.switches.insert(name.clone(), total).unwrap_or(0);
            r.counter(
                "tidecast_sfu_layer_switches_total",
                "Simulcast layer switches (start, change or stop of a forwarded layer).",
                &[],
            )
            .add(total.saturating_sub(before) as i64);
            for (id, peer) in &media.peers {
                r.gauge(
                    "tidecast_sfu_estimated_bandwidth_bps",
                    "Bandwidth estimate towards a subscriber (TWCC + GCC).",
                    &[("room", name), ("participant", id)],
                )
                .set(peer.estimate_bps as i64);
            }
        }
        self.registry
            .gauge("tidecast_sfu_peers", "Peer connections to the SFU.", &[])
            .set(peers as i64);
    }
}
