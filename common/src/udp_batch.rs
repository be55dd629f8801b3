//! Datagrams queued during one pass of a media loop and sent with one `sendmmsg(2)` per batch
//! instead of one `sendto` each (the SFU's forwarding, the TURN relay's client side). A loop
//! pushes what it produces while it handles a burst of input, then flushes once before it
//! sleeps: the packets go out microseconds later than they would one by one, and the loop pays
//! the system call's entry and exit once per batch.
//!
//! A full socket buffer drops the rest of the batch, as a full buffer drops a single datagram;
//! a datagram the kernel refuses (no route, say) is dropped alone and the others still go.

use std::io::{self, IoSlice};
use std::net::SocketAddr;

use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
use tokio::net::UdpSocket;

/// Datagrams per `sendmmsg` call.
const PER_CALL: usize = 64;

/// Datagrams waiting for the next [`SendBatch::flush`]: their bytes back to back in one buffer
/// (reused from batch to batch, so queueing does not allocate once it has grown).
#[derive(Debug, Default)]
pub struct SendBatch {
    bytes: Vec<u8>,
    queued: Vec<(SocketAddr, usize, usize)>,
}

/// What a flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// datagrams the kernel took
    pub sent: usize,
    /// their bytes
    pub sent_bytes: usize,
    /// datagrams dropped (socket buffer full, or refused)
    pub dropped: usize,
}

/// Kernel buffer each way asked for on a busy UDP socket (`net.core.rmem_max`/`wmem_max` cap
/// it; Debian's default max is 208 KiB, raise them for large deployments).
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Ask for [`SOCKET_BUFFER_BYTES`] of kernel buffer each way on `socket`, so a burst that
/// arrives while its loop is busy waits there rather than being dropped. A refusal leaves the
/// defaults, which still work: it is logged, not returned.
pub fn large_buffers(socket: impl std::os::fd::AsFd) {
    use rustix::net::sockopt;
    for (what, r) in [
        (
            "receive",
            sockopt::set_socket_recv_buffer_size(&socket, SOCKET_BUFFER_BYTES),
        ),
        (
            "send",
            sockopt::set_socket_send_buffer_size(&socket, SOCKET_BUFFER_BYTES),
        ),
    ] {
        if let Err(e) = r {
            tracing::debug!("UDP {what} buffer size not set: {e}");
        }
    }
}

impl SendBatch {
    /// Queue `data` for `to`.
    pub fn push(&mut self, to: SocketAddr, data: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        self.queued.push((to, start, data.len()));
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Send everything queued on `socket` and empty the batch.
    pub fn flush(&mut self, socket: &UdpSocket) -> Flushed {
        let mut done = Flushed::default();
        let mut at = 0;
        while at < self.queued.len() {
            let chunk = &self.queued[at..(at + PER_CALL).min(self.queued.len())];
            match send_chunk(socket, &self.bytes, chunk) {
                Ok(n) if n > 0 => {
                    done.sent += n;
                    done.sent_bytes += chunk[..n].iter().map(|&(_, _, len)| len).sum::<usize>();
                    at += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // the first datagram of the chunk was refused: drop it, send the rest
                _ => {
                    done.dropped += 1;
                    at += 1;
                }
            }
        }
        done.dropped += self.queued.len() - at;
        self.queued.clear();
        self.bytes.clear();
        done
    }
}

fn send_chunk(
    socket: &UdpSocket,
    bytes: &[u8],
    chunk: &[(SocketAddr, usize, usize)],
) -> io::Result<usize> {
    if let [(to, start, len)] = chunk {
        // one datagram: a plain sendto, without building the message vector
        rustix::net::sendto(socket, &bytes[*start..start + len], SendFlags::NOSIGNAL, to)?;
        return Ok(1);
    }
    let addrs: Vec<SocketAddrAny> = chunk
        .iter()
        .map(|&(to, _, _)| SocketAddrAny::from(to))
        .collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = chunk
        .iter()
        .map(|&(_, start, len)| [IoSlice::new(&bytes[start..start + len])])
        .collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = chunk
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut msgs: Vec<MMsgHdr<'_>> = addrs
        .iter()
        .zip(&iovs)
        .zip(controls.iter_mut())
        .map(|((addr, iov), control)| MMsgHdr::new_with_addr(addr, iov, control))
        .collect();
    // straight to the kernel, not through tokio's readiness (nobody awaits this socket's
    // writability: a datagram that does not fit is dropped, never waited for)
    Ok(rustix::net::sendmmsg(
        socket,
        &mut msgs,
        SendFlags::NOSIGNAL,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_arrives_whole_and_in_order_and_a_refused_datagram_is_dropped_alone() {
        let out = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut batch = SendBatch::default();
        for i in 0..150u32 {
            let to = if i % 3 == 0 { to_b } else { to_a };
            batch.push(to, &i.to_be_bytes().repeat(1 + (i as usize % 7)));
        }
        // an IPv6 destination on an IPv4 socket: the kernel refuses that one
        batch.push("[::1]:9".parse().unwrap(), b"nowhere");
        batch.push(to_a, b"last");
        assert_eq!(batch.len(), 152);
        let flushed = batch.flush(&out);
        let bytes = (0..150).map(|i| 4 * (1 + i % 7)).sum::<usize>() + 4;
        assert_eq!(
            flushed,
            Flushed {
                sent: 151,
                sent_bytes: bytes,
                dropped: 1
            }
        );
        assert!(batch.is_empty());
        let mut buf = [0u8; 64];
        for i in 0..150u32 {
            let from = if i % 3 == 0 { &b } else { &a };
            let n = from.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], &i.to_be_bytes().repeat(1 + (i as usize % 7))[..]);
        }
        let n = a.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"last");
    }
}
