//! `/vod/{stream}/{session}/…`: finished (or still growing) sessions served from the object
//! store the archiver writes to. Every path component is checked before it becomes a key.

use hyper::header;
use hyper::{Response, StatusCode};
use tidecast_common::keys::is_valid_stream_name;
use tidecast_common::store::{content_type, ObjectKey};
use tracing::warn;

use crate::http::{full, not_found, set, text, Body, PLAYLIST_CACHE, SEGMENT_CACHE};
use crate::server::Origin;

/// Files a VOD session holds (top level or per rendition).
fn allowed(file: &str, in_rendition: bool) -> bool {
    if in_rendition {
        file == "media.m3u8"
            || file == "init.mp4"
            || file
                .strip_suffix(".m4s")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    } else {
        matches!(file, "master.m3u8" | "manifest.mpd" | "session.json")
    }
}

impl Origin {
    pub(crate) async fn vod(
        &self,
        stream: &str,
        session: &str,
        rendition: Option<&str>,
        file: &str,
    ) -> Response<Body> {
        let Some(store) = self.archive_store() else {
            return not_found();
        };
        let session_ok = !session.is_empty()
            && session.len() <= 20
            && session.bytes().all(|b| b.is_ascii_digit());
        if !is_valid_stream_name(stream)
            || !session_ok
            || !rendition.is_none_or(is_valid_stream_name)
            || !allowed(file, rendition.is_some())
        {
            return not_found();
        }
        let mut parts = vec!["vod", stream, session];
        parts.extend(rendition);
        parts.push(file);
        let Ok(key) = ObjectKey::from_parts(&parts) else {
            return not_found();
        };
        match store.get(&key).await {
            Ok(Some(data)) => {
                let mut resp = Response::new(full(data));
                if let Ok(v) = header::HeaderValue::from_str(content_type(file)) {
                    resp.headers_mut().insert(header::CONTENT_TYPE, v);
                }
                let immutable = file.ends_with(".m4s") || file.ends_with(".mp4");
                set(
                    &mut resp,
                    header::CACHE_CONTROL,
                    if immutable {
                        SEGMENT_CACHE
                    } else {
                        PLAYLIST_CACHE
                    },
                );
                resp
            }
            Ok(None) => not_found(),
            Err(e) => {
                warn!(%key, "vod read from object store failed: {e}");
                text(StatusCode::BAD_GATEWAY, "object store unavailable\n")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn only_known_files() {
        assert!(allowed("master.m3u8", false));
        assert!(allowed("12.m4s", true));
        assert!(!allowed("12.m4s", false));
        assert!(!allowed("..m4s", true));
        assert!(!allowed(".m4s", true));
        assert!(!allowed("x.m4s", true));
        assert!(!allowed("tidecast.log", false));
    }
}
