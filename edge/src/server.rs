//! The edge's HTTP shell (hyper server + hyper client + moka): token check, cache lookup,
//! coalesced upstream fetch with failover, stale-if-error, response headers (`Age`, `Via`,
//! `X-Cache`), health checks and metrics. Decisions come from [`crate::policy`] and
//! [`crate::pool`]; coalescing from [`crate::flight`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tidecast_common::body::{Body, ChannelBody};
use tidecast_common::config::EdgeConfig;
use tidecast_common::metrics::{Metric, Registry};
use tidecast_common::service::{Readiness, ResponseFuture, Routes, Service};
use tidecast_common::token::{find_token, TokenError, TokenSigner};
use tidecast_common::zero_copy::{FileBacked, FileBodies};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::director::Director;
use crate::flight::{CoalescingTable, Flight, Head, Next, Role};
use crate::policy::{self, Freshness, PolicySettings};
use crate::pool::{stream_of, OriginPool};
use crate::upstream::age_header;

/// A response kept in the cache.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) head: Head,
    pub(crate) body: Bytes,
    pub(crate) stored_at: Instant,
    pub(crate) upstream_age: Duration,
    pub(crate) freshness: Freshness,
    /// the body's memfd copy, sent with `sendfile` (large bodies only)
    pub(crate) file: Option<FileBacked>,
}

/// How the response was served (the `X-Cache` header and metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheStatus {
    Hit,
    Miss,
    Coalesced,
    Stale,
}

impl CacheStatus {
    const ALL: [CacheStatus; 4] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Coalesced,
        CacheStatus::Stale,
    ];

    fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Coalesced => "COALESCED",
            CacheStatus::Stale => "STALE",
        }
    }
}

/// The series every request touches, resolved once at startup (a registry lookup formats
/// labels and takes the registry's lock).
struct HotMetrics {
    /// `tidecast_edge_requests_total{cache}`, indexed like [`CacheStatus::ALL`].
    requests: [Metric; 4],
    bytes_served: Metric,
    coalesced: Metric,
    stale_served: Metric,
}

impl HotMetrics {
    fn new(registry: &Registry, region: &str) -> HotMetrics {
        let region = ("region", region);
        HotMetrics {
            requests: CacheStatus::ALL.map(|status| {
                registry.counter(
                    "tidecast_edge_requests_total",
                    "Requests served by the edge, by cache status.",
                    &[region, ("cache", status.as_str())],
                )
            }),
            bytes_served: registry.counter(
                "tidecast_edge_bytes_served_total",
                "Body bytes sent to clients.",
                &[region],
            ),
            coalesced: registry.counter(
                "tidecast_edge_coalesced_total",
                "Requests that joined an upstream fetch already in progress.",
                &[region],
            ),
            stale_served: registry.counter(
                "tidecast_edge_stale_served_total",
                "Responses served stale because the upstream tiers failed.",
                &[region],
            ),
        }
    }

    fn requests(&self, status: CacheStatus) -> &Metric {
        &self.requests[status as usize]
    }
}

struct Expiry;

impl moka::Expiry<String, Arc<Stored>> for Expiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Stored>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        let f = &value.freshness;
        Some((f.ttl + f.stale_if_error).saturating_sub(value.upstream_age))
    }
}

/// The edge node.
pub struct Edge {
    pub(crate) config: EdgeConfig,
    pub(crate) policy: PolicySettings,
    pub(crate) pool: Mutex<OriginPool>,
    pub(crate) cache: moka::sync::Cache<String, Arc<Stored>>,
    pub(crate) flights: CoalescingTable,
    pub(crate) client: Client<HttpConnector, Empty<Bytes>>,
    signer: Option<TokenSigner>,
    pub(crate) registry: Registry,
    pub(crate) via: HeaderValue,
    director: Mutex<Director>,
    hot: HotMetrics,
    /// cached bodies the connections send with `sendfile`
    pub(crate) file_bodies: Arc<FileBodies>,
}

/// A response the edge makes itself (not relayed from upstream).
pub(crate) fn respond(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
    cache_control: &'static str,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    resp
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    respond(status, body, "text/plain; charset=utf-8", "no-store")
}

/// A path is proxied only if every component is plain (`[A-Za-z0-9._-]`, not `.`/`..`).
fn plain_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 512
        && path[1..].split('/').enumerate().all(|(i, c)| {
            (c.is_empty() && i > 0 && path.ends_with('/'))
                || (!c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
        })
}

impl Edge {
    /// Build an edge from its config (needs a tokio runtime for the health checker).
    pub fn new(config: &EdgeConfig, registry: &Registry) -> Result<Arc<Edge>, String> {
        let director = Director::new(&config.director, &config.nearest)?;
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.cache_mb.max(1) * 1024 * 1024)
            .weigher(|k: &String, v: &Arc<Stored>| {
                // a body with a memfd copy takes its size twice
                let copies = 1 + usize::from(v.file.is_some());
                u32::try_from(v.body.len() * copies + k.len() + 256).unwrap_or(u32::MAX)
            })
            // live objects are always admitted: LRU, not TinyLFU admission
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .expire_after(Expiry)
            .build();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector);
        let signer = (!config.signing_secret.is_empty())
            .then(|| TokenSigner::new(config.signing_secret.as_bytes()));
        let via = HeaderValue::from_str(&format!("1.1 tidecast-{}-{}", config.role, config.region))
            .unwrap_or_else(|_| HeaderValue::from_static("1.1 tidecast"));
        let edge = Arc::new(Edge {
            policy: PolicySettings {
                negative_ttl: Duration::from_millis(config.negative_ttl_ms),
                playlist_grace: Duration::from_millis(config.playlist_grace_ms),
            },
            pool: Mutex::new(OriginPool::new(&config.upstreams)),
            config: config.clone(),
            cache,
            flights: CoalescingTable::default(),
            client,
            signer,
            registry: registry.clone(),
            via,
            director: Mutex::new(director),
            hot: HotMetrics::new(registry, &config.region),
            file_bodies: Arc::default(),
        });
        tokio::spawn(edge.clone().health_checks());
        Ok(edge)
    }

    pub(crate) fn pool(&self) -> MutexGuard<'_, OriginPool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn count(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) {
        self.registry.counter(name, help, labels).inc();
    }

    async fn probe(&self, base: &str) -> bool {
        match format!("{base}/healthz").parse::<hyper::Uri>() {
            Ok(uri) => matches!(
                tokio::time::timeout(Duration::from_secs(1), self.client.get(uri)).await,
                Ok(Ok(r)) if r.status().is_success()
            ),
            Err(_) => false,
        }
    }

    /// Probe every upstream's (and every directed edge's) `/healthz` forever.
    async fn health_checks(self: Arc<Self>) {
        let interval = Duration::from_millis(self.config.health_interval_ms.max(100));
        loop {
            let bases: Vec<String> = self.pool().bases().map(str::to_string).collect();
            for base in bases {
                let ok = self.probe(&base).await;
                self.note_upstream(&base, ok);
            }
            let edges: Vec<String> = self
                .director()
                .edges()
                .iter()
                .map(|e| e.url.clone())
                .collect();
            for url in edges {
                let ok = self.probe(&url).await;
                self.director().set_health(&url, ok);
            }
            tokio::time::sleep(interval).await;
        }
    }

    pub(crate) fn director(&self) -> MutexGuard<'_, Director> {
        self.director.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn note_upstream(&self, base: &str, ok: bool) {
        let flipped = self.pool().record(base, ok, Instant::now());
        if let Some(healthy) = flipped {
            if healthy {
                info!(upstream = base, region = %self.config.region, "upstream healthy again");
            } else {
                warn!(upstream = base, region = %self.config.region, "upstream marked down");
            }
        }
        self.registry
            .gauge(
                "tidecast_edge_upstream_healthy",
                "1 while the edge considers the upstream healthy.",
                &[("region", &self.config.region), ("upstream", base)],
            )
            .set(i64::from(self.pool().is_healthy(base)));
    }

    /// Serve HTTP forever on the shared service layer; cached bodies go out with `sendfile`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        readiness: &Readiness,
    ) -> std::io::Result<()> {
        info!(role = %self.config.role, region = %self.config.region,
              upstreams = ?self.config.upstreams, "edge starting");
        let registry = self.registry.clone();
        let bodies = self.file_bodies.clone();
        Service::new(self, &registry, readiness)
            .with_file_bodies(bodies)
            .serve(listener)
            .await
    }

    async fn handle<B>(self: Arc<Self>, req: Request<B>, peer: SocketAddr) -> Response<Body> {
        match req.uri().path() {
            path if path.starts_with("/director/") => self.direct(&req, path).await,
            path => self.proxy(&req, path, peer).await,
        }
    }

    /// Signed playback: `Err` response when the stream needs a token and this one fails.
    fn check_token<B>(
        &self,
        req: &Request<B>,
        path: &str,
        peer: SocketAddr,
    ) -> Result<(), Box<Response<Body>>> {
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        let stream = stream_of(path);
        let signed = !stream.is_empty()
            && self
                .config
                .signed_streams
                .iter()
                .any(|s| s == "*" || s == stream);
        if !signed {
            return Ok(());
        }
        let cookie = req
            .headers()
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok());
        let token = find_token(req.uri().query(), cookie).unwrap_or("");
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match signer.verify(token, path, &peer.ip().to_string(), now) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.count(
                    "tidecast_edge_token_refusals_total",
                    "Requests refused by signed playback, by reason.",
                    &[("reason", e.as_str())],
                );
                debug!(%stream, reason = e.as_str(), "token refused");
                Err(Box::new(match e {
                    TokenError::Expired => text(StatusCode::GONE, "token expired\n"),
                    _ => text(StatusCode::FORBIDDEN, "token required or invalid\n"),
                }))
            }
        }
    }

    async fn proxy<B>(
        self: &Arc<Self>,
        req: &Request<B>,
        path: &str,
        peer: SocketAddr,
    ) -> Response<Body> {
        if !plain_path(path) {
            return text(StatusCode::BAD_REQUEST, "bad path\n");
        }
        if let Err(resp) = self.check_token(req, path, peer) {
            return *resp;
        }
        let key = policy::cache_key(path, req.uri().query());
        let mut resp = self.serve_key(&key, path).await;
        // a token that came in the query is kept as a cookie for the relative URLs that follow
        if self.signer.is_some() {
            if let Some(token) = req.uri().query().and_then(|q| find_token(Some(q), None)) {
                let stream = stream_of(path);
                let scope = if path.starts_with("/vod/") {
                    "vod"
                } else {
                    "live"
                };
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "tidecast_token={token}; Path=/{scope}/{stream}/; HttpOnly; SameSite=Lax"
                )) {
                    resp.headers_mut().insert(header::SET_COOKIE, v);
                }
            }
        }
        resp
    }

    pub(crate) async fn serve_key(self: &Arc<Self>, key: &str, path: &str) -> Response<Body> {
        let now = Instant::now();
        let stored = self.cache.get(key);
        if let Some(st) = &stored {
            let stored_for = now.saturating_duration_since(st.stored_at);
            if policy::is_fresh(&st.freshness, st.upstream_age, stored_for) {
                return self.stored_response(st, CacheStatus::Hit, stored_for);
            }
        }
        let (flight, status) = match self.flights.join(key) {
            Role::Leader(flight) => {
                tokio::spawn(
                    self.clone()
                        .fetch(key.to_string(), path.to_string(), flight.clone()),
                );
                (flight, CacheStatus::Miss)
            }
            Role::Follower(flight) => {
                self.hot.coalesced.inc();
                (flight, CacheStatus::Coalesced)
            }
        };
        match flight.head().await {
            Ok(head) if head.status.is_server_error() && stored.is_some() => {
                self.stale_or(stored.as_deref(), now, || {
                    self.stream_flight(flight, head, status)
                })
            }
            Ok(head) => {
                // an upstream tier that served its own stale copy: stale here too
                let f = policy::freshness(
                    path,
                    head.status.as_u16(),
                    head.headers
                        .get(header::CACHE_CONTROL)
                        .and_then(|v| v.to_str().ok()),
                    &self.policy,
                );
                let status = if f.cacheable
                    && !policy::is_fresh(&f, age_header(&head.headers), Duration::ZERO)
                {
                    self.hot.stale_served.inc();
                    CacheStatus::Stale
                } else {
                    status
                };
                self.stream_flight(flight, head, status)
            }
            Err(why) => self.stale_or(stored.as_deref(), now, || {
                debug!(%key, "upstream failed: {why}");
                text(StatusCode::BAD_GATEWAY, "upstream unavailable\n")
            }),
        }
    }

    /// Serve the stored copy if it may be served stale, else `otherwise`.
    fn stale_or(
        &self,
        stored: Option<&Stored>,
        now: Instant,
        otherwise: impl FnOnce() -> Response<Body>,
    ) -> Response<Body> {
        match stored {
            Some(st)
                if policy::usable_stale(
                    &st.freshness,
                    st.upstream_age,
                    now.saturating_duration_since(st.stored_at),
                ) =>
            {
                self.hot.stale_served.inc();
                self.stored_response(
                    st,
                    CacheStatus::Stale,
                    now.saturating_duration_since(st.stored_at),
                )
            }
            _ => otherwise(),
        }
    }

    fn decorate(&self, headers: &mut HeaderMap, status: CacheStatus, age: Duration) {
        if let Ok(v) = HeaderValue::from_str(&age.as_secs().to_string()) {
            headers.insert(header::AGE, v);
        }
        headers.insert(
            HeaderName::from_static("x-cache"),
            HeaderValue::from_static(status.as_str()),
        );
        let via = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
            Some(prev) => HeaderValue::from_str(&format!(
                "{prev}, {}",
                self.via.to_str().unwrap_or("1.1 tidecast")
            ))
            .unwrap_or_else(|_| self.via.clone()),
            None => self.via.clone(),
        };
        headers.insert(header::VIA, via);
        self.hot.requests(status).inc();
    }

    fn stored_response(
        &self,
        st: &Stored,
        status: CacheStatus,
        stored_for: Duration,
    ) -> Response<Body> {
        let mut resp = Response::new(Full::new(st.body.clone()).boxed());
        *resp.status_mut() = st.head.status;
        *resp.headers_mut() = st.head.headers.clone();
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(st.body.len()));
        self.decorate(
            resp.headers_mut(),
            status,
            policy::age(st.upstream_age, stored_for),
        );
        self.hot.bytes_served.add(st.body.len() as i64);
        resp
    }

    /// Stream a flight to one client as its bytes arrive.
    fn stream_flight(
        &self,
        flight: Arc<Flight>,
        head: Head,
        status: CacheStatus,
    ) -> Response<Body> {
        let (tx, body) = ChannelBody::channel();
        let bytes_served = self.hot.bytes_served.clone();
        tokio::spawn(async move {
            let mut i = 0;
            loop {
                match flight.next(i).await {
                    Next::Chunks(chunks) => {
                        i += chunks.len();
                        for c in chunks {
                            bytes_served.add(c.len() as i64);
                            if tx.send(c).await.is_err() {
                                return; // client went away
                            }
                        }
                    }
                    // a failure mid-body ends the response early: the client sees a short body
                    Next::End | Next::Failed(_) => return,
                }
            }
        });
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        let upstream_age = age_header(&head.headers);
        *resp.headers_mut() = head.headers;
        self.decorate(resp.headers_mut(), status, upstream_age);
        resp
    }

    fn refresh_metrics(&self) {
        let r = &self.registry;
        let region = self.config.region.as_str();
        self.cache.run_pending_tasks();
        r.gauge(
            "tidecast_edge_cache_bytes",
            "Bytes held in the edge cache (weighted size: a body with a file copy counts twice).",
            &[("region", region)],
        )
        .set(self.cache.weighted_size() as i64);
        r.gauge(
            "tidecast_edge_cache_objects",
            "Objects held in the edge cache.",
            &[("region", region)],
        )
        .set(self.cache.entry_count() as i64);
        r.gauge(
            "tidecast_edge_cache_file_bodies",
            "Cached bodies sent with sendfile from an in-memory file (zero-copy).",
            &[("region", region)],
        )
        .set(self.file_bodies.len() as i64);
        r.gauge(
            "tidecast_edge_cache_file_bytes",
            "Bytes of the cached bodies' in-memory file copies (shared memory, outside RSS).",
            &[("region", region)],
        )
        .set(self.file_bodies.bytes() as i64);
        r.gauge(
            "tidecast_edge_inflight_fetches",
            "Upstream fetches in progress.",
            &[("region", region)],
        )
        .set(self.flights.len() as i64);
    }
}

impl Routes for Edge {
    fn role(&self) -> &'static str {
        "edge"
    }

    fn route(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> ResponseFuture {
        Box::pin(self.handle(req, peer))
    }

    fn before_metrics(&self) {
        self.refresh_metrics();
    }

    fn expose_headers(&self) -> &'static str {
        "Age, Date, Content-Length, X-Cache"
    }
}

#[cfg(test)]
mod tests {
    use super::{plain_path, CacheStatus};

    #[test]
    fn hot_metrics_index_matches_cache_status() {
        for (i, status) in CacheStatus::ALL.into_iter().enumerate() {
            assert_eq!(status as usize, i, "{}", status.as_str());
        }
    }

    #[test]
    fn only_plain_paths_are_proxied() {
        assert!(plain_path("/live/a/720p/1.m4s"));
        assert!(plain_path("/demo/"));
        assert!(!plain_path("/live/../etc/passwd"));
        assert!(!plain_path("/live//x"));
        assert!(!plain_path("/live/a b"));
        assert!(!plain_path("relative"));
    }
}
