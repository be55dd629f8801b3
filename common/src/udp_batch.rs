//! Datagrams queued during one pass of a media loop and sent with one `sendmmsg(2)` per batch
//! instead of one `sendto` each (the SFU's forwarding, the TURN relay's client side). A loop
//! pushes what it produces while it handles a burst of input, then flushes once before it
//! sleeps: the packets go out microseconds later than they would one by one, and the loop pays
//! the system call's entry and exit once per batch.
//!
//! Consecutive datagrams to one destination of one size (the last may be shorter) — the packets
//! of a video frame a pacer lets out to one subscriber — go as one UDP GSO send (Linux
//! `UDP_SEGMENT`): the kernel walks its IP stack, netfilter and the route once for the run and
//! cuts it into the same datagrams on the wire. On loopback a datagram costs ~10.5 µs of kernel
//! time alone, ~3.4 µs each in a run of two, ~1.4 µs in a run of seven (this machine, sender
//! thread's system time). Consecutive runs of one segment size — a frame forwarded to each
//! subscriber in turn — share one `sendmmsg` (the kernel's `UDP_SEGMENT` control message is one
//! for the call), so a flush costs a call per change between plain datagrams and runs (or to a
//! run of another segment size) rather than one per run. Where GSO is refused (`EIO`/`EINVAL`)
//! the run is sent again as plain datagrams; if those go, the device or kernel lacks GSO and the
//! batch sends plain datagrams from then on; if they are refused too, the destination was at
//! fault and GSO stays on.
//!
//! A full socket buffer drops the rest of the batch, as a full buffer drops a single datagram;
//! a datagram the kernel refuses (no route, say) is dropped alone and the others still go.
//!
//! The other way, [`RecvBatch`] takes what is queued on a socket with one `recvmmsg(2)`.

mod recv;
pub use recv::RecvBatch;

use std::io::{self, IoSlice};
use std::net::SocketAddr;

use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
use tokio::net::UdpSocket;

/// Datagrams per `sendmmsg` call.
const PER_CALL: usize = 64;

/// Most datagrams in one GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 before Linux 6.9).
const GSO_SEGMENTS: usize = 64;

/// Most bytes in one GSO send (an IPv4 UDP payload is at most 65,507 bytes).
const GSO_BYTES: usize = 65_000;

/// Datagrams waiting for the next [`SendBatch::flush`]: their bytes back to back in one buffer
/// (reused from batch to batch, so queueing does not allocate once it has grown).
#[derive(Debug, Default)]
pub struct SendBatch {
    bytes: Vec<u8>,
    queued: Vec<(SocketAddr, usize, usize)>,
    /// the kernel refused a GSO send: plain datagrams only from then on
    no_gso: bool,
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
    /// of the datagrams sent, those that went in GSO runs
    pub segmented: usize,
    /// system calls made
    pub calls: usize,
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
        let total = self.queued.len();
        // datagrams before `plain_from` are handled; `plain_from..at` wait for a plain send
        let (mut at, mut plain_from) = (0, 0);
        while at < total {
            let run = if self.no_gso {
                1
            } else {
                gso_run(&self.queued[at..])
            };
            if run < 2 {
                at += 1;
                continue;
            }
            if self.send_plain(socket, plain_from..at, &mut done) {
                done.dropped += total - at;
                return self.cleared(done);
            }
            // this run and the runs right after it of the same segment size (a frame forwarded
            // to each subscriber in turn) go in one call
            let group = gso_group(&self.queued, at, run);
            done.calls += 1;
            match send_gso(socket, &self.bytes, &self.queued, &group) {
                Ok(n) if n > 0 => {
                    for &(start, len) in &group[..n] {
                        done.sent += len;
                        done.segmented += len;
                        done.sent_bytes += self.queued[start..start + len]
                            .iter()
                            .map(|&(_, _, len)| len)
                            .sum::<usize>();
                        at = start + len;
                    }
                    plain_from = at;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    done.dropped += total - at;
                    return self.cleared(done);
                }
                Err(e) if matches!(e.raw_os_error(), Some(EIO | EINVAL)) => {
                    // GSO unsupported, or this destination refused (port 0 is EINVAL too):
                    // the first run goes plain, and only if plain datagrams go is GSO to blame
                    let sent_before = done.sent;
                    if self.send_plain(socket, at..at + run, &mut done) {
                        done.dropped += total - (at + run);
                        return self.cleared(done);
                    }
                    if done.sent - sent_before == run {
                        tracing::info!("UDP GSO refused ({e}): sending plain datagrams");
                        self.no_gso = true;
                    }
                    at += run;
                    plain_from = at;
                }
                // the first run's destination was refused (or nothing was taken): that run is
                // dropped, the rest still go
                Ok(_) | Err(_) => {
                    done.dropped += run;
                    at += run;
                    plain_from = at;
                }
            }
        }
        // a full buffer here: send_plain counted what it dropped
        self.send_plain(socket, plain_from..total, &mut done);
        self.cleared(done)
    }

    fn cleared(&mut self, done: Flushed) -> Flushed {
        self.queued.clear();
        self.bytes.clear();
        done
    }

    /// Send `range` of the queue as plain datagrams (`sendmmsg`); true when the socket's
    /// buffer is full (the rest of the batch is then dropped by the caller).
    fn send_plain(
        &self,
        socket: &UdpSocket,
        range: std::ops::Range<usize>,
        done: &mut Flushed,
    ) -> bool {
        let mut at = range.start;
        while at < range.end {
            let chunk = &self.queued[at..(at + PER_CALL).min(range.end)];
            done.calls += 1;
            match send_chunk(socket, &self.bytes, chunk) {
                Ok(n) if n > 0 => {
                    done.sent += n;
                    done.sent_bytes += chunk[..n].iter().map(|&(_, _, len)| len).sum::<usize>();
                    at += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    done.dropped += range.end - at;
                    return true;
                }
                // the first datagram of the chunk was refused: drop it, send the rest
                _ => {
                    done.dropped += 1;
                    at += 1;
                }
            }
        }
        false
    }
}

/// How many datagrams from the start of `queued` can go as one GSO send: to one destination,
/// all of the first one's size but the last (which may be shorter), within the kernel's limits.
fn gso_run(queued: &[(SocketAddr, usize, usize)]) -> usize {
    let Some(&(to, _, size)) = queued.first() else {
        return 0;
    };
    if size == 0 {
        return 1;
    }
    let mut bytes = size;
    let mut n = 1;
    for &(next_to, _, len) in &queued[1..] {
        if next_to != to || len > size || len == 0 || n == GSO_SEGMENTS || bytes + len > GSO_BYTES {
            break;
        }
        n += 1;
        bytes += len;
        if len < size {
            break;
        }
    }
    n
}

/// The GSO run of `first_len` datagrams at `first` and the runs right after it with the same
/// segment size, as (start, length) in `queued`: what one `sendmmsg` carries (the kernel's
/// `UDP_SEGMENT` control message is the same for every message of the call).
fn gso_group(
    queued: &[(SocketAddr, usize, usize)],
    first: usize,
    first_len: usize,
) -> Vec<(usize, usize)> {
    let size = queued[first].2;
    let mut group = vec![(first, first_len)];
    let mut next = first + first_len;
    while group.len() < PER_CALL && next < queued.len() {
        let run = gso_run(&queued[next..]);
        if run < 2 || queued[next].2 != size {
            break;
        }
        group.push((next, run));
        next += run;
    }
    group
}

/// The GSO runs of `group` (see [`gso_group`]; each back to back in `bytes`, one destination)
/// in one `sendmmsg`: how many runs the kernel took.
fn send_gso(
    socket: &UdpSocket,
    bytes: &[u8],
    queued: &[(SocketAddr, usize, usize)],
    group: &[(usize, usize)],
) -> io::Result<usize> {
    use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let Some(&(first, _)) = group.first() else {
        return Ok(0);
    };
    let segment =
        u16::try_from(queued[first].2).map_err(|_| io::Error::from_raw_os_error(EINVAL))?;
    let iovs: Vec<[IoSlice<'_>; 1]> = group
        .iter()
        .map(|&(start, len)| {
            let (_, from, _) = queued[start];
            let (_, last_start, last_len) = queued[start + len - 1];
            [IoSlice::new(&bytes[from..last_start + last_len])]
        })
        .collect();
    let addrs: Vec<Option<SockaddrStorage>> = group
        .iter()
        .map(|&(start, _)| Some(SockaddrStorage::from(queued[start].0)))
        .collect();
    let cmsgs = [ControlMessage::UdpGsoSegments(&segment)];
    let mut headers =
        MultiHeaders::<SockaddrStorage>::preallocate(group.len(), Some(nix::cmsg_space!(u16)));
    sendmmsg(
        socket.as_raw_fd(),
        &mut headers,
        &iovs,
        &addrs,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
    )
    .map(|sent| sent.count())
    .map_err(|e| io::Error::from_raw_os_error(e as i32))
}

const EIO: i32 = nix::errno::Errno::EIO as i32;
const EINVAL: i32 = nix::errno::Errno::EINVAL as i32;

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
            (flushed.sent, flushed.sent_bytes, flushed.dropped),
            (151, bytes, 1)
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

    fn queue(sizes: &[(u16, usize)]) -> Vec<(SocketAddr, usize, usize)> {
        let mut at = 0;
        sizes
            .iter()
            .map(|&(port, len)| {
                at += len;
                (SocketAddr::from(([127, 0, 0, 1], port)), at - len, len)
            })
            .collect()
    }

    #[test]
    fn gso_runs_are_one_destination_one_size_and_a_shorter_last() {
        // a frame's three full packets and its shorter last one; then the next frame
        assert_eq!(
            gso_run(&queue(&[
                (1, 1228),
                (1, 1228),
                (1, 1228),
                (1, 900),
                (1, 1228)
            ])),
            4
        );
        // another destination, or a longer datagram, ends a run
        assert_eq!(gso_run(&queue(&[(1, 1228), (1, 1228), (2, 1228)])), 2);
        assert_eq!(gso_run(&queue(&[(1, 117), (1, 1228)])), 1);
        // audio then video to one subscriber: nothing to join
        assert_eq!(gso_run(&queue(&[(1, 117), (1, 123)])), 1);
        assert_eq!(gso_run(&queue(&[(1, 0), (1, 0)])), 1);
        assert_eq!(gso_run(&[]), 0);
        // the kernel's limits: 64 segments, 65,000 bytes
        assert_eq!(gso_run(&queue(&[(1, 100); 100])), GSO_SEGMENTS);
        assert_eq!(gso_run(&queue(&[(1, 1400); 60])), 46);
    }

    #[tokio::test]
    async fn a_refused_destination_does_not_turn_gso_off() {
        let out = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to_a = a.local_addr().unwrap();
        let mut batch = SendBatch::default();
        // port 0: the kernel answers EINVAL, as it does for a GSO send it cannot do
        for _ in 0..3 {
            batch.push("127.0.0.1:0".parse().unwrap(), &[1; 1000]);
        }
        for k in 0..3u8 {
            batch.push(to_a, &[k; 1000]);
        }
        let flushed = batch.flush(&out);
        assert_eq!((flushed.sent, flushed.dropped), (3, 3));
        assert_eq!(
            flushed.segmented, 3,
            "the good run still went as one GSO send"
        );
        assert!(!batch.no_gso);
        let mut buf = [0u8; 2048];
        for k in 0..3u8 {
            let n = a.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], &[k; 1000][..]);
        }
    }

    #[tokio::test]
    async fn a_frame_forwarded_to_each_subscriber_goes_in_one_call_and_a_refused_one_alone() {
        let out = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut subscribers = Vec::new();
        for _ in 0..5 {
            subscribers.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        }
        // one frame (two full packets and a shorter last) to each of five subscribers
        let frame = |k: u8| [vec![k; 1200], vec![k + 1; 1200], vec![k + 2; 700]];
        let mut batch = SendBatch::default();
        for (i, s) in subscribers.iter().enumerate() {
            for d in frame(10 * i as u8) {
                batch.push(s.local_addr().unwrap(), &d);
            }
        }
        let flushed = batch.flush(&out);
        assert_eq!(
            (flushed.sent, flushed.segmented, flushed.dropped),
            (15, 15, 0)
        );
        assert_eq!(
            flushed.calls, 1,
            "five GSO runs of one segment size: one sendmmsg"
        );
        let mut buf = [0u8; 2048];
        for (i, s) in subscribers.iter().enumerate() {
            for d in frame(10 * i as u8) {
                let n = s.recv(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], &d[..]);
            }
        }
        // a refused destination between two good ones: the call stops at it, it alone is
        // dropped (after its plain retry), the one after it still goes and GSO stays on
        let refused: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for (i, to) in [
            subscribers[0].local_addr().unwrap(),
            refused,
            subscribers[1].local_addr().unwrap(),
        ]
        .into_iter()
        .enumerate()
        {
            for d in frame(100 + 10 * i as u8) {
                batch.push(to, &d);
            }
        }
        let flushed = batch.flush(&out);
        assert_eq!(
            (flushed.sent, flushed.segmented, flushed.dropped),
            (6, 6, 3)
        );
        assert!(!batch.no_gso);
        for (s, k) in [(&subscribers[0], 100), (&subscribers[1], 120)] {
            for d in frame(k) {
                let n = s.recv(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], &d[..]);
            }
        }
    }

    #[tokio::test]
    async fn runs_sent_with_gso_arrive_as_the_datagrams_they_were() {
        let out = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut batch = SendBatch::default();
        // per destination: frames of four 1200-byte packets and a 700-byte last, audio between
        let mut expected_a = Vec::new();
        let mut expected_b = Vec::new();
        for frame in 0..20u8 {
            for (to, expected) in [(to_a, &mut expected_a), (to_b, &mut expected_b)] {
                for k in 0..5u8 {
                    let len = if k == 4 { 700 } else { 1200 };
                    let d = vec![frame.wrapping_mul(5).wrapping_add(k); len];
                    batch.push(to, &d);
                    expected.push(d);
                }
                let audio = vec![200 + frame; 117];
                batch.push(to, &audio);
                expected.push(audio);
            }
        }
        let flushed = batch.flush(&out);
        assert_eq!((flushed.sent, flushed.dropped), (240, 0));
        assert_eq!(flushed.segmented, 200, "every frame went as one GSO send");
        let mut buf = [0u8; 2048];
        for (socket, expected) in [(&a, expected_a), (&b, expected_b)] {
            for d in expected {
                let n = socket.recv(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], &d[..]);
            }
        }
    }
}
