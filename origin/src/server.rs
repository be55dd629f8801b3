//! The origin's HTTP shell (hyper): routes requests to the packager state and renders
//! playlists, segments, JSON, metrics and the player demo.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use subtle::ConstantTimeEq;
use tidecast_common::config::Config;
use tidecast_common::keys::is_valid_stream_name;
use tidecast_common::metrics::Registry;
use tidecast_common::{LiveEvent, TrackKind};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::demo::Demo;
use crate::packager::{StreamTable, WindowSettings};
use crate::playlist;

/// Shared origin state.
pub struct Origin {
    table: Mutex<StreamTable>,
    push_token: String,
    registry: Registry,
    demo: Demo,
}

/// How the rest of the process holds the origin.
pub type OriginHandle = Arc<Origin>;

type Body = Full<Bytes>;

/// Largest pushed object (a segment of a high-bitrate rung is a few MB).
const MAX_PUSH_BODY: usize = 64 * 1024 * 1024;
const SEGMENT_CACHE: &str = "public, max-age=86400, immutable";
const PLAYLIST_CACHE: &str = "public, max-age=1";
const NOT_FOUND_CACHE: &str = "public, max-age=1";

/// What a request was for (metric label).
#[derive(Debug, Clone, Copy)]
enum RouteKind {
    Master,
    Media,
    Init,
    Segment,
    Api,
    Demo,
    Other,
}

impl RouteKind {
    fn as_str(self) -> &'static str {
        match self {
            RouteKind::Master => "master",
            RouteKind::Media => "media_playlist",
            RouteKind::Init => "init",
            RouteKind::Segment => "segment",
            RouteKind::Api => "api",
            RouteKind::Demo => "demo",
            RouteKind::Other => "other",
        }
    }
}

impl Origin {
    /// Build the origin from config.
    pub fn new(config: &Config, registry: &Registry) -> OriginHandle {
        let settings = WindowSettings {
            window: config.origin.window_segments.max(3),
            grace: config.origin.grace_segments,
            target: Duration::from_millis(config.ladder.segment_ms.max(100)),
            ended_ttl: Duration::from_secs(config.origin.ended_stream_ttl_secs),
        };
        Arc::new(Origin {
            table: Mutex::new(StreamTable::new(settings)),
            registry: registry.clone(),
            push_token: config.origin.push_token.clone(),
            demo: Demo::new(config.origin.demo_dir.clone()),
        })
    }

    fn table(&self) -> MutexGuard<'_, StreamTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A channel ladders in this process send their output to; a task applies it.
    pub fn event_sender(self: &Arc<Self>) -> mpsc::Sender<LiveEvent> {
        let (tx, mut rx) = mpsc::channel::<LiveEvent>(4096);
        let origin = self.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                origin.apply(event);
            }
        });
        tx
    }

    /// Apply one live event now.
    pub fn apply(&self, event: LiveEvent) {
        self.table().apply(event, Instant::now());
    }

    /// Serve HTTP forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        info!(addr = ?listener.local_addr().ok(), "origin http listening");
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!("http accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let origin = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let origin = origin.clone();
                    async move {
                        if req.uri().path().starts_with("/ingest/") {
                            return Ok::<_, Infallible>(origin.push(req).await);
                        }
                        Ok(origin.handle(req, peer))
                    }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(socket), service)
                    .await
                {
                    debug!(%peer, "http connection ended: {e}");
                }
            });
        }
    }

    /// CMAF pushed by a remote ladder (`tidecast ingest`), see `tidecast_common::push`.
    async fn push(&self, req: Request<Incoming>) -> Response<Body> {
        let status = |code: StatusCode, why: &'static str| {
            self.registry
                .counter(
                    "tidecast_origin_push_requests_total",
                    "CMAF push requests from remote ladders, by status.",
                    &[("status", code.as_str())],
                )
                .inc();
            text(code, why)
        };
        if self.push_token.is_empty() {
            return status(
                StatusCode::FORBIDDEN,
                "push disabled: set origin.push_token\n",
            );
        }
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = presented
            .as_bytes()
            .ct_eq(self.push_token.as_bytes())
            .into();
        if !ok {
            warn!("push refused: bad token");
            return status(StatusCode::UNAUTHORIZED, "bad push token\n");
        }
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        let body = match Limited::new(req.into_body(), MAX_PUSH_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                warn!(%path, "push body: {e}");
                return status(StatusCode::PAYLOAD_TOO_LARGE, "body too large or broken\n");
            }
        };
        match tidecast_common::push::decode(&method, &path, query.as_deref(), body) {
            Ok(event) => {
                self.apply(event);
                status(StatusCode::NO_CONTENT, "")
            }
            Err(e) => {
                warn!(%method, %path, "push refused: {e}");
                status(StatusCode::BAD_REQUEST, "bad push request\n")
            }
        }
    }

    fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let (kind, mut resp) = if req.method() == Method::OPTIONS {
            (RouteKind::Other, empty(StatusCode::NO_CONTENT))
        } else if req.method() != Method::GET && req.method() != Method::HEAD {
            (
                RouteKind::Other,
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            )
        } else {
            self.route(req.uri().path(), peer)
        };
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Age, Date, Content-Length"),
        );
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
            h.insert(header::DATE, v);
        }
        self.registry
            .counter(
                "tidecast_origin_http_requests_total",
                "HTTP requests served by the origin, by route and status.",
                &[("route", kind.as_str()), ("status", resp.status().as_str())],
            )
            .inc();
        if req.method() == Method::HEAD {
            *resp.body_mut() = Full::new(Bytes::new());
        }
        resp
    }

    fn route(&self, path: &str, peer: SocketAddr) -> (RouteKind, Response<Body>) {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["healthz"] => (RouteKind::Other, text(StatusCode::OK, "ok\n")),
            ["metrics"] => (RouteKind::Other, self.metrics()),
            ["api", "streams"] => (RouteKind::Api, self.api_streams()),
            [""] => (RouteKind::Demo, redirect("/demo/")),
            ["demo"] => (RouteKind::Demo, redirect("/demo/")),
            ["demo", file] => (RouteKind::Demo, self.demo.serve(file)),
            ["live", stream, "master.m3u8"] => (RouteKind::Master, self.master(stream, peer)),
            ["live", stream, rendition, file] => self.rendition_file(stream, rendition, file, peer),
            _ => (RouteKind::Other, not_found()),
        }
    }

    fn master(&self, stream: &str, peer: SocketAddr) -> Response<Body> {
        if !is_valid_stream_name(stream) {
            return not_found();
        }
        let mut table = self.table();
        let Some(s) = table.get_mut(stream) else {
            return not_found();
        };
        s.touch_viewer(&peer.ip().to_string(), Instant::now());
        match playlist::master(s) {
            Some(text) => playlist_response(text),
            None => not_found(),
        }
    }

    fn rendition_file(
        &self,
        stream: &str,
        rendition: &str,
        file: &str,
        peer: SocketAddr,
    ) -> (RouteKind, Response<Body>) {
        if !is_valid_stream_name(stream) || !is_valid_stream_name(rendition) {
            return (RouteKind::Other, not_found());
        }
        let mut table = self.table();
        let settings = table.settings();
        let Some(s) = table.get_mut(stream) else {
            return (RouteKind::Other, not_found());
        };
        if file == "media.m3u8" {
            s.touch_viewer(&peer.ip().to_string(), Instant::now());
            return match playlist::media(s, rendition, &settings) {
                Some(text) => (RouteKind::Media, playlist_response(text)),
                None => (RouteKind::Media, not_found()),
            };
        }
        let Some(track) = s.rendition(rendition) else {
            return (RouteKind::Other, not_found());
        };
        let mime = match track.declared.kind {
            TrackKind::Audio => "audio/mp4",
            _ => "video/mp4",
        };
        if file == "init.mp4" {
            return match track.inits.get(&track.disc) {
                Some(data) => (RouteKind::Init, media_response(data.clone(), mime)),
                None => (RouteKind::Init, not_found()),
            };
        }
        if let Some(disc) = file
            .strip_prefix("init-")
            .and_then(|f| f.strip_suffix(".mp4"))
            .and_then(|d| d.parse::<u64>().ok())
        {
            return match track.inits.get(&disc) {
                Some(data) => (RouteKind::Init, media_response(data.clone(), mime)),
                None => (RouteKind::Init, not_found()),
            };
        }
        if let Some(msn) = file
            .strip_suffix(".m4s")
            .and_then(|m| m.parse::<u64>().ok())
        {
            return match track.segment(msn) {
                Some(seg) => (
                    RouteKind::Segment,
                    media_response(seg.data.clone(), "video/iso.segment"),
                ),
                None => (RouteKind::Segment, not_found()),
            };
        }
        (RouteKind::Other, not_found())
    }

    fn api_streams(&self) -> Response<Body> {
        let now = Instant::now();
        let table = self.table();
        let streams: Vec<serde_json::Value> = table
            .streams()
            .map(|s| {
                let renditions: Vec<serde_json::Value> = s
                    .current
                    .iter()
                    .filter_map(|n| s.renditions.get(n))
                    .map(|t| {
                        let (peak, avg) = t.bitrates();
                        serde_json::json!({
                            "name": t.declared.name,
                            "kind": t.declared.kind.as_str(),
                            "width": t.info.as_ref().map(|i| i.width).unwrap_or(t.declared.width),
                            "height": t.info.as_ref().map(|i| i.height).unwrap_or(t.declared.height),
                            "codec": t.info.as_ref().map(|i| i.codec.clone()),
                            "frame_rate": t.frame_rate(),
                            "bandwidth": peak,
                            "average_bandwidth": avg,
                            "playlist": format!("/live/{}/{}/media.m3u8", s.name, t.declared.name),
                        })
                    })
                    .collect();
                let started: chrono::DateTime<chrono::Utc> = s.started_at.into();
                serde_json::json!({
                    "name": s.name,
                    "live": s.live,
                    "ready": s.is_ready(),
                    "session": s.session,
                    "sessions": s.sessions,
                    "started_at": started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "viewers": s.viewers(now),
                    "master": format!("/live/{}/master.m3u8", s.name),
                    "renditions": renditions,
                })
            })
            .collect();
        drop(table);
        let body = serde_json::to_vec_pretty(&serde_json::json!({ "streams": streams }))
            .unwrap_or_default();
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        set(&mut resp, header::CONTENT_TYPE, "application/json");
        set(&mut resp, header::CACHE_CONTROL, "no-cache");
        resp
    }

    fn metrics(&self) -> Response<Body> {
        let now = Instant::now();
        {
            let table = self.table();
            let r = &self.registry;
            let c = table.counters();
            r.gauge(
                "tidecast_origin_streams",
                "Streams known to the origin.",
                &[],
            )
            .set(table.streams().count() as i64);
            r.gauge(
                "tidecast_origin_live_streams",
                "Streams with a live publisher.",
                &[],
            )
            .set(table.streams().filter(|s| s.live).count() as i64);
            r.counter(
                "tidecast_origin_segments_total",
                "Media segments packaged.",
                &[],
            )
            .set(c.segments as i64);
            r.counter(
                "tidecast_origin_segment_bytes_total",
                "Media segment bytes packaged.",
                &[],
            )
            .set(c.segment_bytes as i64);
            r.counter(
                "tidecast_origin_rejected_events_total",
                "Live events dropped (unknown stream/rendition, bad init segment).",
                &[],
            )
            .set(c.rejected as i64);
            for s in table.streams() {
                r.gauge(
                    "tidecast_origin_viewers",
                    "Distinct clients that fetched a playlist in the last 30 s.",
                    &[("stream", &s.name)],
                )
                .set(s.viewers(now) as i64);
                for name in &s.current {
                    if let Some(t) = s.renditions.get(name) {
                        let (_, avg) = t.bitrates();
                        r.gauge(
                            "tidecast_origin_rendition_bitrate_bps",
                            "Average bitrate of a rendition over the retained window.",
                            &[("stream", &s.name), ("rendition", name)],
                        )
                        .set(avg as i64);
                    }
                }
            }
        }
        let mut resp = Response::new(Full::new(Bytes::from(self.registry.render())));
        set(&mut resp, header::CONTENT_TYPE, "text/plain; version=0.0.4");
        set(&mut resp, header::CACHE_CONTROL, "no-cache");
        resp
    }
}

fn set(resp: &mut Response<Body>, name: header::HeaderName, value: &'static str) {
    resp.headers_mut()
        .insert(name, HeaderValue::from_static(value));
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    set(&mut resp, header::CONTENT_TYPE, "text/plain; charset=utf-8");
    resp
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

pub(crate) fn not_found() -> Response<Body> {
    let mut resp = text(StatusCode::NOT_FOUND, "not found\n");
    set(&mut resp, header::CACHE_CONTROL, NOT_FOUND_CACHE);
    resp
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut resp = empty(StatusCode::FOUND);
    set(&mut resp, header::LOCATION, to);
    resp
}

fn playlist_response(text: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    set(
        &mut resp,
        header::CONTENT_TYPE,
        "application/vnd.apple.mpegurl",
    );
    set(&mut resp, header::CACHE_CONTROL, PLAYLIST_CACHE);
    resp
}

fn media_response(data: Bytes, mime: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(data));
    set(&mut resp, header::CONTENT_TYPE, mime);
    set(&mut resp, header::CACHE_CONTROL, SEGMENT_CACHE);
    resp
}
