//! Serving a request from the cache: a fresh copy as a hit, else one upstream fetch per key
//! that every concurrent request follows (coalesced), a stale copy where the policy allows it
//! when the upstream tiers fail, and the `Age`, `Via` and `X-Cache` headers; the cached
//! response, its expiry in moka and the per-request metric series.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use tidecast_common::body::{Body, ChannelBody};
use tidecast_common::metrics::{Metric, Registry};
use tidecast_common::zero_copy::FileBacked;
use tracing::debug;

use super::{text, Edge};
use crate::flight::{Flight, Head, Next, Role};
use crate::policy::{self, Freshness};
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
pub(super) struct HotMetrics {
    /// `tidecast_edge_requests_total{cache}`, indexed like [`CacheStatus::ALL`].
    requests: [Metric; 4],
    bytes_served: Metric,
    coalesced: Metric,
    stale_served: Metric,
}

impl HotMetrics {
    pub(super) fn new(registry: &Registry, region: &str) -> HotMetrics {
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

pub(super) struct Expiry;

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

impl Edge {
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
}

#[cfg(test)]
mod tests {
    use super::CacheStatus;

    #[test]
    fn hot_metrics_index_matches_cache_status() {
        for (i, status) in CacheStatus::ALL.into_iter().enumerate() {
            assert_eq!(status as usize, i, "{}", status.as_str());
        }
    }
}
