//! The selective forwarding unit: group calls (three participants and more) send their media
//! to tidecast, which forwards each subscriber the simulcast layer its layout and bandwidth
//! allow. One UDP port serves every peer (packets are demultiplexed by ICE credentials and
//! then by source address, like LiveKit's single-port mode); each peer is a `str0m::Rtc` in
//! RTP mode, so packets are forwarded as they are, with sequence numbers and timestamps
//! rewritten per subscriber ([`crate::forwarding::RtpRewriter`]).
//!
//! * [`peer`]: one participant's `Rtc` and its SDP negotiation.
//! * [`media`]: one room's peers, published tracks and forwarding table.
//! * `published`: a published track's layers and their measured bitrate and size.
//! * `tapping`: a room's recording and restream taps on its tracks.
//! * [`codec`]: keyframe detection on payloads.
//! * [`speaker`]: the active speaker from audio levels.
//! * `stun`: the sockets' public addresses from a STUN server, at start.
//! * [`tcp`]: ICE-TCP connections (passive candidates on the same port) for UDP-blocked clients.
//! * `sockets`: binding the media ports, and the wire peers' datagrams go out on (batched).
//! * `router`: the loop that owns the sockets and the rooms' peers — datagrams in, str0m
//!   polled, packets forwarded; `commands` applies what signaling hands it, `tick` is its
//!   once-a-second pass (active speaker, metrics).
//! * this module: the handle signaling talks to.
//!
//! The loop is a single task: commands from signaling, datagrams and timers in; datagrams and
//! [`Signal`]s (SDP for a participant) out.

pub mod codec;
mod commands;
mod forward;
pub mod media;
pub mod peer;
mod published;
mod router;
mod sockets;
pub mod speaker;
mod stun;
mod tapping;
pub mod tcp;
mod tick;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tidecast_common::metrics::Registry;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::info;

use crate::forwarding::Need;
use crate::signal::ServerMessage;
use router::Router;
use sockets::{bind_media, PortTurns, Wire};

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
