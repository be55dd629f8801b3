//! The HTTP service layer every role mounts its routes on. A role (origin, edge, rooms, or an
//! ingest node that serves nothing but its health and metrics) implements [`Routes`]; the
//! [`Service`] around it answers what every role answers the same way:
//!
//! * `OPTIONS` (CORS preflight) for any path, `Access-Control-*` headers on every response;
//! * methods other than `GET`/`HEAD` only where the role accepts them (else 405), `HEAD` bodies
//!   dropped;
//! * `/healthz` (liveness: the process serves), `/readyz` (readiness: 503 once [`Readiness`] is
//!   cleared, e.g. while draining), `/metrics` (the shared [`Registry`], after the role refreshed
//!   its gauges), `/api/time` (this node's clock);
//! * WebSocket upgrades ([`Service::websocket`]), served on the same connection loop
//!   (`hyper` upgrades);
//! * the accept loop of [`crate::http_server`] (burst-sized backlog, header timeout, zero-copy
//!   bodies where the role registers them).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info};

use crate::body::{full, Body};
use crate::metrics::Registry;
use crate::zero_copy::FileBodies;

/// A response being produced.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// A server-side WebSocket on an upgraded HTTP connection.
pub type WebSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// What a role serves on the layer (see the module docs).
pub trait Routes: Send + Sync + 'static {
    /// The role's name in logs and metrics (`origin`, `edge`, `rooms`, `ingest`).
    fn role(&self) -> &'static str;

    /// Answer a request the layer does not answer itself.
    fn route(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> ResponseFuture;

    /// Whether `method` (other than GET/HEAD/OPTIONS) is accepted on `path`.
    fn accepts(&self, _method: &Method, _path: &str) -> bool {
        false
    }

    /// Refresh gauges just before `/metrics` is rendered.
    fn before_metrics(&self) {}

    /// Response headers a browser page may read (`Access-Control-Expose-Headers`).
    fn expose_headers(&self) -> &'static str {
        "Age, Date, Content-Length"
    }
}

/// A role that serves only the layer's own routes (health, readiness, metrics, time): a
/// `tidecast ingest` node.
#[derive(Debug)]
pub struct NoRoutes(pub &'static str);

impl Routes for NoRoutes {
    fn role(&self) -> &'static str {
        self.0
    }

    fn route(self: Arc<Self>, _req: Request<Incoming>, _peer: SocketAddr) -> ResponseFuture {
        Box::pin(async { plain(StatusCode::NOT_FOUND, "not found\n") })
    }
}

pub use crate::lifecycle::Readiness;

/// The layer around one role's routes.
pub struct Service<R: Routes> {
    routes: Arc<R>,
    registry: Registry,
    readiness: Readiness,
    file_bodies: Option<Arc<FileBodies>>,
}

impl<R: Routes> Clone for Service<R> {
    fn clone(&self) -> Self {
        Service {
            routes: self.routes.clone(),
            registry: self.registry.clone(),
            readiness: self.readiness.clone(),
            file_bodies: self.file_bodies.clone(),
        }
    }
}

/// Whether the request's `Authorization: Bearer …` equals `secret` (compared in constant time;
/// a missing or other header never matches a non-empty secret).
pub fn bearer_matches<B>(req: &Request<B>, secret: &str) -> bool {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    !secret.is_empty() && crate::keys::constant_time_eq(presented, secret)
}

/// Plain text with a status, never cached.
pub fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl<R: Routes> Service<R> {
    /// The layer around `routes`, rendering `registry` on `/metrics`.
    pub fn new(routes: Arc<R>, registry: &Registry, readiness: &Readiness) -> Service<R> {
        Service {
            routes,
            registry: registry.clone(),
            readiness: readiness.clone(),
            file_bodies: None,
        }
    }

    /// Send the bodies registered in `bodies` with `sendfile` (see [`crate::zero_copy`]).
    pub fn with_file_bodies(mut self, bodies: Arc<FileBodies>) -> Service<R> {
        self.file_bodies = Some(bodies);
        self
    }

    /// Serve on `listener` forever.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let role = self.routes.role();
        info!(addr = ?listener.local_addr().ok(), role, "http listening");
        let bodies = self.file_bodies.clone();
        let readiness = self.readiness.clone();
        crate::http_server::serve_with(listener, role, bodies, &readiness, move |req, peer| {
            let service = self.clone();
            async move { service.handle(req, peer).await }
        })
        .await
    }

    /// One request through the layer.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let method = req.method().clone();
        let head_only = method == Method::HEAD;
        let mut resp = if method == Method::OPTIONS {
            let mut resp = plain(StatusCode::NO_CONTENT, "");
            resp.headers_mut().insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            resp
        } else if method != Method::GET
            && !head_only
            && !self.routes.accepts(&method, req.uri().path())
        {
            plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        } else {
            match req.uri().path() {
                "/healthz" => plain(StatusCode::OK, "ok\n"),
                "/readyz" if self.readiness.is_ready() => plain(StatusCode::OK, "ready\n"),
                "/readyz" => plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
                "/metrics" => {
                    self.routes.before_metrics();
                    let mut resp = Response::new(full(self.registry.render()));
                    let h = resp.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                    resp
                }
                "/api/time" => crate::http_server::time_response(SystemTime::now()),
                _ => self.routes.clone().route(req, peer).await,
            }
        };
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(self.routes.expose_headers()),
        );
        // Date: hyper adds it (cached once a second)
        if head_only {
            *resp.body_mut() = full(Bytes::new());
        }
        resp
    }
}

/// Accept a WebSocket upgrade: the `101 Switching Protocols` response to return, and `on_open`
/// run with the socket once the client has it. Messages are capped at `max_message` bytes (a
/// larger one closes the socket with an error). A request that is not a valid upgrade gets
/// 400 / 426 instead.
pub fn websocket<F, Fut>(req: Request<Incoming>, max_message: usize, on_open: F) -> Response<Body>
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let h = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if req.method() != Method::GET || !has(header::UPGRADE, "websocket") {
        return plain(StatusCode::UPGRADE_REQUIRED, "WebSocket upgrade required\n");
    }
    if !has(header::CONNECTION, "upgrade")
        || h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13")
    {
        return plain(StatusCode::BAD_REQUEST, "bad WebSocket handshake\n");
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return plain(StatusCode::BAD_REQUEST, "no Sec-WebSocket-Key\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max_message);
    config.max_frame_size = Some(max_message);
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                on_open(ws).await;
            }
            Err(e) => debug!("websocket upgrade failed: {e}"),
        }
    });
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}
