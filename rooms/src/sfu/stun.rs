//! The SFU's public address: at start, each media socket on a non-loopback address asks the
//! configured STUN server (a `tidecast turn` outside the NAT, or any RFC 8489 server) what
//! address its datagrams come from. Where that differs from the socket's own address (the SFU
//! is behind NAT) the peers are given it as a server-reflexive candidate.

use std::net::SocketAddr;
use std::time::Duration;

use tidecast_turn::binding;
use tokio::net::UdpSocket;
use tracing::{info, warn};

/// Requests sent before giving up, and how long each waits for its answer.
const ATTEMPTS: usize = 3;
const WAIT: Duration = Duration::from_millis(500);

/// `(public, socket address)` when `socket`'s mapped address, as `server` sees it, is not its
/// own; `None` when it is, for loopback sockets, or when no answer comes (logged).
pub(super) async fn reflexive(
    socket: &UdpSocket,
    server: &str,
) -> Option<(SocketAddr, SocketAddr)> {
    let local = socket.local_addr().ok()?;
    if local.ip().is_loopback() {
        return None;
    }
    let target = match tokio::net::lookup_host(server).await {
        Ok(mut addrs) => addrs.find(|a| a.is_ipv4() == local.is_ipv4()),
        Err(e) => {
            warn!(%server, "rooms.stun_server does not resolve: {e}");
            return None;
        }
    };
    let Some(target) = target else {
        warn!(%server, %local, "rooms.stun_server has no address of the socket's family");
        return None;
    };
    let mut buf = [0u8; 576];
    for _ in 0..ATTEMPTS {
        let mut transaction = [0u8; 12];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut transaction);
        if let Err(e) = socket.send_to(&binding::request(transaction), target).await {
            warn!(%server, %local, "STUN request: {e}");
            return None;
        }
        let answer = tokio::time::timeout(WAIT, async {
            loop {
                let (n, from) = socket.recv_from(&mut buf).await.ok()?;
                if from == target {
                    if let Some(mapped) = binding::mapped_address(&buf[..n], &transaction) {
                        return Some(mapped);
                    }
                }
            }
        })
        .await;
        if let Ok(Some(mapped)) = answer {
            if mapped == local {
                info!(%local, %server, "SFU media address is public (STUN)");
                return None;
            }
            info!(%local, public = %mapped, %server, "SFU public address (STUN): announced as server-reflexive");
            return Some((mapped, local));
        }
    }
    warn!(%server, %local, "no STUN answer: the SFU announces its host addresses only");
    None
}
