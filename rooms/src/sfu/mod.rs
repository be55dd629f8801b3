//! The selective forwarding unit: group calls (three participants and more) send their media
//! to tidecast, which forwards each subscriber the simulcast layer its layout and bandwidth
//! allow. One UDP port serves every peer (packets are demultiplexed by ICE credentials and
//! then by source address, like LiveKit's single-port mode); each peer is a `str0m::Rtc` in
//! RTP mode, so packets are forwarded as they are, with sequence numbers and timestamps
//! rewritten per subscriber ([`crate::forwarding::RtpRewriter`]).
//!
//! * [`peer`]: one participant's `Rtc` and its SDP negotiation.
//! * [`media`]: one room's peers, published tracks and forwarding table.
//! * [`codec`]: keyframe detection on payloads.
//! * [`speaker`]: the active speaker from audio levels.
//! * `stun`: the sockets' public addresses from a STUN server, at start.
//! * [`tcp`]: ICE-TCP connections (passive candidates on the same port) for UDP-blocked clients.
//! * this module: the handle signaling talks to and the loop that owns the sockets.
//!
//! The loop is a single task: commands from signaling, datagrams and timers in; datagrams and
//! [`Signal`]s (SDP for a participant) out.

pub mod codec;
pub mod media;
pub mod peer;
pub mod speaker;
mod stun;
pub mod tcp;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use serde_json::Value;
use str0m::bwe::BweKind;
use str0m::media::Direction;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output};
use tidecast_common::metrics::Registry;
use tidecast_common::udp_batch::SendBatch;
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, debug_span, info, warn};

use crate::forwarding::Need;
use crate::signal::ServerMessage;
use media::RoomMedia;
use peer::Peer;

/// The participant id the SFU signals as (`to`/`from` of its SDP messages).
pub const SFU_ID: &str = "sfu";

/// Errors of the SFU's inputs.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    /// An SDP or candidate that does not parse or negotiate.
    #[error("SDP: {0}")]
    Sdp(String),
}

/// Where the SFU listens.
#[derive(Debug, Clone)]
pub struct SfuSettings {
    /// UDP port (0: any free one).
    pub port: u16,
    /// A range of ports instead (`rooms.media_ports`): every port of it is bound on every
    /// address, and each new peer connection is given the next one in turn.
    pub port_range: Option<std::ops::RangeInclusive<u16>>,
    /// Addresses to bind and announce as host candidates.
    pub addresses: Vec<IpAddr>,
    /// Also accept ICE-TCP on the same port (passive TCP candidates).
    pub tcp: bool,
    /// STUN server to learn the sockets' public addresses from (`host:port`).
    pub stun_server: Option<String>,
}

/// From signaling to the SFU.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// The participant's SDP offer (its first, or a renegotiation).
    Offer {
        /// Room.
        room: String,
        /// Participant.
        participant: String,
        /// SDP.
        sdp: String,
    },
    /// The participant's answer to the SFU's offer.
    Answer {
        /// Room.
        room: String,
        /// Participant.
        participant: String,
        /// SDP.
        sdp: String,
    },
    /// A trickled candidate of the participant.
    Candidate {
        /// Room.
        room: String,
        /// Participant.
        participant: String,
        /// `RTCIceCandidateInit` (or null).
        candidate: Value,
    },
    /// What `subscriber`'s layout needs of `publisher`'s video.
    Subscribe {
        /// Room.
        room: String,
        /// Who receives.
        subscriber: String,
        /// Whose video.
        publisher: String,
        /// The need.
        need: Need,
    },
    /// The participant left the room.
    Leave {
        /// Room.
        room: String,
        /// Participant.
        participant: String,
    },
    /// Tap the room's tracks for `purpose` into `tap` from now on (`None`: stop).
    Tap {
        /// Room.
        room: String,
        /// Recording or restreaming.
        purpose: crate::tap::TapPurpose,
        /// Where its packets go.
        tap: Option<crate::tap::Tap>,
    },
}

/// From the SFU to one participant (through its signaling socket).
#[derive(Debug)]
pub struct Signal {
    /// Room.
    pub room: String,
    /// Participant.
    pub to: String,
    /// The message.
    pub message: ServerMessage,
}

/// The media sockets: UDP on the port of `settings` on every address, and ICE-TCP listeners on
/// the same port. With port 0 the kernel picks the UDP port, and that number may already be
/// taken for TCP (by any connection's local end): then everything is let go and bound again on a
/// new port, a few times.
fn bind_media(
    settings: &SfuSettings,
) -> std::io::Result<(Vec<std::net::UdpSocket>, Vec<std::net::TcpListener>)> {
    let attempts = if settings.port == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        match bind_media_once(settings) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            done => return done,
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no media port")))
}

fn bind_media_once(
    settings: &SfuSettings,
) -> std::io::Result<(Vec<std::net::UdpSocket>, Vec<std::net::TcpListener>)> {
    let mut sockets = Vec::new();
    let mut tcp_listeners = Vec::new();
    let ports: Vec<u16> = match &settings.port_range {
        Some(range) => range.clone().collect(),
        None => vec![settings.port],
    };
    for wanted in ports {
        let mut port = wanted;
        for ip in &settings.addresses {
            let socket = std::net::UdpSocket::bind(SocketAddr::new(*ip, port))?;
            socket.set_nonblocking(true)?;
            tidecast_common::udp_batch::large_buffers(&socket);
            port = socket.local_addr()?.port();
            if settings.tcp {
                let listener = std::net::TcpListener::bind(SocketAddr::new(*ip, port))?;
                listener.set_nonblocking(true)?;
                tcp_listeners.push(listener);
            }
            sockets.push(socket);
        }
    }
    Ok((sockets, tcp_listeners))
}

/// The media ports in the order peers are given them, and the next one's index.
#[derive(Debug, Default)]
struct PortTurns {
    ports: Vec<u16>,
    next: usize,
}

impl PortTurns {
    fn new(local: &[SocketAddr]) -> PortTurns {
        let mut ports: Vec<u16> = Vec::new();
        for a in local {
            if !ports.contains(&a.port()) {
                ports.push(a.port());
            }
        }
        PortTurns { ports, next: 0 }
    }

    /// The port for the next peer connection (one port: always it).
    fn take(&mut self) -> Option<u16> {
        let port = self.ports.get(self.next % self.ports.len().max(1)).copied();
        self.next = self.next.wrapping_add(1);
        port
    }
}

/// The handle signaling holds.
#[derive(Debug, Clone)]
pub struct Sfu {
    commands: mpsc::UnboundedSender<Command>,
    addrs: Arc<Vec<SocketAddr>>,
}

impl Sfu {
    /// Bind the media sockets and start the loop (inside a tokio runtime). Signals for
    /// participants come out of the returned receiver.
    pub fn start(
        settings: &SfuSettings,
        registry: &Registry,
    ) -> std::io::Result<(Sfu, mpsc::UnboundedReceiver<Signal>)> {
        let (sockets, tcp_listeners) = bind_media(settings)?;
        let tcp_listeners = tcp_listeners
            .into_iter()
            .map(tokio::net::TcpListener::from_std)
            .collect::<std::io::Result<Vec<_>>>()?;
        if sockets.is_empty() {
            return Err(std::io::Error::other("the SFU has no address to listen on"));
        }
        let addrs: Vec<SocketAddr> = sockets.iter().filter_map(|s| s.local_addr().ok()).collect();
        info!(
            ?addrs,
            tcp = settings.tcp,
            "SFU media listening (UDP, ICE-TCP)"
        );
        let (tcp_tx, tcp_rx) = mpsc::channel(4096);
        for l in tcp_listeners {
            tokio::spawn(tcp::accept(l, tcp_tx.clone()));
        }
        let (commands, rx) = mpsc::unbounded_channel();
        let (signals, signal_rx) = mpsc::unbounded_channel();
        let (registry, tcp) = (registry.clone(), settings.tcp);
        let stun_server = settings.stun_server.clone();
        let local = addrs.clone();
        // the media loop has a thread and a runtime of its own: its sockets, timers and peers
        // are polled there without waking other threads for each datagram
        tidecast_common::own_thread::spawn("sfu-media", move || async move {
            let sockets = sockets
                .into_iter()
                .map(UdpSocket::from_std)
                .collect::<std::io::Result<Vec<_>>>()?;
            let mut reflexive = Vec::new();
            if let Some(server) = &stun_server {
                // all sockets at once: a range of ports must not wait for each in turn
                let asked = sockets.iter().map(|socket| stun::reflexive(socket, server));
                reflexive = futures_util::future::join_all(asked)
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
            }
            let ports = PortTurns::new(&local);
            let router = Router {
                wire: Wire {
                    batches: sockets.iter().map(|_| RefCell::default()).collect(),
                    reflexive,
                    sockets: Arc::from(sockets),
                    local,
                    tcp_conns: HashMap::new(),
                },
                tcp,
                rooms: HashMap::new(),
                demux: HashMap::new(),
                signals,
                registry,
                last_second: Instant::now(),
                switches: HashMap::new(),
                ports,
                taps: HashMap::new(),
            };
            Ok(((), router.run(rx, tcp_rx)))
        })?;
        Ok((
            Sfu {
                commands,
                addrs: Arc::new(addrs),
            },
            signal_rx,
        ))
    }

    /// Hand a command to the loop.
    pub fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    /// The media sockets' addresses.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

/// Where peers' datagrams go out: the UDP sockets and the ICE-TCP connections.
struct Wire {
    sockets: Arc<[UdpSocket]>,
    /// the sockets' addresses, by index
    local: Vec<SocketAddr>,
    /// (local, remote) → the connection's writer
    tcp_conns: HashMap<(SocketAddr, SocketAddr), mpsc::Sender<bytes::Bytes>>,
    /// UDP datagrams of this pass of the loop, by socket index, sent together by [`Wire::flush`]
    batches: Vec<RefCell<SendBatch>>,
    /// (public address STUN reported, socket address) where they differ
    reflexive: Vec<(SocketAddr, SocketAddr)>,
}

impl Wire {
    fn send(&self, t: &str0m::net::Transmit) {
        if t.proto == Protocol::Tcp {
            if let Some(w) = self.tcp_conns.get(&(t.source, t.destination)) {
                // a full queue drops the packet, as UDP would
                let _ = w.try_send(bytes::Bytes::copy_from_slice(&t.contents));
            }
        } else if let Some(i) = self.local.iter().position(|a| *a == t.source) {
            self.batches[i]
                .borrow_mut()
                .push(t.destination, &t.contents);
        }
    }

    /// Send the datagrams queued since the last flush.
    fn flush(&self) {
        for (socket, batch) in self.sockets.iter().zip(&self.batches) {
            let mut batch = batch.borrow_mut();
            if !batch.is_empty() {
                let flushed = batch.flush(socket);
                if flushed.dropped > 0 {
                    debug!(dropped = flushed.dropped, "SFU datagrams dropped on send");
                }
            }
        }
    }
}

struct Router {
    wire: Wire,
    /// ICE-TCP on
    tcp: bool,
    rooms: HashMap<String, RoomMedia>,
    /// remote address → (room, participant)
    demux: HashMap<SocketAddr, (String, String)>,
    signals: mpsc::UnboundedSender<Signal>,
    registry: Registry,
    last_second: Instant,
    /// layer switches reported so far, per room
    switches: HashMap<String, u64>,
    /// which media port the next peer connection gets
    ports: PortTurns,
    /// rooms being recorded (kept while a room has no peers)
    taps: HashMap<String, BTreeMap<crate::tap::TapPurpose, crate::tap::Tap>>,
}

async fn recv_any(
    sockets: &[UdpSocket],
    buf: &mut [u8],
) -> std::io::Result<(usize, usize, SocketAddr)> {
    poll_fn(|cx| {
        for (i, s) in sockets.iter().enumerate() {
            let mut rb = ReadBuf::new(&mut *buf);
            if let Poll::Ready(r) = s.poll_recv_from(cx, &mut rb) {
                let n = rb.filled().len();
                return Poll::Ready(r.map(|a| (i, n, a)));
            }
        }
        Poll::Pending
    })
    .await
}

/// Datagrams taken from the sockets per wake-up, beyond the first.
const RECV_BATCH: usize = 32;

/// A datagram already queued on any of `sockets`, without waiting.
fn try_recv_any(sockets: &[UdpSocket], buf: &mut [u8]) -> Option<(usize, usize, SocketAddr)> {
    sockets
        .iter()
        .enumerate()
        .find_map(|(i, s)| s.try_recv_from(buf).ok().map(|(n, a)| (i, n, a)))
}

fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(3600)
}

impl Router {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut tcp_events: mpsc::Receiver<tcp::TcpEvent>,
    ) {
        let mut buf = vec![0u8; 2048];
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
                r = recv_any(&sockets, &mut buf) => match r {
                    Ok((i, n, source)) => {
                        let now = Instant::now();
                        self.receive(Protocol::Udp, source, self.wire.local[i], &buf[..n], now);
                        // take what else is queued before polling the peers: one drive for a
                        // burst rather than one per datagram
                        for _ in 0..RECV_BATCH {
                            let Some((i, n, source)) = try_recv_any(&sockets, &mut buf) else {
                                break;
                            };
                            self.receive(Protocol::Udp, source, self.wire.local[i], &buf[..n], now);
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

    fn signal(&self, room: &str, to: &str, message: ServerMessage) {
        let _ = self.signals.send(Signal {
            room: room.to_string(),
            to: to.to_string(),
            message,
        });
    }

    fn command(&mut self, command: Command, now: Instant) {
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

    fn receive(
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
    fn drive(&mut self, now: Instant) -> Instant {
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
    fn drain_one(&mut self, room: &str, id: &str, now: Instant) {
        let mut dead = Vec::new();
        if let Some(media) = self.rooms.get_mut(room) {
            drain(room, media, id, &self.wire, now, &mut dead);
        }
        for (room, id) in dead {
            self.lost(&room, &id);
        }
    }

    fn lost(&mut self, room: &str, id: &str) {
        self.signal(
            room,
            id,
            ServerMessage::error("media_disconnected", "the SFU lost this peer connection"),
        );
        self.leave_peer_only(room, id);
    }

    /// A peer connection ended but the participant is still in the room (it may offer again).
    fn leave_peer_only(&mut self, room: &str, id: &str) {
        if let Some(media) = self.rooms.get_mut(room) {
            if let Some(peer) = media.disconnect(id) {
                for a in &peer.addrs {
                    self.demux.remove(a);
                }
                info!(%room, participant = %id, "peer connection closed");
            }
        }
    }

    fn second(&mut self, now: Instant) {
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

/// Timeouts due at once that one [`drain`] feeds before it leaves the rest to the loop (a
/// bound: a peer that keeps asking for time now cannot hold the loop).
const MAX_IMMEDIATE_TIMEOUTS: u32 = 256;

/// The span str0m's own logs (estimator, pacer, ICE) about peer `id` of `room` run in, so they
/// say whom they are about.
fn peer_span(room: &str, id: &str) -> tracing::Span {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(port: u16) -> SfuSettings {
        SfuSettings {
            port,
            port_range: None,
            addresses: vec![IpAddr::from([127, 0, 0, 1])],
            tcp: true,
            stun_server: None,
        }
    }

    #[test]
    fn media_sockets_share_one_port_for_udp_and_tcp_and_a_taken_fixed_port_is_an_error() {
        let (udp, tcp) = bind_media(&settings(0)).expect("any free port");
        let port = udp[0].local_addr().unwrap().port();
        assert_eq!(tcp[0].local_addr().unwrap().port(), port);
        // that port is now taken for TCP: asking for it explicitly fails, and says why
        drop(udp);
        let err = bind_media(&settings(port)).expect_err("TCP port in use");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        drop(tcp);
        assert!(bind_media(&settings(port)).is_ok());
    }

    #[test]
    fn a_port_range_binds_every_port_and_peers_take_them_in_turn() {
        let free = bind_media(&settings(0)).expect("a free port").0[0]
            .local_addr()
            .unwrap()
            .port();
        let mut s = settings(0);
        // three ports just above a free one (retry further up if one is taken)
        let mut bound = None;
        for start in (free..free.saturating_add(200)).step_by(3) {
            s.port_range = Some(start..=start + 2);
            if let Ok(b) = bind_media(&s) {
                bound = Some((start, b));
                break;
            }
        }
        let (start, (udp, tcp)) = bound.expect("three free ports");
        let local: Vec<SocketAddr> = udp.iter().map(|u| u.local_addr().unwrap()).collect();
        assert_eq!(
            local.iter().map(|a| a.port()).collect::<Vec<_>>(),
            vec![start, start + 1, start + 2]
        );
        assert_eq!(tcp.len(), 3);
        let mut turns = PortTurns::new(&local);
        let given: Vec<_> = (0..4).map(|_| turns.take()).collect();
        assert_eq!(
            given,
            vec![Some(start), Some(start + 1), Some(start + 2), Some(start)]
        );
        // one port: every peer gets it
        let mut one = PortTurns::new(&local[..1]);
        assert_eq!((one.take(), one.take()), (Some(start), Some(start)));
    }
}
