//! The streaming half's sections: `[ingest]`, `[ladder]` (and its rungs), `[origin]`, `[edge]`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// RTMP ingest settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// RTMP listen address.
    pub rtmp_listen: String,
    /// RTMP application name publishers connect to (`rtmp://host:1935/{app}`).
    pub app: String,
    /// Stream key → stream name. Empty = open publishing (stream name = key).
    pub keys: BTreeMap<String, String>,
    /// Seconds a client may take to finish the handshake and start publishing.
    pub handshake_timeout_secs: u64,
    /// Seconds without any bytes from a publisher before it is dropped.
    pub idle_timeout_secs: u64,
    /// A new publisher on a live key takes the stream over if the current one has sent no media
    /// for this many seconds (a half-dead connection after a network drop); otherwise it is refused.
    pub takeover_after_secs: u64,
    /// Empty: ladders hand CMAF to the origin in this process (`tidecast all`). Set (e.g.
    /// `http://origin:8080`): ladders push CMAF to that origin over HTTP (`tidecast ingest`);
    /// several comma-separated origins all get the same push (for origin failover).
    pub origin_url: String,
    /// Bearer token for pushing to `origin_url` (the origin's `origin.push_token`).
    pub origin_token: String,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            rtmp_listen: "0.0.0.0:1935".into(),
            app: "live".into(),
            keys: BTreeMap::new(),
            handshake_timeout_secs: 10,
            idle_timeout_secs: 15,
            takeover_after_secs: 3,
            origin_url: String::new(),
            origin_token: String::new(),
        }
    }
}

/// One rung of the video ladder.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RungConfig {
    /// Rendition name used in URLs, e.g. `720p`.
    pub name: String,
    /// Output height; width follows the source aspect ratio.
    pub height: u32,
    /// x264 target bitrate in kbit/s.
    pub video_kbps: u32,
}

/// Transcode ladder settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LadderConfig {
    /// Target segment duration in milliseconds; transcoded rungs get a keyframe at each boundary.
    pub segment_ms: u64,
    /// CMAF chunk (LL-HLS part) duration in milliseconds; 0 = whole segments only (no LL-HLS).
    pub part_ms: u64,
    /// x264 `speed-preset` (ultrafast … veryslow).
    pub x264_preset: String,
    /// x264 threads per rung (0 = auto).
    pub x264_threads: u32,
    /// Add a `source` rendition that repackages the publisher's H.264 without re-encoding, when
    /// the publisher's keyframe interval is at most 1.5× `segment_ms`; segments then follow the
    /// source's keyframes in every rendition. Longer GOPs (OBS "auto") are transcoded only.
    pub passthrough: bool,
    /// Video rungs, highest first; rungs above the source height are dropped.
    pub rungs: Vec<RungConfig>,
}

impl Default for LadderConfig {
    fn default() -> Self {
        let rung = |name: &str, height, video_kbps| RungConfig {
            name: name.into(),
            height,
            video_kbps,
        };
        LadderConfig {
            segment_ms: 2000,
            part_ms: 250,
            x264_preset: "veryfast".into(),
            x264_threads: 0,
            passthrough: false,
            rungs: vec![
                rung("1080p", 1080, 5000),
                rung("720p", 720, 2800),
                rung("480p", 480, 1400),
                rung("360p", 360, 800),
                rung("240p", 240, 400),
            ],
        }
    }
}

/// Shortest part with passthrough on: `cmafmux` fed the publisher's own H.264 (B-frames,
/// composition offsets) with 200–250 ms chunks missed the keyframe at a segment boundary and
/// cut a 4 s segment in the source rendition only (e2e `passthrough_…`); 400 ms and up do not.
pub const MIN_PASSTHROUGH_PART_MS: u64 = 400;

/// LL-HLS `PART-TARGET` for parts of `part`: it must bound every part and never change. The
/// ladder ends a part at the first frame at or after its nominal end, or before a frame that would
/// take it past this target (see `ingest::segmenting::SplitPlan`); the first part of a segment
/// can run a frame longer when the forced keyframe lands a frame late: two frames over at most at
/// 24 fps and up (2 × 41.7 ms), one frame of up to the target below that; +10 % when more.
pub fn part_target(part: std::time::Duration) -> std::time::Duration {
    part + (part / 10).max(std::time::Duration::from_millis(84))
}

impl LadderConfig {
    /// The part (CMAF chunk) duration the ladder really uses: `part_ms` moved to the nearest
    /// duration that divides `segment_ms` (the larger one on a tie), at least 50 ms; `None` when
    /// parts are off. `cmafmux` can only cut a fragment on a chunk boundary: 333 ms parts in 2 s
    /// segments left every fragment waiting past the forced keyframe (10 s segments). With
    /// passthrough on, at least [`MIN_PASSTHROUGH_PART_MS`].
    pub fn part(&self) -> Option<std::time::Duration> {
        if self.part_ms == 0 {
            return None;
        }
        let wanted = if self.passthrough {
            self.part_ms.max(MIN_PASSTHROUGH_PART_MS)
        } else {
            self.part_ms
        };
        let segment = self.segment_ms.max(100);
        let parts = (1..=segment / 50)
            .filter(|n| segment.is_multiple_of(*n))
            .map(|n| segment / n)
            .min_by_key(|p| (p.abs_diff(wanted), std::cmp::Reverse(*p)))
            .unwrap_or(segment);
        Some(std::time::Duration::from_millis(parts))
    }
}

/// Origin settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// HTTP listen address.
    pub http_listen: String,
    /// Segments listed in a live media playlist.
    pub window_segments: usize,
    /// Segments kept downloadable after they leave the playlist.
    pub grace_segments: usize,
    /// DVR: when > 0, live playlists list this many seconds of segments (rewind window) instead
    /// of `window_segments`.
    pub dvr_window_secs: u64,
    /// Streams that ended are forgotten after this many seconds.
    pub ended_stream_ttl_secs: u64,
    /// Directory with the player demo to serve under `/demo/` instead of the embedded copy.
    pub demo_dir: Option<PathBuf>,
    /// Bearer token remote ladders must present to push CMAF to `/ingest/…`; empty = push
    /// disabled.
    pub push_token: String,
    /// Archive every stream's segments and playlists to the object store (VOD at
    /// `/vod/{stream}/{session}/…` once it ends).
    pub archive: bool,
    /// Seconds between retries of archive uploads that failed (spooled on local disk meanwhile).
    pub archive_retry_secs: u64,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            http_listen: "0.0.0.0:8080".into(),
            window_segments: 6,
            grace_segments: 6,
            dvr_window_secs: 0,
            ended_stream_ttl_secs: 3600,
            demo_dir: None,
            push_token: String::new(),
            archive: true,
            archive_retry_secs: 2,
        }
    }
}

/// Caching edge settings (`tidecast edge`, and the edge `tidecast all` runs in front of its
/// origin).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// HTTP listen address.
    pub http_listen: String,
    /// `edge` (serves players) or `shield` (serves edges); a label for logs and metrics, the
    /// behaviour is the same.
    pub role: String,
    /// Region label (`eu`, `us-east`, …).
    pub region: String,
    /// Upstream base URLs: origins (for a shield or a single-tier edge) or shields. Streams are
    /// spread over them by rendezvous hashing; unhealthy ones are skipped.
    pub upstreams: Vec<String>,
    /// Cache size in MiB (byte-weighted, LRU eviction).
    pub cache_mb: u64,
    /// Longest wait for an upstream response head (above the origin's 3 × target-duration
    /// hold of blocking playlist requests).
    pub upstream_timeout_ms: u64,
    /// Interval of active health checks (`GET /healthz`) per upstream.
    pub health_interval_ms: u64,
    /// Longest a 404 is cached.
    pub negative_ttl_ms: u64,
    /// How long a playlist/MPD may be served stale while every upstream fails.
    pub playlist_grace_ms: u64,
    /// HMAC secret for signed playback tokens; empty = no signed playback.
    pub signing_secret: String,
    /// Send cached bodies of 16 KB and more with `sendfile` from an in-memory file (zero-copy;
    /// nginx's `sendfile on`).
    pub sendfile: bool,
    /// Streams that require a token (`*` = all); needs `signing_secret`.
    pub signed_streams: Vec<String>,
    /// Edges the director (`/director/…` on this node) steers players to: `REGION=URL`
    /// entries, e.g. `["eu=http://edge-eu:8081", "us=http://edge-us:8081"]`. Empty = no director.
    pub director: Vec<String>,
    /// Per region, the other regions in order of preference (`eu = ["us"]`) when it has no
    /// healthy edge; regions not listed fall back in `director` order.
    pub nearest: BTreeMap<String, Vec<String>>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            http_listen: "0.0.0.0:8081".into(),
            role: "edge".into(),
            region: "local".into(),
            upstreams: vec!["http://127.0.0.1:8080".into()],
            cache_mb: 512,
            upstream_timeout_ms: 10_000,
            health_interval_ms: 1_000,
            negative_ttl_ms: 1_000,
            playlist_grace_ms: 4_000,
            signing_secret: String::new(),
            sendfile: true,
            signed_streams: Vec::new(),
            director: Vec::new(),
            nearest: BTreeMap::new(),
        }
    }
}
