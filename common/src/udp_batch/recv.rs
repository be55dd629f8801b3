//! Datagrams taken from a socket with one `recvmmsg(2)` per wake-up instead of a `recvfrom`
//! each: a media loop woken by a burst reads what is queued in one call, handles it, and
//! learns that the queue is empty from one more call (`EAGAIN`, which tells tokio to wait for
//! the next datagram), where reading one by one costs a call per datagram plus that last one.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::task::{Context, Poll};

use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Room for up to `count` datagrams of up to `size` bytes each, and the ones the last receive
/// took (see the module docs). A datagram longer than `size` is dropped (and logged), not cut
/// short.
#[derive(Debug)]
pub struct RecvBatch {
    size: usize,
    bytes: Vec<u8>,
    /// (slot, length, source) of the datagrams in `bytes` (slot `i` starts at `i * size`)
    got: Vec<(usize, usize, SocketAddr)>,
    /// datagrams dropped so far for being longer than `size`
    truncated: u64,
}

impl RecvBatch {
    /// Room for `count` datagrams (at least one) of `size` bytes.
    pub fn new(count: usize, size: usize) -> RecvBatch {
        let count = count.max(1);
        RecvBatch {
            size,
            bytes: vec![0; count * size],
            got: Vec::with_capacity(count),
            truncated: 0,
        }
    }

    /// Wait until `socket` has datagrams, then take those queued (up to the batch's room):
    /// how many were taken. Zero happens when every one taken was too long.
    pub async fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_recv(cx, socket)).await
    }

    /// [`RecvBatch::recv`] as a poll: `Pending` (with `cx` woken when datagrams come) while
    /// none is queued.
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        socket: &UdpSocket,
    ) -> Poll<io::Result<usize>> {
        loop {
            match socket.poll_recv_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            match self.try_recv(socket) {
                // readiness was stale: tokio cleared it, the next poll registers the waker
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    /// Take the datagrams queued on `socket` now, without waiting (`WouldBlock` when there are
    /// none): how many were taken.
    pub fn try_recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.got.clear();
        let (size, bytes, got, truncated) = (
            self.size,
            &mut self.bytes,
            &mut self.got,
            &mut self.truncated,
        );
        socket.try_io(Interest::READABLE, || {
            receive(socket, size, bytes, got, truncated)
        })?;
        Ok(self.got.len())
    }

    /// The datagrams the last receive took, in the order they came: (bytes, source).
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> + '_ {
        self.got.iter().map(|&(slot, len, source)| {
            let start = slot * self.size;
            (&self.bytes[start..start + len], source)
        })
    }

    /// Datagrams dropped so far for being longer than the batch's `size`.
    pub fn truncated(&self) -> u64 {
        self.truncated
    }
}

/// One `recvmmsg` into `bytes`' slots of `size`: the whole datagrams go in `got`, one too long
/// (cut short by the kernel) is counted in `truncated` and left out.
fn receive(
    socket: &UdpSocket,
    size: usize,
    bytes: &mut [u8],
    got: &mut Vec<(usize, usize, SocketAddr)>,
    truncated: &mut u64,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let slots: Vec<[IoSliceMut<'_>; 1]> = bytes
        .chunks_mut(size.max(1))
        .map(|slot| [IoSliceMut::new(slot)])
        .collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slots.len(), None);
    let results = recvmmsg(
        socket.as_raw_fd(),
        &mut headers,
        &slots,
        MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    for (slot, r) in results.enumerate() {
        let Some(source) = r.address.and_then(socket_addr) else {
            continue;
        };
        if r.flags.contains(MsgFlags::MSG_TRUNC) {
            tracing::debug!(%source, "datagram longer than {size} bytes dropped");
            *truncated += 1;
            continue;
        }
        got.push((slot, r.bytes, source));
    }
    Ok(())
}

fn socket_addr(a: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (UdpSocket, UdpSocket, SocketAddr) {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        (rx, tx, to)
    }

    #[tokio::test]
    async fn a_burst_is_taken_in_order_with_its_sources_a_batch_at_a_time() {
        let (rx, a, to) = pair().await;
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..10u8 {
            let from = if i % 2 == 0 { &a } else { &b };
            from.send_to(&vec![i; 1 + i as usize], to).await.unwrap();
        }
        let mut batch = RecvBatch::new(4, 64);
        let mut seen = Vec::new();
        while seen.len() < 10 {
            let n = batch.recv(&rx).await.unwrap();
            assert!((1..=4).contains(&n), "{n} datagrams in a batch of 4");
            for (data, source) in batch.datagrams() {
                let i = data[0];
                assert_eq!(data, vec![i; 1 + i as usize].as_slice());
                let from = if i % 2 == 0 { &a } else { &b };
                assert_eq!(source, from.local_addr().unwrap());
                seen.push(i);
            }
        }
        assert_eq!(seen, (0..10).collect::<Vec<u8>>());
        // drained: nothing without waiting, and the empty datagram is one too
        let e = batch.try_recv(&rx).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        a.send_to(b"", to).await.unwrap();
        assert_eq!(batch.recv(&rx).await.unwrap(), 1);
        assert_eq!(batch.datagrams().next().map(|(d, _)| d.len()), Some(0));
    }

    #[tokio::test]
    async fn a_datagram_longer_than_a_slot_is_dropped_and_counted_and_its_neighbours_kept() {
        let (rx, tx, to) = pair().await;
        tx.send_to(b"short", to).await.unwrap();
        tx.send_to(&[7; 100], to).await.unwrap();
        tx.send_to(b"fits", to).await.unwrap();
        let mut batch = RecvBatch::new(8, 16);
        let mut kept = Vec::new();
        while kept.len() < 2 {
            batch.recv(&rx).await.unwrap();
            kept.extend(batch.datagrams().map(|(d, _)| d.to_vec()));
        }
        assert_eq!(kept, vec![b"short".to_vec(), b"fits".to_vec()]);
        assert_eq!(batch.truncated(), 1);
    }
}
