//! The edge's HTTP shell (hyper server + hyper client + moka): token check, cache lookup,
//! coalesced upstream fetch with failover, stale-if-error, response headers (`Age`, `Via`,
//! `X-Cache`), health checks and metrics. Decisions come from [`crate::policy`] and
//! [`crate::pool`]; coalescing from [`crate::flight`]; serving from the cache in [`cache`].

mod cache;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tidecast_common::body::Body;
use tidecast_common::config::EdgeConfig;
use tidecast_common::metrics::Registry;
use tidecast_common::service::{Readiness, ResponseFuture, Routes, Service};
use tidecast_common::token::{find_token, TokenError, TokenSigner};
use tidecast_common::zero_copy::FileBodies;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

pub(crate) use cache::Stored;
use cache::{Expiry, HotMetrics};

use crate::director::Director;
use crate::flight::CoalescingTable;
use crate::policy::{self, PolicySettings};
use crate::pool::{stream_of, OriginPool};

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
    use super::plain_path;

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
