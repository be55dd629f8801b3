//! `/live/{stream}/…`: multivariant and media playlists (with LL-HLS blocking reloads), init
//! segments, segments (streamed while produced, for LL-DASH) and parts (the preload-hinted part
//! blocks until it exists).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hyper::header;
use hyper::{Response, StatusCode};
use tidecast_common::keys::is_valid_stream_name;
use tidecast_common::TrackKind;
use tracing::debug;

use crate::http::{
    media_response, mpd_response, not_found, playlist_response, set, text, Body, ChannelBody,
    SEGMENT_CACHE,
};
use crate::llhls::{self, QueryError, Readiness};
use crate::packager::StreamTable;
use crate::playlist::{self, MediaOptions};
use crate::server::{Origin, RouteKind};
use crate::window::RenditionTrack;

/// What a file name under a rendition asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RenditionFile {
    Playlist,
    Init(Option<u64>),
    Segment(u64),
    Part(u64, usize),
}

fn parse_file(file: &str) -> Option<RenditionFile> {
    if file == "media.m3u8" {
        return Some(RenditionFile::Playlist);
    }
    if file == "init.mp4" {
        return Some(RenditionFile::Init(None));
    }
    if let Some(d) = file
        .strip_prefix("init-")
        .and_then(|f| f.strip_suffix(".mp4"))
    {
        return d.parse().ok().map(|d| RenditionFile::Init(Some(d)));
    }
    let stem = file.strip_suffix(".m4s")?;
    match stem.split_once('.') {
        Some((msn, part)) => Some(RenditionFile::Part(msn.parse().ok()?, part.parse().ok()?)),
        None => stem.parse().ok().map(RenditionFile::Segment),
    }
}

fn mime(track: &RenditionTrack) -> &'static str {
    match track.declared.kind {
        TrackKind::Audio => "audio/mp4",
        _ => "video/mp4",
    }
}

impl Origin {
    /// How long a blocking request may be held: three target durations.
    fn hold_limit(&self) -> Duration {
        self.settings().target * 3
    }

    pub(crate) fn master(&self, stream: &str, peer: SocketAddr) -> Response<Body> {
        if !is_valid_stream_name(stream) {
            return not_found();
        }
        let mut table = self.table();
        let Some(s) = table.get_mut(stream) else {
            return not_found();
        };
        s.touch_viewer(peer.ip(), Instant::now());
        match playlist::master(s) {
            Some(text) => playlist_response(text),
            None => not_found(),
        }
    }

    pub(crate) fn manifest(&self, stream: &str, peer: SocketAddr) -> Response<Body> {
        if !is_valid_stream_name(stream) {
            return not_found();
        }
        let settings = self.settings();
        let mut table = self.table();
        let Some(s) = table.get_mut(stream) else {
            return not_found();
        };
        s.touch_viewer(peer.ip(), Instant::now());
        // a session that has no segment yet (a reconnect) simply has no Period yet
        match crate::dash::mpd(s, &settings, SystemTime::now()) {
            Some(text) => mpd_response(text),
            None => not_found(),
        }
    }

    pub(crate) async fn rendition_file(
        &self,
        stream: &str,
        rendition: &str,
        file: &str,
        query: Option<&str>,
        peer: SocketAddr,
    ) -> (RouteKind, Response<Body>) {
        if !is_valid_stream_name(stream) || !is_valid_stream_name(rendition) {
            return (RouteKind::Other, not_found());
        }
        match parse_file(file) {
            Some(RenditionFile::Playlist) => (
                RouteKind::Media,
                self.media_playlist(stream, rendition, query, peer).await,
            ),
            Some(RenditionFile::Init(disc)) => {
                (RouteKind::Init, self.init(stream, rendition, disc))
            }
            Some(RenditionFile::Segment(msn)) => (
                RouteKind::Segment,
                self.segment(stream, rendition, msn).await,
            ),
            Some(RenditionFile::Part(msn, part)) => (
                RouteKind::Part,
                self.part(stream, rendition, msn, part).await,
            ),
            None => (RouteKind::Other, not_found()),
        }
    }

    async fn media_playlist(
        &self,
        stream: &str,
        rendition: &str,
        query: Option<&str>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let q = match llhls::parse_query(query) {
            Ok(q) => q,
            Err(e) => return bad_request(e),
        };
        let check = |table: &mut StreamTable| -> Option<Result<(), QueryError>> {
            let s = table.get(stream)?;
            let live = s.live && s.current.iter().any(|c| c == rendition);
            let track = s.rendition(rendition)?;
            match llhls::readiness(track, live, &q) {
                Ok(Readiness::Ready) => Some(Ok(())),
                Ok(Readiness::Wait) => None,
                Err(e) => Some(Err(e)),
            }
        };
        if q.msn.is_some() {
            let _blocked = self.blocked_guard();
            match self.wait_until(self.hold_limit(), check).await {
                Some(Ok(())) => {}
                Some(Err(e)) => return bad_request(e),
                None => {
                    // the stream may be gone entirely: 404 rather than 503
                    if self
                        .table()
                        .get(stream)
                        .and_then(|s| s.rendition(rendition))
                        .is_none()
                    {
                        return not_found();
                    }
                    return text(StatusCode::SERVICE_UNAVAILABLE, "not produced in time\n");
                }
            }
        }
        let settings = self.settings();
        let mut table = self.table();
        let Some(s) = table.get_mut(stream) else {
            return not_found();
        };
        s.touch_viewer(peer.ip(), Instant::now());
        // read under the table lock: the text rendered now is at least this version
        let version = self.version();
        let key = (stream.to_string(), rendition.to_string(), q.skip);
        if let Some(text) = self.playlist_cache().get(&key, version) {
            return playlist_response(text);
        }
        match playlist::media(s, rendition, &settings, MediaOptions { skip: q.skip }) {
            Some(text) => {
                drop(table);
                let text = Bytes::from(text);
                self.playlist_cache().put(key, version, text.clone());
                playlist_response(text)
            }
            None => not_found(),
        }
    }

    fn init(&self, stream: &str, rendition: &str, disc: Option<u64>) -> Response<Body> {
        let table = self.table();
        let Some(track) = table.get(stream).and_then(|s| s.rendition(rendition)) else {
            return not_found();
        };
        match track.inits.get(&disc.unwrap_or(track.disc)) {
            Some(data) => media_response(data.clone(), mime(track)),
            None => not_found(),
        }
    }

    /// A complete segment; the segment being produced is streamed part by part as it is muxed
    /// (LL-DASH chunked transfer); the next segment waits for its first part.
    async fn segment(&self, stream: &str, rendition: &str, msn: u64) -> Response<Body> {
        let lookup = |table: &mut StreamTable| -> Option<Option<(Bytes, bool, &'static str)>> {
            let s = table.get(stream)?;
            let track = s.rendition(rendition)?;
            if let Some(seg) = track.segment(msn) {
                return Some(Some((seg.data.clone(), true, mime(track))));
            }
            let live = s.live && s.current.iter().any(|c| c == rendition);
            if !live {
                return Some(None);
            }
            if track.any_segment(msn).is_some() {
                return Some(Some((Bytes::new(), false, mime(track)))); // open: stream it
            }
            // the open segment or the next one (what a hint may point at): wait for it
            (!track.is_coming(msn, 0)).then_some(None)
        };
        let found = self.wait_until(self.hold_limit(), lookup).await.flatten();
        let Some((data, complete, mime)) = found else {
            return not_found();
        };
        if complete {
            return media_response(data, mime);
        }
        let (tx, body) = ChannelBody::channel();
        let origin = self.handle();
        let (stream, rendition) = (stream.to_string(), rendition.to_string());
        tokio::spawn(async move {
            let mut sent = 0usize;
            loop {
                let next = |table: &mut StreamTable| -> Option<(Vec<Bytes>, bool)> {
                    let seg = table
                        .get(&stream)?
                        .rendition(&rendition)?
                        .any_segment(msn)?;
                    let fresh: Vec<Bytes> =
                        seg.parts[sent..].iter().map(|p| p.data.clone()).collect();
                    (!fresh.is_empty() || seg.complete).then_some((fresh, seg.complete))
                };
                let Some((parts, complete)) = origin.wait_until(origin.hold_limit(), next).await
                else {
                    debug!(%stream, %rendition, msn, "streamed segment stalled, ending response");
                    return;
                };
                for p in parts {
                    sent += 1;
                    if tx.send(p).await.is_err() {
                        return; // client went away
                    }
                }
                if complete {
                    return;
                }
            }
        });
        let mut resp = Response::new(body);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(mime),
        );
        set(&mut resp, header::CACHE_CONTROL, SEGMENT_CACHE);
        resp
    }

    /// A part; the next part to be produced (the preload hint) blocks until it exists.
    async fn part(&self, stream: &str, rendition: &str, msn: u64, index: usize) -> Response<Body> {
        let lookup = |table: &mut StreamTable| -> Option<Option<(Bytes, &'static str)>> {
            let s = table.get(stream)?;
            let track = s.rendition(rendition)?;
            if let Some(p) = track.part(msn, index) {
                return Some(Some((p.data.clone(), mime(track))));
            }
            let live = s.live && s.current.iter().any(|c| c == rendition);
            // the preload-hinted part (or the one after it) waits; anything else is a 404
            (!(live && track.is_coming(msn, index))).then_some(None)
        };
        match self.wait_until(self.hold_limit(), lookup).await.flatten() {
            Some((data, mime)) => media_response(data, mime),
            None => not_found(),
        }
    }
}

fn bad_request(e: QueryError) -> Response<Body> {
    let mut resp = text(StatusCode::BAD_REQUEST, "bad request\n");
    if let Ok(v) = hyper::header::HeaderValue::from_str(&e.to_string()) {
        resp.headers_mut().insert("x-tidecast-error", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(parse_file("media.m3u8"), Some(RenditionFile::Playlist));
        assert_eq!(parse_file("init.mp4"), Some(RenditionFile::Init(None)));
        assert_eq!(parse_file("init-3.mp4"), Some(RenditionFile::Init(Some(3))));
        assert_eq!(parse_file("12.m4s"), Some(RenditionFile::Segment(12)));
        assert_eq!(parse_file("12.3.m4s"), Some(RenditionFile::Part(12, 3)));
        assert_eq!(parse_file("../x.m4s"), None);
        assert_eq!(parse_file("12.x.m4s"), None);
    }
}
