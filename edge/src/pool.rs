//! Which upstream serves a stream: the rendezvous [`NodePool`] of `common` over the edge's
//! upstreams (origins, or shields), keyed by the stream a path belongs to.

pub use tidecast_common::rendezvous::NodePool as OriginPool;

/// The stream a path belongs to (`/live/{stream}/…`, `/vod/{stream}/…`), for upstream choice.
pub fn stream_of(path: &str) -> &str {
    let mut it = path.trim_start_matches('/').split('/');
    match (it.next(), it.next()) {
        (Some("live" | "vod"), Some(stream)) => stream,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_from_path() {
        assert_eq!(stream_of("/live/main/720p/1.m4s"), "main");
        assert_eq!(stream_of("/vod/main/1/master.m3u8"), "main");
        assert_eq!(stream_of("/demo/"), "");
    }
}
