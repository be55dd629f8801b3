//! The origin's HTTP shell (hyper): routes requests to the packager state and renders
//! playlists, segments, JSON, metrics and the player demo.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};
use tidecast_common::config::Config;
use tidecast_common::metrics::{Metric, Registry};
use tidecast_common::service::{Readiness, ResponseFuture, Routes, Service};
use tidecast_common::store::SharedStore;
use tidecast_common::LiveEvent;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::archiver::Archiver;
use crate::http::{full, not_found, redirect, set, text, Body};
use crate::packager::{StreamTable, WindowSettings};
use tidecast_common::demo::Demo;

/// Shared origin state.
pub struct Origin {
    table: Mutex<StreamTable>,
    settings: WindowSettings,
    /// Bumped after every applied event; blocked requests re-check when it changes.
    changed: watch::Sender<u64>,
    blocked: Metric,
    push_token: String,
    registry: Registry,
    demo: Demo,
    archive: Option<Archiver>,
    /// Media playlists rendered at a packager version: a burst of blocked requests released
    /// by one part shares one rendering.
    playlists: Mutex<PlaylistCache>,
    /// Streams whose series `/metrics` rendered last time (their series go when they do).
    reported: Mutex<std::collections::BTreeSet<String>>,
    me: std::sync::Weak<Origin>,
}

/// Rendered media playlists by (stream, rendition, delta), with the version they were
/// rendered at.
#[derive(Default)]
pub(crate) struct PlaylistCache {
    entries: std::collections::HashMap<(String, String, bool), (u64, Bytes)>,
}

impl PlaylistCache {
    pub(crate) fn get(&self, key: &(String, String, bool), version: u64) -> Option<Bytes> {
        self.entries
            .get(key)
            .filter(|(v, _)| *v == version)
            .map(|(_, b)| b.clone())
    }

    pub(crate) fn put(&mut self, key: (String, String, bool), version: u64, text: Bytes) {
        if self.entries.len() > 4096 {
            self.entries.retain(|_, (v, _)| *v == version);
        }
        self.entries.insert(key, (version, text));
    }
}

/// How the rest of the process holds the origin.
pub type OriginHandle = Arc<Origin>;

/// Largest pushed object (a segment of a high-bitrate rung is a few MB).
const MAX_PUSH_BODY: usize = 64 * 1024 * 1024;

/// What a request was for (metric label).
#[derive(Debug, Clone, Copy)]
pub(crate) enum RouteKind {
    Master,
    Manifest,
    Media,
    Init,
    Segment,
    Part,
    Api,
    Vod,
    Demo,
    Other,
}

impl RouteKind {
    fn as_str(self) -> &'static str {
        match self {
            RouteKind::Master => "master",
            RouteKind::Manifest => "mpd",
            RouteKind::Media => "media_playlist",
            RouteKind::Init => "init",
            RouteKind::Segment => "segment",
            RouteKind::Part => "part",
            RouteKind::Api => "api",
            RouteKind::Vod => "vod",
            RouteKind::Demo => "demo",
            RouteKind::Other => "other",
        }
    }
}

impl Origin {
    /// Build the origin from config; with a store, every stream is archived to it (VOD) and
    /// `/vod/…` is served from it. Needs a tokio runtime when archiving.
    pub fn new(config: &Config, registry: &Registry, store: Option<SharedStore>) -> OriginHandle {
        let settings = WindowSettings {
            window: config.origin.window_segments.max(3),
            dvr: Duration::from_secs(config.origin.dvr_window_secs),
            part_target: config
                .ladder
                .part()
                .map(tidecast_common::config::part_target),
            grace: config.origin.grace_segments,
            target: Duration::from_millis(config.ladder.segment_ms.max(100)),
            ended_ttl: Duration::from_secs(config.origin.ended_stream_ttl_secs),
        };
        Arc::new_cyclic(|me| Origin {
            table: Mutex::new(StreamTable::new(settings)),
            settings,
            changed: watch::channel(0).0,
            blocked: registry.gauge(
                "tidecast_origin_blocked_requests",
                "LL-HLS playlist requests currently held until a segment or part exists.",
                &[],
            ),
            registry: registry.clone(),
            push_token: config.origin.push_token.clone(),
            demo: crate::demo::player(config.origin.demo_dir.clone()),
            playlists: Mutex::new(PlaylistCache::default()),
            reported: Mutex::default(),
            archive: store.map(|store| {
                Archiver::spawn(
                    store,
                    config.data_dir.join("spool"),
                    Duration::from_secs(config.origin.archive_retry_secs),
                    registry,
                )
            }),
            me: me.clone(),
        })
    }

    pub(crate) fn table(&self) -> MutexGuard<'_, StreamTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn settings(&self) -> WindowSettings {
        self.settings
    }

    /// An owning handle (for tasks that outlive a request handler borrow).
    pub(crate) fn handle(&self) -> OriginHandle {
        // `me` always upgrades while `&self` is alive: the Arc we were built in owns us
        self.me
            .upgrade()
            .unwrap_or_else(|| unreachable!("origin used after drop"))
    }

    /// Re-run `check` whenever the packager changes until it returns `Some`, or `timeout`.
    pub(crate) async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&mut StreamTable) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(v) = check(&mut self.table()) {
                return Some(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    /// Counts a held request in `tidecast_origin_blocked_requests` while alive.
    pub(crate) fn blocked_guard(&self) -> BlockedGuard {
        self.blocked.inc();
        BlockedGuard(self.blocked.clone())
    }

    /// A channel ladders in this process send their output to; a task applies it. A live
    /// session is work `readiness`'s drain waits for until its end has been applied (its
    /// playlists end with `#EXT-X-ENDLIST`, its last segments are on their way to the archive).
    pub fn event_sender(self: &Arc<Self>, readiness: &Readiness) -> mpsc::Sender<LiveEvent> {
        let (tx, mut rx) = mpsc::channel::<LiveEvent>(4096);
        let origin = self.clone();
        let mut sessions = tidecast_common::lifecycle::SessionWork::new(readiness);
        if let Some(archive) = &self.archive {
            archive.hold_drain(readiness);
        }
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let ended = sessions.on_event(&event);
                origin.apply(event);
                drop(ended);
            }
        });
        tx
    }

    /// Apply one live event now and wake held requests.
    pub fn apply(&self, event: LiveEvent) {
        {
            let mut table = self.table();
            table.apply(event, Instant::now());
            let outputs = table.take_outputs();
            if let Some(archive) = &self.archive {
                let writes = archive.recorder().on_outputs(&table, outputs);
                archive.submit(writes);
            }
        }
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The packager version (bumped after every applied event).
    pub(crate) fn version(&self) -> u64 {
        *self.changed.borrow()
    }

    pub(crate) fn playlist_cache(&self) -> MutexGuard<'_, PlaylistCache> {
        self.playlists.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The archive store, when archiving is on.
    pub(crate) fn archive_store(&self) -> Option<&SharedStore> {
        self.archive.as_ref().map(Archiver::store)
    }

    /// Serve HTTP forever.
    /// Serve HTTP forever on the shared service layer.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        readiness: &Readiness,
    ) -> std::io::Result<()> {
        let registry = self.registry.clone();
        if let Some(archive) = &self.archive {
            archive.hold_drain(readiness);
        }
        Service::new(self, &registry, readiness)
            .serve(listener)
            .await
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
        if !tidecast_common::service::bearer_matches(&req, &self.push_token) {
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

    async fn respond(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if req.uri().path().starts_with("/ingest/") {
            return self.push(req).await;
        }
        let (kind, resp) = self.route(req.uri().path(), req.uri().query(), peer).await;
        self.registry
            .counter(
                "tidecast_origin_http_requests_total",
                "HTTP requests served by the origin, by route and status.",
                &[("route", kind.as_str()), ("status", resp.status().as_str())],
            )
            .inc();
        resp
    }

    async fn route(
        &self,
        path: &str,
        query: Option<&str>,
        peer: SocketAddr,
    ) -> (RouteKind, Response<Body>) {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["api", "streams"] => (RouteKind::Api, self.api_streams()),
            [""] => (RouteKind::Demo, redirect("/demo/")),
            ["demo"] => (RouteKind::Demo, redirect("/demo/")),
            ["demo", file] => (RouteKind::Demo, self.demo.serve(file)),
            ["live", stream, "master.m3u8"] => (RouteKind::Master, self.master(stream, peer)),
            ["live", stream, "manifest.mpd"] => (RouteKind::Manifest, self.manifest(stream, peer)),
            ["vod", stream, session, file] => {
                (RouteKind::Vod, self.vod(stream, session, None, file).await)
            }
            ["vod", stream, session, rendition, file] => (
                RouteKind::Vod,
                self.vod(stream, session, Some(rendition), file).await,
            ),
            ["live", stream, rendition, file] => {
                self.rendition_file(stream, rendition, file, query, peer)
                    .await
            }
            _ => (RouteKind::Other, not_found()),
        }
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
                serde_json::json!({
                    "name": s.name,
                    "live": s.live,
                    "ready": s.is_ready(),
                    "session": s.session,
                    "sessions": s.sessions,
                    "started_at": tidecast_common::time::rfc3339_millis(s.started_at),
                    "viewers": s.viewers(now),
                    "master": format!("/live/{}/master.m3u8", s.name),
                    "dash": format!("/live/{}/manifest.mpd", s.name),
                    // the current session's archive (complete once it has ended)
                    "vod": self
                        .archive
                        .is_some()
                        .then(|| format!("/vod/{}/{}/master.m3u8", s.name, s.session)),
                    "renditions": renditions,
                })
            })
            .collect();
        drop(table);
        let body = serde_json::to_vec_pretty(&serde_json::json!({ "streams": streams }))
            .unwrap_or_default();
        let mut resp = Response::new(full(body));
        set(&mut resp, header::CONTENT_TYPE, "application/json");
        set(&mut resp, header::CACHE_CONTROL, "no-cache");
        resp
    }

    fn refresh_metrics(&self) {
        let now = Instant::now();
        {
            let mut table = self.table();
            table.expire(now);
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
            // a stream the origin forgot (ended longer than `ended_stream_ttl_secs` ago) takes
            // its series with it
            let now_known: std::collections::BTreeSet<String> =
                table.streams().map(|s| s.name.clone()).collect();
            let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            for gone in reported.difference(&now_known) {
                r.remove_labelled("stream", gone);
            }
            *reported = now_known;
        }
    }
}

impl Routes for Origin {
    fn role(&self) -> &'static str {
        "origin"
    }

    fn route(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> ResponseFuture {
        Box::pin(async move { self.respond(req, peer).await })
    }

    /// CMAF pushed by `tidecast ingest` (PUT/POST/DELETE under `/ingest/`).
    fn accepts(&self, _method: &Method, path: &str) -> bool {
        path.starts_with("/ingest/")
    }

    fn before_metrics(&self) {
        self.refresh_metrics();
    }
}

/// Decrements the blocked-requests gauge when the request is answered.
pub(crate) struct BlockedGuard(Metric);

impl Drop for BlockedGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
