//! ICE-TCP for clients whose networks block UDP: the SFU announces passive TCP host candidates
//! (RFC 6544) on the same port as UDP, and carries STUN, DTLS and SRTP over each accepted
//! connection in RFC 4571 frames (a 16-bit length, then the packet). Each connection is a reader
//! task handing frames to the SFU loop and a writer task taking frames from it; the loop treats
//! them as datagrams with `Protocol::Tcp`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tracing::debug;

/// Largest frame accepted (a STUN, DTLS or SRTP packet fits well within it).
pub const MAX_FRAME: usize = 4096;
/// A connection that sends nothing for this long is closed (ICE consent checks come every few
/// seconds on a live one).
const IDLE: Duration = Duration::from_secs(30);
/// Connections at once.
const MAX_CONNECTIONS: usize = 1024;
/// Frames queued towards a slow client before newer ones are dropped (as UDP would).
const WRITE_QUEUE: usize = 512;

/// From the connections to the SFU loop.
#[derive(Debug)]
pub enum TcpEvent {
    /// A client connected: frames for it go to `writer`.
    Opened {
        /// Our address.
        local: SocketAddr,
        /// The client's.
        remote: SocketAddr,
        /// Frames to send.
        writer: mpsc::Sender<Bytes>,
    },
    /// A frame arrived.
    Frame {
        /// Our address.
        local: SocketAddr,
        /// The client's.
        remote: SocketAddr,
        /// The packet.
        data: Bytes,
    },
    /// The connection ended.
    Closed {
        /// Our address.
        local: SocketAddr,
        /// The client's.
        remote: SocketAddr,
    },
}

/// Accept ICE-TCP connections on `listener` forever.
pub async fn accept(listener: TcpListener, events: mpsc::Sender<TcpEvent>) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!("ICE-TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%remote, "ICE-TCP: too many connections, refused");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let events = events.clone();
        tokio::spawn(async move {
            connection(stream, local, remote, events).await;
            drop(permit);
        });
    }
}

async fn connection(
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    events: mpsc::Sender<TcpEvent>,
) {
    let (mut read, mut write) = stream.into_split();
    let (writer, mut frames) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    if events
        .send(TcpEvent::Opened {
            local,
            remote,
            writer,
        })
        .await
        .is_err()
    {
        return;
    }
    let writing = tokio::spawn(async move {
        while let Some(frame) = frames.recv().await {
            let Ok(len) = u16::try_from(frame.len()) else {
                continue;
            };
            if write.write_all(&len.to_be_bytes()).await.is_err()
                || write.write_all(&frame).await.is_err()
            {
                return;
            }
        }
    });
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let len = match tokio::time::timeout(IDLE, read.read_u16()).await {
            Ok(Ok(n)) => usize::from(n),
            _ => break,
        };
        if len == 0 || len > MAX_FRAME {
            debug!(%remote, len, "ICE-TCP: bad frame length, closing");
            break;
        }
        match tokio::time::timeout(IDLE, read.read_exact(&mut buf[..len])).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let data = Bytes::copy_from_slice(&buf[..len]);
        if events
            .send(TcpEvent::Frame {
                local,
                remote,
                data,
            })
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = events.send(TcpEvent::Closed { local, remote }).await;
    writing.abort();
}
