//! What signaling hands the SFU's loop ([`Command`]): offers (a new peer connection or a
//! renegotiation), answers, trickled candidates, subscription needs, leaving and taps.

use std::net::SocketAddr;
use std::time::Instant;

use serde_json::Value;
use str0m::Candidate;
use tracing::{debug, info, warn};

use super::media::RoomMedia;
use super::peer::Peer;
use super::router::Router;
use super::{Command, SFU_ID};
use crate::signal::ServerMessage;

impl Router {
    pub(super) fn command(&mut self, command: Command, now: Instant) {
        let room = match &command {
            Command::Offer { room, .. }
            | Command::Answer { room, .. }
            | Command::Candidate { room, .. }
            | Command::Subscribe { room, .. }
            | Command::Leave { room, .. }
            | Command::Tap { room, .. } => room.clone(),
        };
        self.apply(command, now);
        if let Some(media) = self.rooms.get_mut(&room) {
            media.set_taps(self.taps.get(&room).cloned().unwrap_or_default());
            media.touch_all();
        }
    }

    fn apply(&mut self, command: Command, now: Instant) {
        match command {
            Command::Offer {
                room,
                participant,
                sdp,
            } => {
                let media = self
                    .rooms
                    .entry(room.clone())
                    .or_insert_with(|| RoomMedia::new(&room));
                let answer = match media.peers.get_mut(&participant) {
                    Some(peer) if peer.same_connection(&sdp) => {
                        debug!(%room, %participant, "renegotiation offer from the peer");
                        peer.accept_offer(&sdp)
                    }
                    _ => {
                        if let Some(old) = media.disconnect(&participant) {
                            for a in &old.addrs {
                                self.demux.remove(a);
                            }
                            info!(%room, %participant, "new peer connection replaces the old one");
                        }
                        let port = self.ports.take();
                        let on_port = |a: &SocketAddr| Some(a.port()) == port;
                        let local: Vec<SocketAddr> =
                            self.wire.local.iter().copied().filter(on_port).collect();
                        let reflexive: Vec<(SocketAddr, SocketAddr)> = (self.wire.reflexive)
                            .iter()
                            .copied()
                            .filter(|(_, base)| on_port(base))
                            .collect();
                        match Peer::accept(&participant, &sdp, &local, &reflexive, self.tcp, now) {
                            Ok((mut peer, answer)) => {
                                media.outputs_for(&mut peer);
                                media.peers.insert(participant.clone(), peer);
                                info!(%room, %participant, port, "peer connecting to the SFU");
                                Ok(answer)
                            }
                            Err(e) => Err(e),
                        }
                    }
                };
                match answer {
                    Ok(sdp) => self.signal(
                        &room,
                        &participant,
                        ServerMessage::Answer {
                            from: SFU_ID.into(),
                            sdp,
                        },
                    ),
                    Err(e) => {
                        warn!(%room, %participant, "offer refused: {e}");
                        self.signal(
                            &room,
                            &participant,
                            ServerMessage::error("bad_sdp", e.to_string()),
                        );
                    }
                }
            }
            Command::Answer {
                room,
                participant,
                sdp,
            } => {
                let result = self
                    .rooms
                    .get_mut(&room)
                    .and_then(|m| m.peers.get_mut(&participant))
                    .map(|p| p.accept_answer(&sdp));
                if let Some(Err(e)) = result {
                    warn!(%room, %participant, "answer refused: {e}");
                    self.signal(
                        &room,
                        &participant,
                        ServerMessage::error("bad_sdp", e.to_string()),
                    );
                }
            }
            Command::Candidate {
                room,
                participant,
                candidate,
            } => {
                let Some(line) = candidate.get("candidate").and_then(Value::as_str) else {
                    return; // end of candidates
                };
                let line = line.trim().trim_start_matches("a=");
                match Candidate::from_sdp_string(line) {
                    Ok(c) => {
                        if let Some(p) = self
                            .rooms
                            .get_mut(&room)
                            .and_then(|m| m.peers.get_mut(&participant))
                        {
                            p.rtc.add_remote_candidate(c);
                        }
                    }
                    // mDNS (.local) host candidates and the like: ICE finds the address from
                    // the client's own checks (peer-reflexive)
                    Err(e) => debug!(%room, %participant, "candidate ignored: {e}"),
                }
            }
            Command::Subscribe {
                room,
                subscriber,
                publisher,
                need,
            } => {
                self.rooms
                    .entry(room.clone())
                    .or_insert_with(|| RoomMedia::new(&room))
                    .set_need(&subscriber, &publisher, need);
            }
            Command::Leave { room, participant } => self.leave(&room, &participant),
            Command::Tap { room, purpose, tap } => {
                let taps = self.taps.entry(room.clone()).or_default();
                match tap {
                    Some(tap) => {
                        info!(%room, ?purpose, tap = ?tap, "tapping the room's tracks");
                        taps.insert(purpose, tap);
                    }
                    None => {
                        info!(%room, ?purpose, "tap removed");
                        taps.remove(&purpose);
                    }
                }
                if taps.is_empty() {
                    self.taps.remove(&room);
                }
            }
        }
    }

    fn leave(&mut self, room: &str, participant: &str) {
        let Some(media) = self.rooms.get_mut(room) else {
            return;
        };
        if let Some(peer) = media.remove(participant) {
            for a in &peer.addrs {
                self.demux.remove(a);
            }
            info!(%room, %participant, "peer left the SFU");
        }
        self.registry.remove_labelled("participant", participant);
        if media.peers.is_empty() {
            self.rooms.remove(room);
            self.switches.remove(room);
        }
    }
}
