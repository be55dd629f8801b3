//! The SFU's loop: one task owns the media sockets and every room's peers. Datagrams are
//! demultiplexed to their peer's `str0m::Rtc` (by source address, or ICE credentials for a new
//! one); each peer is polled until it waits, its RTP forwarded to the subscribers' outputs
//! ([`RoomMedia::forward`]), which are polled in turn; what they send goes out in one batch per
//! pass ([`Wire::flush`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::bwe::BweKind;
use str0m::media::Direction;
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output};
use tidecast_common::metrics::Registry;
use tokio::sync::mpsc;
use tracing::{debug, debug_span, info, warn};

use super::media::RoomMedia;
use super::sockets::{recv_any, recv_batch, PortTurns, Wire};
use super::{tcp, Command, Signal, SFU_ID};
use crate::signal::ServerMessage;

pub(super) struct Router {
    pub(super) wire: Wire,
    /// ICE-TCP on
    pub(super) tcp: bool,
    pub(super) rooms: HashMap<String, RoomMedia>,
    /// remote address → (room, participant)
    pub(super) demux: HashMap<SocketAddr, (String, String)>,
    pub(super) signals: mpsc::UnboundedSender<Signal>,
    pub(super) registry: Registry,
    pub(super) last_second: Instant,
    /// layer switches reported so far, per room
    pub(super) switches: HashMap<String, u64>,
    /// which media port the next peer connection gets
    pub(super) ports: PortTurns,
    /// rooms being recorded (kept while a room has no peers)
    pub(super) taps: HashMap<String, BTreeMap<crate::tap::TapPurpose, crate::tap::Tap>>,
}

pub(super) fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(3600)
}

impl Router {
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut tcp_events: mpsc::Receiver<tcp::TcpEvent>,
    ) {
        let mut batch = recv_batch();
        // the socket looked at first for datagrams (the one after the last that had some)
        let mut from = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // one timer, moved when the deadline does (a new one per pass would be a timer-wheel
        // insert and removal on every wake-up)
        let sleep = tokio::time::sleep_until(far_future(Instant::now()).into());
        tokio::pin!(sleep);
        let sockets = self.wire.sockets.clone();
        loop {
            let deadline = tokio::time::Instant::from(self.drive(Instant::now()));
            self.wire.flush();
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            // in this order (no random start): the rare branches first, so a busy socket
            // cannot starve them
            tokio::select! {
                biased;
                c = commands.recv() => match c {
                    Some(c) => self.command(c, Instant::now()),
                    None => return,
                },
                _ = tick.tick() => self.second(Instant::now()),
                _ = &mut sleep => {}
                r = recv_any(&sockets, from, &mut batch) => match r {
                    // what was queued, in one call: one drive for a burst rather than one per
                    // datagram
                    Ok(i) => {
                        from = i + 1;
                        let now = Instant::now();
                        for (data, source) in batch.datagrams() {
                            self.receive(Protocol::Udp, source, self.wire.local[i], data, now);
                        }
                    }
                    Err(e) => debug!("SFU socket: {e}"),
                },
                Some(e) = tcp_events.recv() => match e {
                    tcp::TcpEvent::Opened { local, remote, writer } => {
                        self.wire.tcp_conns.insert((local, remote), writer);
                    }
                    tcp::TcpEvent::Frame { local, remote, data } => {
                        self.receive(Protocol::Tcp, remote, local, &data, Instant::now());
                    }
                    tcp::TcpEvent::Closed { local, remote } => {
                        self.wire.tcp_conns.remove(&(local, remote));
                    }
                },
            }
        }
    }

    pub(super) fn signal(&self, room: &str, to: &str, message: ServerMessage) {
        let _ = self.signals.send(Signal {
            room: room.to_string(),
            to: to.to_string(),
            message,
        });
    }

    pub(super) fn receive(
        &mut self,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
        now: Instant,
    ) {
        let Ok(contents) = data.try_into() else {
            return; // not STUN, DTLS or (S)RTP
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        if let Some((room, id)) = self.demux.get(&source) {
            if let Some(peer) = self.rooms.get_mut(room).and_then(|m| m.peers.get_mut(id)) {
                if peer.rtc.accepts(&input) {
                    if let Err(e) = peer_span(room, id).in_scope(|| peer.rtc.handle_input(input)) {
                        debug!("input refused: {e}");
                    }
                    let (room, id) = (room.clone(), id.clone());
                    self.drain_one(&room, &id, now);
                    return;
                }
            }
        }
        for (room, media) in self.rooms.iter_mut() {
            for (id, peer) in media.peers.iter_mut() {
                if peer.rtc.accepts(&input) {
                    self.demux.insert(source, (room.clone(), id.clone()));
                    peer.addrs.push(source);
                    if let Err(e) = peer_span(room, id).in_scope(|| peer.rtc.handle_input(input)) {
                        debug!("input refused: {e}");
                    }
                    let (room, id) = (room.clone(), id.clone());
                    self.drain_one(&room, &id, now);
                    return;
                }
            }
        }
        debug!(%source, "datagram for no peer");
    }

    /// Feed time, offers and selections in; carry outputs out until every peer waits.
    pub(super) fn drive(&mut self, now: Instant) -> Instant {
        let mut next = far_future(now);
        let mut dead: Vec<(String, String)> = Vec::new();
        for (name, media) in self.rooms.iter_mut() {
            media.reselect(now);
            for (publisher, mid, keep) in media.layer_updates() {
                debug!(room = %name, %publisher, %mid, ?keep, "simulcast layers to send");
                let _ = self.signals.send(Signal {
                    room: name.clone(),
                    to: publisher,
                    message: ServerMessage::Layers {
                        mid: mid.to_string(),
                        active: keep.iter().map(|r| r.to_string()).collect(),
                    },
                });
            }
            let due: Vec<String> = media
                .peers
                .iter()
                .filter(|(_, p)| p.wake <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for id in &due {
                if let Some(peer) = media.peers.get_mut(id) {
                    let timeout = Input::Timeout(now);
                    if let Err(e) = peer_span(name, id).in_scope(|| peer.rtc.handle_input(timeout))
                    {
                        debug!("timeout: {e}");
                    }
                    drain(name, media, id, &self.wire, now, &mut dead);
                }
            }
            // poll what was fed; forwarding feeds other peers, which are polled next round; a
            // drained peer with track changes gets an offer (itself a change to poll)
            for _ in 0..64 {
                let ids: Vec<String> = media
                    .peers
                    .iter()
                    .filter(|(_, p)| p.dirty)
                    .map(|(k, _)| k.clone())
                    .collect();
                if ids.is_empty() {
                    break;
                }
                for id in &ids {
                    drain(name, media, id, &self.wire, now, &mut dead);
                    let Some(peer) = media.peers.get_mut(id) else {
                        continue;
                    };
                    if let Some(sdp) = peer.negotiate() {
                        peer.dirty = true;
                        let _ = self.signals.send(Signal {
                            room: name.clone(),
                            to: id.clone(),
                            message: ServerMessage::Offer {
                                from: SFU_ID.into(),
                                sdp,
                            },
                        });
                    }
                }
            }
            for peer in media.peers.values() {
                next = next.min(peer.wake);
            }
        }
        for (room, id) in dead {
            self.lost(&room, &id);
        }
        next
    }

    /// Poll peer `id` until it waits (str0m wants that after each input); what its events feed
    /// into other peers is polled by the next `drive`.
    pub(super) fn drain_one(&mut self, room: &str, id: &str, now: Instant) {
        let mut dead = Vec::new();
        if let Some(media) = self.rooms.get_mut(room) {
            drain(room, media, id, &self.wire, now, &mut dead);
        }
        for (room, id) in dead {
            self.lost(&room, &id);
        }
    }

    pub(super) fn lost(&mut self, room: &str, id: &str) {
        self.signal(
            room,
            id,
            ServerMessage::error("media_disconnected", "the SFU lost this peer connection"),
        );
        self.leave_peer_only(room, id);
    }

    /// A peer connection ended but the participant is still in the room (it may offer again).
    pub(super) fn leave_peer_only(&mut self, room: &str, id: &str) {
        if let Some(media) = self.rooms.get_mut(room) {
            if let Some(peer) = media.disconnect(id) {
                for a in &peer.addrs {
                    self.demux.remove(a);
                }
                info!(%room, participant = %id, "peer connection closed");
            }
        }
    }
}

/// Timeouts due at once that one [`drain`] feeds before it leaves the rest to the loop (a
/// bound: a peer that keeps asking for time now cannot hold the loop).
const MAX_IMMEDIATE_TIMEOUTS: u32 = 256;

/// The span str0m's own logs (estimator, pacer, ICE) about peer `id` of `room` run in, so they
/// say whom they are about.
pub(super) fn peer_span(room: &str, id: &str) -> tracing::Span {
    debug_span!("peer", %room, participant = %id)
}

/// Poll peer `id` of `room` until it returns a timeout in the future: datagrams go out on
/// `wire`, events are handled, a failed or closed peer is added to `dead`.
fn drain(
    room: &str,
    media: &mut RoomMedia,
    id: &str,
    wire: &Wire,
    now: Instant,
    dead: &mut Vec<(String, String)>,
) {
    let _span = peer_span(room, id).entered();
    // cleared first: an event below may ask for more (a connection up wants an offer)
    if let Some(peer) = media.peers.get_mut(id) {
        peer.dirty = false;
    }
    let mut immediate = 0;
    while let Some(peer) = media.peers.get_mut(id) {
        if !peer.rtc.is_alive() {
            dead.push((room.to_string(), id.to_string()));
            return;
        }
        match peer.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                // the pacer asks for time again right after each packet it lets out (a
                // microsecond on): feed it here rather than through a pass of the loop, whose
                // timer cannot wait less than a millisecond, so a burst goes out in one go
                let fresh = Instant::now();
                if t <= fresh && immediate < MAX_IMMEDIATE_TIMEOUTS {
                    immediate += 1;
                    if let Err(e) = peer.rtc.handle_input(Input::Timeout(fresh)) {
                        debug!(%room, participant = %id, "timeout: {e}");
                    }
                    continue;
                }
                peer.wake = t;
                return;
            }
            Ok(Output::Transmit(t)) => wire.send(&t),
            Ok(Output::Event(e)) => handle_event(room, media, id, e, now, dead),
            Err(e) => {
                warn!(%room, participant = %id, "peer failed: {e}");
                dead.push((room.to_string(), id.to_string()));
                return;
            }
        }
    }
}

/// One event of peer `id`. What it feeds into other peers marks them dirty.
fn handle_event(
    room: &str,
    media: &mut RoomMedia,
    id: &str,
    event: Event,
    now: Instant,
    dead: &mut Vec<(String, String)>,
) {
    match event {
        Event::RtpPacket(p) => {
            media.forward(id, &p, now);
        }
        Event::MediaAdded(m)
            if m.direction == Direction::RecvOnly || m.direction == Direction::SendRecv =>
        {
            let rids: Vec<_> = m
                .simulcast
                .map(|s| {
                    let layers = if s.send.is_empty() { s.recv } else { s.send };
                    layers.into_iter().map(|l| l.rid).collect()
                })
                .unwrap_or_default();
            media.track_added(id, m.mid, m.kind, &rids);
        }
        Event::KeyframeRequest(r) => {
            media.keyframe_wanted(id, r.mid, now);
        }
        Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
            if let Some(peer) = media.peers.get_mut(id) {
                if estimate.as_u64().abs_diff(peer.estimate_bps) > peer.estimate_bps / 10 {
                    debug!(%room, participant = %id, bps = estimate.as_u64(), "bandwidth estimate");
                }
                peer.estimate_bps = estimate.as_u64();
                if peer.budget.estimate(peer.estimate_bps, now) {
                    peer.reselect = true;
                }
            }
        }
        Event::MediaEgressStats(stats) => {
            if let (Some(peer), Some(remote)) = (media.peers.get_mut(id), stats.remote) {
                let lost = peer.lost_reported(stats.mid, remote.packets_lost);
                if lost > 0 {
                    debug!(%room, participant = %id, mid = %stats.mid, lost, "subscriber reports loss");
                }
                media.counts.lost_to_subscribers += lost;
            }
        }
        Event::Connected => {
            info!(%room, participant = %id, "peer connected to the SFU");
            // it may be offered the others' tracks now
            if let Some(peer) = media.peers.get_mut(id) {
                peer.dirty = true;
            }
        }
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
            dead.push((room.to_string(), id.to_string()));
        }
        _ => {}
    }
}
