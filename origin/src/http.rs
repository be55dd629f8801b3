//! Response helpers shared by the origin's routes, and a streaming body for responses that are
//! written while the data is produced (LL-DASH chunked segments).

use bytes::Bytes;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

pub use tidecast_common::body::Body;

/// Segments and parts never change once produced.
pub const SEGMENT_CACHE: &str = "public, max-age=86400, immutable";
/// Live playlists change every part.
pub const PLAYLIST_CACHE: &str = "public, max-age=1";
/// Not-yet-existing media may appear any moment.
pub const NOT_FOUND_CACHE: &str = "public, max-age=1";

pub use tidecast_common::body::full;
pub use tidecast_common::http_server::time_response;

/// Set a static header.
pub fn set(resp: &mut Response<Body>, name: HeaderName, value: &'static str) {
    resp.headers_mut()
        .insert(name, HeaderValue::from_static(value));
}

/// Plain text with a status.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    set(&mut resp, header::CONTENT_TYPE, "text/plain; charset=utf-8");
    resp
}

/// An empty response.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// 404, briefly cacheable.
pub fn not_found() -> Response<Body> {
    let mut resp = text(StatusCode::NOT_FOUND, "not found\n");
    set(&mut resp, header::CACHE_CONTROL, NOT_FOUND_CACHE);
    resp
}

/// 302.
pub fn redirect(to: &'static str) -> Response<Body> {
    let mut resp = empty(StatusCode::FOUND);
    set(&mut resp, header::LOCATION, to);
    resp
}

/// An HLS playlist.
pub fn playlist_response(text: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(text));
    set(
        &mut resp,
        header::CONTENT_TYPE,
        "application/vnd.apple.mpegurl",
    );
    set(&mut resp, header::CACHE_CONTROL, PLAYLIST_CACHE);
    resp
}

/// A DASH manifest.
pub fn mpd_response(text: String) -> Response<Body> {
    let mut resp = Response::new(full(text));
    set(&mut resp, header::CONTENT_TYPE, "application/dash+xml");
    set(&mut resp, header::CACHE_CONTROL, PLAYLIST_CACHE);
    resp
}

/// A media object (init, segment, part).
pub fn media_response(data: Bytes, mime: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(data));
    set(&mut resp, header::CONTENT_TYPE, mime);
    set(&mut resp, header::CACHE_CONTROL, SEGMENT_CACHE);
    resp
}

pub use tidecast_common::body::ChannelBody;
