//! The SFU's media sockets: binding the UDP ports (and ICE-TCP listeners on the same ports),
//! handing peers their port in turn, reading datagrams from whichever socket has some (a batch
//! per call), and the [`Wire`] peers' datagrams go out on, batched per pass of the loop.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use str0m::net::Protocol;
use tidecast_common::udp_batch::{RecvBatch, SendBatch};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;

use super::SfuSettings;

/// The media sockets: UDP on the port of `settings` on every address, and ICE-TCP listeners on
/// the same port. With port 0 the kernel picks the UDP port, and that number may already be
/// taken for TCP (by any connection's local end): then everything is let go and bound again on a
/// new port, a few times.
pub(super) fn bind_media(
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
pub(super) struct PortTurns {
    ports: Vec<u16>,
    next: usize,
}

impl PortTurns {
    pub(super) fn new(local: &[SocketAddr]) -> PortTurns {
        let mut ports: Vec<u16> = Vec::new();
        for a in local {
            if !ports.contains(&a.port()) {
                ports.push(a.port());
            }
        }
        PortTurns { ports, next: 0 }
    }

    /// The port for the next peer connection (one port: always it).
    pub(super) fn take(&mut self) -> Option<u16> {
        let port = self.ports.get(self.next % self.ports.len().max(1)).copied();
        self.next = self.next.wrapping_add(1);
        port
    }
}

/// Where peers' datagrams go out: the UDP sockets and the ICE-TCP connections.
pub(super) struct Wire {
    pub(super) sockets: Arc<[UdpSocket]>,
    /// the sockets' addresses, by index
    pub(super) local: Vec<SocketAddr>,
    /// (local, remote) → the connection's writer
    pub(super) tcp_conns: HashMap<(SocketAddr, SocketAddr), mpsc::Sender<bytes::Bytes>>,
    /// UDP datagrams of this pass of the loop, by socket index, sent together by [`Wire::flush`]
    pub(super) batches: Vec<RefCell<SendBatch>>,
    /// (public address STUN reported, socket address) where they differ
    pub(super) reflexive: Vec<(SocketAddr, SocketAddr)>,
}

impl Wire {
    pub(super) fn send(&self, t: &str0m::net::Transmit) {
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
    pub(super) fn flush(&self) {
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

/// Datagrams taken from a socket per wake-up (one `recvmmsg`).
pub(super) const RECV_BATCH: usize = 32;

/// Room for [`RECV_BATCH`] datagrams of the largest size peers send (a longer one is dropped).
pub(super) fn recv_batch() -> RecvBatch {
    RecvBatch::new(RECV_BATCH, 2048)
}

/// Wait for datagrams on any of `sockets` and take those queued on the first that has some,
/// looking from socket `from` on (the caller moves it, so a busy port cannot starve the others
/// of a range): that socket's index.
pub(super) async fn recv_any(
    sockets: &[UdpSocket],
    from: usize,
    batch: &mut RecvBatch,
) -> std::io::Result<usize> {
    poll_fn(|cx| {
        for k in 0..sockets.len() {
            let i = (from + k) % sockets.len();
            if let Poll::Ready(r) = batch.poll_recv(cx, &sockets[i]) {
                return Poll::Ready(r.map(|_| i));
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

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
