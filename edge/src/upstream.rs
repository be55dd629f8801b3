//! The upstream half of the edge: lead one fetch per key, trying upstreams in the stream's
//! [`crate::pool::OriginPool`] order (connection errors, timeouts and 502/504 fail over; a 503
//! from an origin — a blocking request it could not satisfy — is passed on), feed the
//! [`crate::flight::Flight`] chunk by chunk, and store cacheable responses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::Request;
use tracing::{debug, warn};

use crate::flight::{Flight, Head};
use crate::policy;
use crate::pool::stream_of;
use crate::server::{Edge, Stored};

/// Headers that describe one connection, never forwarded.
pub(crate) const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "proxy-connection",
];

pub(crate) fn age_header(headers: &HeaderMap) -> Duration {
    headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_secs)
        .unwrap_or_default()
}

/// `headers` in allocations of their own. hyper parses header values as slices of the
/// connection's read buffer: a cached response keeping them would pin that whole buffer (tens of
/// KiB) for as long as the entry lives — the edge's RSS grew ~13 MB/min beyond its cache in the
/// soak (`bench/soak.py`) until this copy.
pub(crate) fn owned_headers(headers: HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in &headers {
        if let Ok(mut owned) = HeaderValue::from_bytes(value.as_bytes()) {
            owned.set_sensitive(value.is_sensitive());
            out.append(name.clone(), owned);
        }
    }
    out
}

impl Edge {
    /// Lead the upstream fetch for `key`: try upstreams in pool order, feed the flight, cache.
    pub(crate) async fn fetch(self: Arc<Self>, key: String, path: String, flight: Arc<Flight>) {
        let order = self.pool().order(stream_of(&path));
        let timeout = Duration::from_millis(self.config.upstream_timeout_ms.max(100));
        // the cache key is the path plus the LL-HLS directives: exactly what goes upstream
        let mut last_error = String::from("no upstream configured");
        let mut fallback: Option<hyper::Response<hyper::body::Incoming>> = None;
        for (i, base) in order.iter().enumerate() {
            let Ok(uri) = format!("{base}{key}").parse::<hyper::Uri>() else {
                last_error = format!("bad upstream url {base}");
                continue;
            };
            let mut req = Request::new(Empty::<Bytes>::new());
            *req.uri_mut() = uri;
            req.headers_mut().insert(header::VIA, self.via.clone());
            let started = Instant::now();
            let result = tokio::time::timeout(timeout, self.client.request(req)).await;
            let outcome = match &result {
                Ok(Ok(r)) if r.status().is_server_error() => "upstream_5xx",
                Ok(Ok(_)) => "ok",
                Ok(Err(_)) => "error",
                Err(_) => "timeout",
            };
            self.registry
                .counter(
                    "tidecast_edge_upstream_fetches_total",
                    "Requests the edge sent upstream, by upstream and outcome.",
                    &[
                        ("region", &self.config.region),
                        ("upstream", base),
                        ("result", outcome),
                    ],
                )
                .inc();
            match result {
                Ok(Ok(resp)) if !resp.status().is_server_error() => {
                    debug!(%key, upstream = %base, ms = started.elapsed().as_millis() as u64, "fetched");
                    self.note_upstream(base, true);
                    self.relay(&key, &path, resp, &flight, timeout).await;
                    return;
                }
                Ok(Ok(resp)) => {
                    // 502/504 mean the upstream could not reach its own upstream; 503 from an
                    // origin is a blocking request that could not be satisfied: pass it on
                    let gateway = matches!(resp.status().as_u16(), 502 | 504);
                    if gateway {
                        self.note_upstream(base, false);
                    }
                    last_error = format!("{base}: {}", resp.status());
                    if !gateway || i + 1 == order.len() {
                        fallback = Some(resp);
                        break;
                    }
                }
                Ok(Err(e)) => {
                    self.note_upstream(base, false);
                    last_error = format!("{base}: {e}");
                }
                Err(_) => {
                    self.note_upstream(base, false);
                    last_error = format!("{base}: timed out after {timeout:?}");
                }
            }
        }
        match fallback {
            Some(resp) => self.relay(&key, &path, resp, &flight, timeout).await,
            None => {
                warn!(%key, region = %self.config.region, "every upstream failed: {last_error}");
                flight.fail(last_error);
                self.flights.finish(&key);
            }
        }
    }

    /// Feed one upstream response into the flight and, when cacheable, the cache.
    async fn relay(
        &self,
        key: &str,
        path: &str,
        resp: hyper::Response<hyper::body::Incoming>,
        flight: &Flight,
        timeout: Duration,
    ) {
        let (parts, mut body) = resp.into_parts();
        let mut headers = owned_headers(parts.headers);
        for h in HOP_BY_HOP {
            headers.remove(h);
        }
        headers.remove(header::DATE);
        let freshness = policy::freshness(
            path,
            parts.status.as_u16(),
            headers
                .get(header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok()),
            &self.policy,
        );
        let upstream_age = age_header(&headers);
        let head = Head {
            status: parts.status,
            headers,
        };
        flight.set_head(head.clone());
        loop {
            match tokio::time::timeout(timeout, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            flight.push(data);
                        }
                    }
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    warn!(%key, "upstream body failed: {e}");
                    flight.fail(e.to_string());
                    self.flights.finish(key);
                    return;
                }
                Err(_) => {
                    warn!(%key, "upstream body stalled");
                    flight.fail("upstream body stalled".into());
                    self.flights.finish(key);
                    return;
                }
            }
        }
        let body = flight.finish();
        if freshness.cacheable {
            let file = if self.config.sendfile {
                self.file_bodies.back(&body)
            } else {
                None
            };
            self.cache.insert(
                key.to_string(),
                Arc::new(Stored {
                    head,
                    body,
                    file,
                    stored_at: Instant::now(),
                    upstream_age,
                    freshness,
                }),
            );
        }
        // after the insert: whoever comes next finds the cache, not a finished flight
        self.flights.finish(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_headers_do_not_share_the_read_buffer() {
        let buffer = Bytes::from(vec![b'a'; 64 * 1024]);
        let mut headers = HeaderMap::new();
        let shared = HeaderValue::from_maybe_shared(buffer.slice(0..8)).unwrap();
        headers.insert(header::ETAG, shared);
        headers.append("x-two", HeaderValue::from_static("1"));
        headers.append("x-two", HeaderValue::from_static("2"));
        let owned = owned_headers(headers);
        let etag = owned.get(header::ETAG).unwrap().as_bytes();
        assert_eq!(etag, b"aaaaaaaa");
        let range = buffer.as_ptr_range();
        assert!(
            !range.contains(&etag.as_ptr()),
            "still a slice of the buffer"
        );
        let twos: Vec<_> = owned.get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
    }
}
