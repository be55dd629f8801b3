//! `/director/…` on an edge: players sent to an edge in their region (302), HLS Content
//! Steering manifests and steered multivariant playlists. Decisions come from
//! [`crate::director::Director`].

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tidecast_common::body::Body;

use crate::server::{respond, text, Edge};

impl Edge {
    /// `/director/live/{stream}/master.m3u8` → 302 to an edge in the player's region;
    /// `/director/live/{stream}/steered.m3u8` → multivariant playlist with a pathway per region;
    /// `/director/steering/{stream}.json` → HLS Content Steering manifest. The player's region
    /// comes from `?region=`, else the `X-Client-Region` header (set by a GeoDNS/load balancer),
    /// else this node's region.
    pub(crate) async fn direct<B>(
        self: &Arc<Self>,
        req: &Request<B>,
        path: &str,
    ) -> Response<Body> {
        if self.director().edges().is_empty() {
            return text(
                StatusCode::NOT_FOUND,
                "no director configured (edge.director)\n",
            );
        }
        let query = req.uri().query().unwrap_or("");
        let region = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("region="))
            .or_else(|| {
                req.headers()
                    .get("x-client-region")
                    .and_then(|v| v.to_str().ok())
            })
            .unwrap_or(&self.config.region)
            .to_string();
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !valid(&region) {
            return text(StatusCode::BAD_REQUEST, "bad region\n");
        }
        let rest: Vec<&str> = path.trim_start_matches("/director/").split('/').collect();
        let kept: Vec<&str> = query
            .split('&')
            .filter(|kv| !kv.is_empty() && !kv.starts_with("region="))
            .collect();
        match rest.as_slice() {
            ["live", stream, "master.m3u8"] if valid(stream) => {
                let chosen = self
                    .director()
                    .choose(&region, stream)
                    .map(|e| e.url.clone());
                let Ok(base) = chosen else {
                    return text(StatusCode::SERVICE_UNAVAILABLE, "no healthy edge\n");
                };
                let mut to = format!("{base}/live/{stream}/master.m3u8");
                if !kept.is_empty() {
                    to = format!("{to}?{}", kept.join("&"));
                }
                self.count(
                    "tidecast_director_redirects_total",
                    "Players sent to an edge, by the player's region.",
                    &[("region", &region)],
                );
                let mut resp = text(StatusCode::FOUND, "");
                if let Ok(v) = HeaderValue::from_str(&to) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                resp
            }
            ["live", stream, "steered.m3u8"] if valid(stream) => {
                let master = self
                    .serve_key(
                        &format!("/live/{stream}/master.m3u8"),
                        &format!("/live/{stream}/master.m3u8"),
                    )
                    .await;
                if master.status() != StatusCode::OK {
                    return text(StatusCode::NOT_FOUND, "no such stream\n");
                }
                // the body's error type is Infallible
                let Ok(body) = master.into_body().collect().await.map(|b| b.to_bytes());
                let server_uri = format!("/director/steering/{stream}.json?region={region}");
                let text_body = self.director().steered_master(
                    &String::from_utf8_lossy(&body),
                    stream,
                    &server_uri,
                    &region,
                );
                respond(
                    StatusCode::OK,
                    text_body,
                    "application/vnd.apple.mpegurl",
                    "no-cache",
                )
            }
            ["steering", file] if file.strip_suffix(".json").is_some_and(valid) => {
                let reload = format!("/director/steering/{file}?region={region}");
                let json = self.director().steering_manifest(&region, &reload, 10);
                respond(StatusCode::OK, json, "application/json", "no-cache")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}
