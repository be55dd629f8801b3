//! The sockets around [`TurnCore`]: the UDP listener, TCP client connections (RFC 8656 §3.1:
//! STUN messages and padded ChannelData framed on the stream), and one UDP relay socket per
//! allocation from the relay port range. One loop task owns the core; readers feed it events.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidecast_common::metrics::{Metric, Registry};
use tidecast_common::udp_batch::SendBatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use crate::core::{FiveTuple, Out, PendingAllocation, Refused, Transport, TurnCore};
use crate::stun::{frame_length, MAX_MESSAGE};

/// What the server listens on and where relays live.
#[derive(Clone)]
pub struct Listeners {
    /// STUN/TURN over UDP.
    pub udp: Option<SocketAddr>,
    /// STUN/TURN over TCP.
    pub tcp: Option<SocketAddr>,
    /// TURN over TLS, with its acceptor.
    pub tls: Option<(SocketAddr, tokio_rustls::TlsAcceptor)>,
    /// The address relay sockets bind and announce.
    pub relay_ip: IpAddr,
    /// Relay ports, inclusive.
    pub relay_ports: (u16, u16),
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("udp", &self.udp)
            .field("tcp", &self.tcp)
            .field("tls", &self.tls.as_ref().map(|(a, _)| a))
            .field("relay_ip", &self.relay_ip)
            .field("relay_ports", &self.relay_ports)
            .finish()
    }
}

/// The running server's addresses.
#[derive(Debug, Clone)]
pub struct TurnServer {
    /// The UDP listener's address.
    pub udp: Option<SocketAddr>,
    /// The TCP listener's address.
    pub tcp: Option<SocketAddr>,
    /// The TLS listener's address.
    pub tls: Option<SocketAddr>,
}

enum Event {
    /// A datagram or frame from a client.
    Client(FiveTuple, Vec<u8>),
    /// A TCP client connected: where its frames go.
    Opened(FiveTuple, mpsc::Sender<Vec<u8>>),
    /// A TCP client went away.
    Closed(FiveTuple),
    /// A datagram from a peer on a relay socket.
    Peer(SocketAddr, SocketAddr, Vec<u8>),
}

/// Frames queued towards one TCP client before more are dropped (like UDP would).
const TCP_QUEUE: usize = 512;
/// TCP clients at once.
const MAX_TCP_CLIENTS: usize = 4096;
/// A TCP client idle this long is closed (its allocation refreshes keep it busy).
const TCP_IDLE: Duration = Duration::from_secs(600);

struct Counters {
    allocations: Metric,
    created: Metric,
    to_peer_bytes: Metric,
    to_peer_packets: Metric,
    to_client_bytes: Metric,
    to_client_packets: Metric,
    auth_failures: Metric,
    dropped: Vec<(&'static str, Metric)>,
    refused: Vec<(Refused, Metric)>,
}

/// Labels of `tidecast_turn_dropped_total`: the core's [`crate::core::Dropped`] reasons, then
/// the shell's own (`no_relay_socket`: no socket for the relayed address; `socket`: the kernel
/// refused the datagram, a socket buffer or a TCP client's queue was full).
const DROP_REASONS: [&str; 7] = [
    "no_allocation",
    "no_channel",
    "no_permission",
    "bandwidth",
    "malformed",
    "no_relay_socket",
    "socket",
];

impl Counters {
    fn new(r: &Registry) -> Counters {
        let relayed_bytes = |dir| {
            r.counter(
                "tidecast_turn_relayed_bytes_total",
                "Bytes relayed, by direction (to_peer, to_client).",
                &[("direction", dir)],
            )
        };
        let relayed_packets = |dir| {
            r.counter(
                "tidecast_turn_relayed_packets_total",
                "Datagrams relayed, by direction (to_peer, to_client).",
                &[("direction", dir)],
            )
        };
        Counters {
            allocations: r.gauge("tidecast_turn_allocations", "TURN allocations now.", &[]),
            created: r.counter(
                "tidecast_turn_allocations_total",
                "TURN allocations made.",
                &[],
            ),
            to_peer_bytes: relayed_bytes("to_peer"),
            to_peer_packets: relayed_packets("to_peer"),
            to_client_bytes: relayed_bytes("to_client"),
            to_client_packets: relayed_packets("to_client"),
            auth_failures: r.counter(
                "tidecast_turn_auth_failures_total",
                "TURN requests with wrong, expired or stale credentials.",
                &[],
            ),
            dropped: DROP_REASONS
                .iter()
                .map(|&reason| {
                    let m = r.counter(
                        "tidecast_turn_dropped_total",
                        "Datagrams from clients or peers that were not relayed, by reason.",
                        &[("reason", reason)],
                    );
                    (reason, m)
                })
                .collect(),
            refused: Refused::ALL
                .iter()
                .map(|&why| {
                    let m = r.counter(
                        "tidecast_turn_refused_total",
                        "TURN requests refused, by reason.",
                        &[("reason", why.label())],
                    );
                    (why, m)
                })
                .collect(),
        }
    }

    /// Relayed data dropped: `reason` one of [`DROP_REASONS`]. The series are made at start, so
    /// a flood of data that is dropped costs no registry lookup per datagram.
    fn dropped(&self, reason: &'static str, n: usize) {
        if let Some((_, m)) = self.dropped.iter().find(|(r, _)| *r == reason) {
            m.add(n as i64);
        }
    }

    /// A request refused; like [`Counters::dropped`], no registry lookup per refusal (a flood
    /// of bad requests is what this counts).
    fn refused(&self, why: Refused) {
        if let Some((_, m)) = self.refused.iter().find(|(r, _)| *r == why) {
            m.inc();
        }
        if matches!(why, Refused::Unauthorized | Refused::StaleNonce) {
            self.auth_failures.inc();
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TurnServer {
    /// Bind the listeners and serve on a thread and current-thread runtime of its own: the
    /// readers and the loop hand each datagram over without waking other threads.
    pub async fn start(
        listeners: Listeners,
        core: TurnCore,
        registry: &Registry,
    ) -> std::io::Result<TurnServer> {
        let registry = registry.clone();
        tidecast_common::own_thread::spawn("turn", move || async move {
            Self::serve(listeners, core, &registry).await
        })
    }

    async fn serve(
        listeners: Listeners,
        core: TurnCore,
        registry: &Registry,
    ) -> std::io::Result<(TurnServer, impl std::future::Future<Output = ()>)> {
        let (events, rx) = mpsc::channel::<Event>(8192);
        let udp = match listeners.udp {
            Some(a) => {
                let socket = UdpSocket::bind(a).await?;
                // every client's datagrams arrive here
                tidecast_common::udp_batch::large_buffers(&socket);
                Some(Arc::new(socket))
            }
            None => None,
        };
        let tcp = match listeners.tcp {
            Some(a) => Some(tidecast_common::http_server::bind(&a.to_string(), 1024).await?),
            None => None,
        };
        let tls = match &listeners.tls {
            Some((a, acceptor)) => Some((
                tidecast_common::http_server::bind(&a.to_string(), 1024).await?,
                acceptor.clone(),
            )),
            None => None,
        };
        let server = TurnServer {
            udp: udp.as_ref().and_then(|s| s.local_addr().ok()),
            tcp: tcp.as_ref().and_then(|l| l.local_addr().ok()),
            tls: tls.as_ref().and_then(|(l, _)| l.local_addr().ok()),
        };
        info!(udp = ?server.udp, tcp = ?server.tcp, tls = ?server.tls, relay = %listeners.relay_ip,
              ports = ?listeners.relay_ports, "TURN listening");
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        if let Some(l) = tcp {
            tokio::spawn(accept_stream(l, None, events.clone(), open.clone()));
        }
        if let Some((l, acceptor)) = tls {
            tokio::spawn(accept_stream(l, Some(acceptor), events.clone(), open));
        }
        let lp = Loop {
            core,
            udp,
            tcp: HashMap::new(),
            relays: HashMap::new(),
            relay_ip: listeners.relay_ip,
            relay_ports: listeners.relay_ports,
            next_port: std::process::id(),
            events,
            counters: Counters::new(registry),
            udp_out: SendBatch::default(),
            udp_relayed_out: SendBatch::default(),
            relays_to_flush: Vec::new(),
        };
        Ok((server, lp.run(rx)))
    }
}

/// A datagram on the UDP listener, if there is one (else never).
async fn recv_listener(
    udp: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match udp {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Datagrams taken from the UDP listener per wake-up.
const LISTENER_BATCH: usize = 64;

/// A TLS handshake may take this long.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// TCP (or, with an acceptor, TLS) clients: each connection's frames go to the loop.
async fn accept_stream(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    events: mpsc::Sender<Event>,
    open: Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    loop {
        let Ok((stream, client)) = listener.accept().await else {
            continue;
        };
        if open.load(Ordering::Relaxed) >= MAX_TCP_CLIENTS {
            warn!(%client, "TURN: too many TCP clients, refused");
            continue;
        }
        let Ok(server) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let five = FiveTuple {
            client,
            server,
            transport: if tls.is_some() {
                Transport::Tls
            } else {
                Transport::Tcp
            },
        };
        let events = events.clone();
        let open = open.clone();
        let tls = tls.clone();
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            match tls {
                None => {
                    let (reader, writer) = stream.into_split();
                    serve_stream(five, reader, writer, &events).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let (reader, writer) = tokio::io::split(s);
                            serve_stream(five, reader, writer, &events).await;
                        }
                        Ok(Err(e)) => debug!(%client, "TURN TLS handshake failed: {e}"),
                        Err(_) => debug!(%client, "TURN TLS handshake timed out"),
                    }
                }
            }
            let _ = events.send(Event::Closed(five)).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Frames in from a stream client, frames out from the loop, until either side ends.
async fn serve_stream<R, W>(
    five: FiveTuple,
    mut reader: R,
    mut writer: W,
    events: &mpsc::Sender<Event>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
    if events.send(Event::Opened(five, tx)).await.is_err() {
        return;
    }
    let write = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(TCP_IDLE, reader.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) => {
                debug!(client = %five.client, "TURN TCP client idle, closed");
                break;
            }
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match frame_length(&buf) {
                Ok(Some(len)) if len > MAX_MESSAGE => {
                    warn!(client = %five.client, len, "TURN TCP frame too large, closed");
                    write.abort();
                    return;
                }
                Ok(Some(len)) if buf.len() >= len => {
                    let frame: Vec<u8> = buf.drain(..len).collect();
                    if events.send(Event::Client(five, frame)).await.is_err() {
                        write.abort();
                        return;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    warn!(client = %five.client, "TURN TCP: {e}, closed");
                    write.abort();
                    return;
                }
            }
        }
    }
    write.abort();
}

struct Relay {
    socket: Arc<UdpSocket>,
    reader: AbortHandle,
    /// datagrams to peers queued during this batch of events
    out: SendBatch,
}

struct Loop {
    core: TurnCore,
    udp: Option<Arc<UdpSocket>>,
    tcp: HashMap<FiveTuple, mpsc::Sender<Vec<u8>>>,
    relays: HashMap<SocketAddr, Relay>,
    relay_ip: IpAddr,
    relay_ports: (u16, u16),
    next_port: u32,
    events: mpsc::Sender<Event>,
    counters: Counters,
    /// UDP datagrams to clients, sent together once per batch of events
    udp_out: SendBatch,
    /// relayed data to UDP clients (apart from answers, so what is sent of it can be counted)
    udp_relayed_out: SendBatch,
    /// relays with datagrams to peers queued
    relays_to_flush: Vec<SocketAddr>,
}

impl Loop {
    async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut batch = Vec::with_capacity(64);
        // UDP clients are read here, in the loop: no hop through a queue for every datagram
        let udp = self.udp.clone();
        let server = udp.as_ref().and_then(|s| s.local_addr().ok());
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, 64) => {
                    if n == 0 {
                        return;
                    }
                    let (now, unix) = (Instant::now(), unix_now());
                    for e in batch.drain(..) {
                        self.event(e, now, unix).await;
                    }
                }
                r = recv_listener(udp.as_deref(), &mut buf) => {
                    let (now, unix) = (Instant::now(), unix_now());
                    let mut next = r;
                    // this datagram and those already queued behind it, at most a batch: a
                    // datagram read is always handled (reading one more than the batch, then
                    // leaving the loop, lost it — 1 in 75,000 in bench/turn.sh)
                    for taken in 1..=LISTENER_BATCH {
                        let (n, client) = match next {
                            Ok(got) => got,
                            Err(e) => {
                                if e.kind() != std::io::ErrorKind::WouldBlock {
                                    debug!("TURN UDP receive: {e}");
                                }
                                break;
                            }
                        };
                        if let Some(server) = server {
                            let five = FiveTuple { client, server, transport: Transport::Udp };
                            let outs = self.core.client(five, &buf[..n], now, unix);
                            self.carry_out(outs).await;
                        }
                        if taken == LISTENER_BATCH {
                            break;
                        }
                        next = match &udp {
                            Some(socket) => socket.try_recv_from(&mut buf),
                            None => break,
                        };
                    }
                }
                _ = tick.tick() => {
                    let outs = self.core.expire(Instant::now(), unix_now());
                    self.carry_out(outs).await;
                    self.counters.allocations.set(self.core.allocations() as i64);
                }
            }
            self.flush_udp();
        }
    }

    async fn event(&mut self, e: Event, now: Instant, unix: u64) {
        let outs = match e {
            Event::Client(five, data) => self.core.client(five, &data, now, unix),
            Event::Peer(relay, peer, data) => {
                let out = self.core.peer(relay, peer, &data, now);
                if let Some(Out::Dropped(why)) = out {
                    self.counters.dropped(why.label(), 1);
                    return;
                }
                if let Some(Out::Client(five, bytes)) = out {
                    if five.transport == Transport::Udp {
                        // counted when flushed: what the socket took
                        self.udp_relayed_out.push(five.client, &bytes);
                        return;
                    }
                    let len = bytes.len();
                    if self.send_client(five, bytes) {
                        self.counters.to_client_packets.inc();
                        self.counters.to_client_bytes.add(len as i64);
                    } else {
                        // the client's stream is gone or its queue is full
                        self.counters.dropped("socket", 1);
                    }
                }
                return;
            }
            Event::Opened(five, tx) => {
                self.tcp.insert(five, tx);
                return;
            }
            Event::Closed(five) => {
                self.tcp.remove(&five);
                self.core.closed(five)
            }
        };
        self.carry_out(outs).await;
    }

    async fn carry_out(&mut self, outs: Vec<Out>) {
        for out in outs {
            match out {
                Out::Client(five, bytes) => {
                    self.send_client(five, bytes);
                }
                Out::Peer { relay, peer, data } => {
                    if let Some(r) = self.relays.get_mut(&relay) {
                        if r.out.is_empty() {
                            self.relays_to_flush.push(relay);
                        }
                        r.out.push(peer, &data);
                    } else {
                        self.counters.dropped("no_relay_socket", 1);
                    }
                }
                Out::Bind(p) => {
                    let relay = self.bind_relay(&p).await;
                    let outs = self.core.allocated(p, relay, Instant::now());
                    Box::pin(self.carry_out(outs)).await;
                }
                Out::Release(relay) => {
                    if let Some(r) = self.relays.remove(&relay) {
                        r.reader.abort();
                        info!(%relay, "TURN allocation ended");
                    }
                    self.counters
                        .allocations
                        .set(self.core.allocations() as i64);
                }
                Out::Refused(why, five) => {
                    debug!(client = %five.client, reason = why.label(), "TURN request refused");
                    self.counters.refused(why);
                }
                Out::Dropped(why) => self.counters.dropped(why.label(), 1),
            }
        }
    }

    /// Bytes to a client on its 5-tuple (UDP ones queued for [`Loop::flush_udp`]); whether
    /// they went out or were queued.
    fn send_client(&mut self, five: FiveTuple, bytes: Vec<u8>) -> bool {
        match five.transport {
            Transport::Udp => {
                self.udp_out.push(five.client, &bytes);
                true
            }
            _ => match self.tcp.get(&five) {
                Some(tx) => tx.try_send(bytes).is_ok(),
                None => false,
            },
        }
    }

    /// Send the UDP datagrams to clients and to peers queued during this batch of events.
    fn flush_udp(&mut self) {
        if let Some(socket) = &self.udp {
            for (relayed, out) in [
                (true, &mut self.udp_relayed_out),
                (false, &mut self.udp_out),
            ] {
                if out.is_empty() {
                    continue;
                }
                let flushed = out.flush(socket);
                if relayed {
                    self.counters.to_client_packets.add(flushed.sent as i64);
                    self.counters.to_client_bytes.add(flushed.sent_bytes as i64);
                }
                if flushed.dropped > 0 {
                    debug!(
                        dropped = flushed.dropped,
                        "TURN datagrams to clients dropped"
                    );
                    self.counters.dropped("socket", flushed.dropped);
                }
            }
        }
        for relay in self.relays_to_flush.drain(..) {
            let Some(r) = self.relays.get_mut(&relay) else {
                continue;
            };
            let flushed = r.out.flush(&r.socket);
            self.counters.to_peer_packets.add(flushed.sent as i64);
            self.counters.to_peer_bytes.add(flushed.sent_bytes as i64);
            if flushed.dropped > 0 {
                debug!(%relay, dropped = flushed.dropped, "TURN datagrams to peers dropped");
                self.counters.dropped("socket", flushed.dropped);
            }
        }
    }

    /// A relay socket for `p` on a free port of the range.
    async fn bind_relay(&mut self, p: &PendingAllocation) -> Option<SocketAddr> {
        if p.ipv6 != self.relay_ip.is_ipv6() {
            return None;
        }
        let (lo, hi) = self.relay_ports;
        let span = u32::from(hi.saturating_sub(lo)) + 1;
        for _ in 0..span.min(128) {
            // walk the range (a stride coprime to most spans spreads reuse)
            self.next_port = (self.next_port + 7919) % span;
            let port = lo + self.next_port as u16;
            if p.even && port % 2 == 1 {
                continue;
            }
            let addr = SocketAddr::new(self.relay_ip, port);
            if self.relays.contains_key(&addr) {
                continue;
            }
            let Ok(socket) = UdpSocket::bind(addr).await else {
                continue;
            };
            let socket = Arc::new(socket);
            let reader = tokio::spawn(read_relay(socket.clone(), addr, self.events.clone()));
            self.relays.insert(
                addr,
                Relay {
                    socket,
                    reader: reader.abort_handle(),
                    out: SendBatch::default(),
                },
            );
            self.counters.created.inc();
            self.counters
                .allocations
                .set(self.core.allocations() as i64 + 1);
            info!(client = %p.five.client, relay = %addr, "TURN allocation");
            return Some(addr);
        }
        warn!(client = %p.five.client, "TURN: no free relay port");
        None
    }
}

async fn read_relay(socket: Arc<UdpSocket>, relay: SocketAddr, events: mpsc::Sender<Event>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, peer)) => {
                let _ = events.try_send(Event::Peer(relay, peer, buf[..n].to_vec()));
            }
            Err(e) => debug!(%relay, "TURN relay receive: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DROP_REASONS;
    use crate::core::Dropped;

    #[test]
    fn every_drop_the_core_reports_has_a_series() {
        for d in [
            Dropped::NoAllocation,
            Dropped::NoChannel,
            Dropped::NoPermission,
            Dropped::Bandwidth,
            Dropped::Malformed,
        ] {
            assert!(DROP_REASONS.contains(&d.label()), "{d:?}");
        }
    }
}
