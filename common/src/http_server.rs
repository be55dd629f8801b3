//! The HTTP/1.1 accept loop every tidecast HTTP server (origin, edge) runs: one task per
//! connection, `TCP_NODELAY`, a header-read timeout, accept errors logged and retried. The
//! server supplies only `handle(request, peer) -> response`. [`bind`] makes the listeners of
//! every role (HTTP and RTMP) with a listen backlog sized for bursts.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::body::Body;
use crate::lifecycle::{Drain, Readiness, Work};
use crate::zero_copy::{FileBodies, SendfileStream};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /api/time`: this node's clock (DASH `UTCTiming`, `urn:mpeg:dash:utc:http-iso:2014`),
/// never cached. Every role answers it itself, so a player given an MPD by an edge in another
/// region never needs to reach the origin.
pub fn time_response(now: std::time::SystemTime) -> Response<Body> {
    use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
    let mut resp = Response::new(crate::body::full(crate::time::rfc3339_millis(now)));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The default listen backlog: a burst of this many simultaneous connects waits in the kernel's
/// accept queue instead of being dropped or reset (the kernel caps it at `net.core.somaxconn`).
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;

/// Bind a TCP listener on `addr` (`host:port`, resolved) with `backlog` pending connections.
/// `std`'s and tokio's `bind` (mio 1.2) listen with 128, which a burst of players (500 joining at once
/// after a social post, or a load test) overflows: the kernel then drops or resets connects.
pub async fn bind(addr: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let mut last = None;
    for resolved in tokio::net::lookup_host(addr).await? {
        let socket = if resolved.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(resolved)
            .and_then(|()| socket.listen(backlog.max(1)))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr}: no address to listen on"),
        )
    }))
}

/// Serve `handle` on `listener` until `readiness` drains; `what` names the server in logs.
/// Bodies registered in `file_bodies` go out with `sendfile` (see [`crate::zero_copy`]).
///
/// Draining: the listener keeps accepting for the drain's delay (load balancers notice
/// `/readyz` meanwhile), then closes; each connection ends after the response under way
/// (keep-alive stops). The loop and every connection are work the drain waits for.
pub async fn serve_with<H, F>(
    listener: TcpListener,
    what: &'static str,
    file_bodies: Option<Arc<FileBodies>>,
    readiness: &Readiness,
    handle: H,
) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let _work = readiness.track();
    let drain = readiness.drain_signal();
    let stop = stop_after_delay(drain.clone());
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!(server = what, "http accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let handle = handle.clone();
        let service = hyper::service::service_fn(move |req| {
            let response = handle(req, peer);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let (drain, work) = (drain.clone(), readiness.track());
        match &file_bodies {
            Some(bodies) => {
                let io = SendfileStream::new(socket, bodies.clone());
                tokio::spawn(serve_connection(io, service, what, peer, drain, work));
            }
            None => {
                tokio::spawn(serve_connection(socket, service, what, peer, drain, work));
            }
        }
    }
    info!(server = what, "draining: no new connections");
    Ok(())
}

/// Resolves once the drain started and its delay passed.
async fn stop_after_delay(mut drain: Drain) {
    drain.started().await;
    tokio::time::sleep(drain.delay).await;
}

async fn serve_connection<IO, S>(
    io: IO,
    service: S,
    what: &'static str,
    peer: SocketAddr,
    drain: Drain,
    _work: Work,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Send,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let stop = stop_after_delay(drain);
    tokio::pin!(stop);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = &mut stop => {
            // the response under way is finished, then the connection closes
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(server = what, %peer, "http connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_takes_a_burst_without_accepting() {
        let listener = bind("127.0.0.1:0", 2048).await.unwrap();
        let addr = listener.local_addr().unwrap();
        // 600 connects complete in the kernel while nobody accepts (a 128 backlog drops them)
        let mut clients = Vec::new();
        for _ in 0..600 {
            let c =
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                    .await
                    .expect("connect completes without accept")
                    .unwrap();
            clients.push(c);
        }
        assert_eq!(clients.len(), 600);
        assert!(bind("127.0.0.1", 16).await.is_err(), "no port");
    }
}
