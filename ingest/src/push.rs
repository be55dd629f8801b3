//! Pushes a ladder's live events to a remote origin over HTTP (`tidecast ingest` with
//! `ingest.origin_url`), using the protocol in `tidecast_common::push`. One task sends events in
//! order over a kept-alive connection; failed requests are retried with backoff.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tidecast_common::lifecycle::Readiness;
use tidecast_common::metrics::Registry;
use tidecast_common::push::{encode, PushRequest};
use tidecast_common::LiveEvent;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::IngestError;

const ATTEMPTS: u32 = 6;

/// Start the pusher; ladders send their events into the returned channel.
pub fn spawn_pusher(
    url: &str,
    token: &str,
    registry: &Registry,
    readiness: &Readiness,
) -> Result<mpsc::Sender<LiveEvent>, IngestError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| IngestError::Refused(format!("ingest.origin_url {url:?}: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(IngestError::Refused(format!(
            "ingest.origin_url {url:?}: only http:// is supported"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| IngestError::Refused(format!("ingest.origin_url {url:?}: no host")))?
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let authority = format!("{host}:{port}");
    let auth = format!("Bearer {token}");
    let failures = registry.counter(
        "tidecast_ingest_push_failures_total",
        "Live events that could not be pushed to the remote origin after retries.",
        &[],
    );
    let pushed = registry.counter(
        "tidecast_ingest_push_requests_total",
        "Push requests accepted by the remote origin.",
        &[],
    );
    let (tx, mut rx) = mpsc::channel::<LiveEvent>(4096);
    // a draining ingest waits until each stream's end is pushed (or given up on)
    let mut sessions = tidecast_common::lifecycle::SessionWork::new(readiness);
    tokio::spawn(async move {
        let mut conn: Option<SendRequest<Full<Bytes>>> = None;
        while let Some(event) = rx.recv().await {
            let _ended = sessions.on_event(&event);
            let Some(req) = encode(&event) else { continue };
            let mut delay = Duration::from_millis(100);
            let mut sent = false;
            for attempt in 1..=ATTEMPTS {
                match send(&mut conn, &authority, &auth, &req).await {
                    Ok(accepted) => {
                        sent = accepted;
                        if accepted {
                            pushed.inc();
                        }
                        break;
                    }
                    Err(e) => {
                        conn = None;
                        debug!(attempt, path = %req.path, "push failed: {e}");
                        if attempt < ATTEMPTS {
                            tokio::time::sleep(delay).await;
                            delay *= 2;
                        } else {
                            warn!(path = %req.path, "giving up pushing to the origin: {e}");
                        }
                    }
                }
            }
            if !sent {
                failures.inc();
            }
        }
    });
    Ok(tx)
}

/// Push the same events to several origins (`ingest.origin_url` = `http://a:8080,http://b:8080`),
/// so any of them can serve the stream. Each origin has its own pusher and queue; an origin
/// that is down or slow has events dropped for it (counted) rather than holding up the others.
pub fn spawn_fanout(
    urls: &[&str],
    token: &str,
    registry: &Registry,
    readiness: &Readiness,
) -> Result<mpsc::Sender<LiveEvent>, IngestError> {
    if let [one] = urls {
        return spawn_pusher(one, token, registry, readiness);
    }
    let pushers = urls
        .iter()
        .map(|u| spawn_pusher(u, token, registry, readiness).map(|tx| (u.to_string(), tx)))
        .collect::<Result<Vec<_>, _>>()?;
    let dropped = registry.counter(
        "tidecast_ingest_push_dropped_total",
        "Live events not queued for an origin whose push queue was full (origin down or slow).",
        &[],
    );
    let (tx, mut rx) = mpsc::channel::<LiveEvent>(4096);
    tokio::spawn(async move {
        let mut full: Vec<bool> = vec![false; pushers.len()];
        while let Some(event) = rx.recv().await {
            for (i, (url, pusher)) in pushers.iter().enumerate() {
                match pusher.try_send(event.clone()) {
                    Ok(()) => {
                        if full[i] {
                            full[i] = false;
                            tracing::info!(origin = %url, "origin push queue draining again");
                        }
                    }
                    Err(_) => {
                        dropped.inc();
                        if !full[i] {
                            full[i] = true;
                            warn!(origin = %url, "origin push queue full: dropping its events");
                        }
                    }
                }
            }
        }
    });
    Ok(tx)
}

async fn send(
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    authority: &str,
    auth: &str,
    req: &PushRequest,
) -> Result<bool, String> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|e| format!("connecting to {authority}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *conn = Some(sender);
    }
    let sender = conn.as_mut().ok_or("no connection")?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let request = Request::builder()
        .method(req.method.as_str())
        .uri(&req.path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::AUTHORIZATION, auth)
        .body(Full::new(req.body.clone()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .map_err(|_| "origin did not answer in 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(true)
    } else if resp.status().is_client_error() {
        // the origin refused this request (bad token, bad data): retrying will not help
        warn!(status = %resp.status(), path = %req.path, "origin refused pushed data");
        Ok(false)
    } else {
        Err(format!("origin answered {}", resp.status()))
    }
}
