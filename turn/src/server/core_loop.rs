//! The loop that owns the [`TurnCore`]: client datagrams (read here, from the UDP listener),
//! TCP frames and relay sockets' datagrams (from their readers) go in; what the core answers is
//! carried out on the sockets, batched per wake-up; relay sockets are bound from the port range
//! as allocations are made and closed when they end.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidecast_common::metrics::Registry;
use tidecast_common::udp_batch::{RecvBatch, SendBatch};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::counters::Counters;
use super::{Event, Listeners};
use crate::core::{FiveTuple, Out, PendingAllocation, Transport, TurnCore};
use crate::stun::MAX_MESSAGE;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The datagrams queued on the UDP listener, once there are some, if there is one (else never).
async fn recv_listener(udp: Option<&UdpSocket>, batch: &mut RecvBatch) -> std::io::Result<usize> {
    match udp {
        Some(socket) => batch.recv(socket).await,
        None => std::future::pending().await,
    }
}

/// Datagrams taken from the UDP listener per wake-up (one `recvmmsg`).
const LISTENER_BATCH: usize = 64;

struct Relay {
    socket: Arc<UdpSocket>,
    reader: AbortHandle,
    /// datagrams to peers queued during this batch of events
    out: SendBatch,
}

pub(super) struct Loop {
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
    pub(super) fn new(
        core: TurnCore,
        udp: Option<Arc<UdpSocket>>,
        listeners: &Listeners,
        events: mpsc::Sender<Event>,
        registry: &Registry,
    ) -> Loop {
        Loop {
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
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut batch = Vec::with_capacity(64);
        // UDP clients are read here, in the loop: no hop through a queue for every datagram
        let udp = self.udp.clone();
        let server = udp.as_ref().and_then(|s| s.local_addr().ok());
        let mut received = RecvBatch::new(LISTENER_BATCH, MAX_MESSAGE);
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
                r = recv_listener(udp.as_deref(), &mut received) => {
                    let (now, unix) = (Instant::now(), unix_now());
                    // the datagrams queued, at most a batch, taken in one call
                    match r {
                        Ok(_) => {
                            if let Some(server) = server {
                                for (data, client) in received.datagrams() {
                                    let five = FiveTuple { client, server, transport: Transport::Udp };
                                    let outs = self.core.client(five, data, now, unix);
                                    self.carry_out(outs).await;
                                }
                            }
                        }
                        Err(e) => debug!("TURN UDP receive: {e}"),
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
