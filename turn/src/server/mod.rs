//! The sockets around [`TurnCore`]: the UDP listener, TCP client connections (RFC 8656 §3.1:
//! STUN messages and padded ChannelData framed on the stream), and one UDP relay socket per
//! allocation from the relay port range. One loop task owns the core ([`core_loop`]); readers
//! feed it events.

mod core_loop;
mod counters;

use core_loop::Loop;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tidecast_common::metrics::Registry;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::core::{FiveTuple, Transport, TurnCore};
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
        let lp = Loop::new(core, udp, &listeners, events, registry);
        Ok((server, lp.run(rx)))
    }
}

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
