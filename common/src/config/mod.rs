//! Configuration: one TOML file, every key overridable by `TIDECAST_SECTION__KEY=value` env vars.
//!
//! Defaults are embedded, so `tidecast` with no file runs everything with open publishing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

pub mod check;

pub use check::Problem;

/// Errors reading or merging configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The TOML (file or merged env) did not parse or did not fit the schema.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where local data (object store, spool) lives.
    pub data_dir: PathBuf,
    /// Listen backlog of every TCP listener (RTMP, origin, edge): connects a burst may queue
    /// before they are accepted. The kernel caps it at `net.core.somaxconn`.
    pub listen_backlog: u32,
    /// On SIGTERM, seconds the HTTP listeners keep accepting after `/readyz` turned 503 (so
    /// load balancers and Kubernetes endpoints stop sending new work first).
    pub drain_delay_secs: u64,
    /// On SIGTERM, the most seconds the drain waits for work under way (streams ending,
    /// responses, archiver jobs) before the process exits anyway.
    pub drain_timeout_secs: u64,
    /// RTMP ingest.
    pub ingest: IngestConfig,
    /// Transcode ladder.
    pub ladder: LadderConfig,
    /// Origin HTTP server and packager.
    pub origin: OriginConfig,
    /// Object store for archives (local directory or S3).
    pub store: StoreConfig,
    /// Caching edge / shield.
    pub edge: EdgeConfig,
    /// Rooms: WebSocket signaling and calls.
    pub rooms: RoomsConfig,
    /// STUN/TURN for the rooms' clients.
    pub turn: TurnConfig,
    /// Event bus (call events for the archiver).
    pub bus: BusConfig,
    /// The archiver (`tidecast archiver`, part of `tidecast all`).
    pub archiver: ArchiverConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            listen_backlog: crate::http_server::DEFAULT_LISTEN_BACKLOG,
            drain_delay_secs: 0,
            drain_timeout_secs: 25,
            ingest: IngestConfig::default(),
            ladder: LadderConfig::default(),
            origin: OriginConfig::default(),
            store: StoreConfig::default(),
            edge: EdgeConfig::default(),
            rooms: RoomsConfig::default(),
            turn: TurnConfig::default(),
            bus: BusConfig::default(),
            archiver: ArchiverConfig::default(),
        }
    }
}

/// STUN/TURN server settings (`tidecast turn`, part of `tidecast all`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// STUN/TURN over UDP (`ip:port`; empty: off).
    pub listen_udp: String,
    /// STUN/TURN over TCP (empty: off).
    pub listen_tcp: String,
    /// TURN over TLS (`turns:`; empty: off).
    pub listen_tls: String,
    /// PEM certificate chain for TLS (empty: a self-signed one made at start, for development).
    pub tls_cert: String,
    /// PEM private key for TLS.
    pub tls_key: String,
    /// Realm of the long-term credentials.
    pub realm: String,
    /// TURN REST API shared secret: usernames `expiry:identity`, passwords
    /// base64(HMAC-SHA1(secret, username)). Empty = development mode: a random secret made at
    /// start, known to the rooms node in the same process only (logged as a warning).
    pub secret: String,
    /// Peers relays may reach although internal (CIDR, e.g. the deployment's SFU `10.0.0.5/32`).
    /// Empty: none — loopback, private, CGNAT, link-local, multicast and reserved ranges are
    /// refused with 403.
    pub allowed_peers: Vec<String>,
    /// Relay ports, `low-high`.
    pub relay_ports: String,
    /// The address relays bind and announce (empty: the listen address, or for 0.0.0.0 the
    /// default route's address, else 127.0.0.1).
    pub relay_address: String,
    /// Allocations one user (credential identity) may hold.
    pub max_allocations_per_user: usize,
    /// Allocations in total.
    pub max_allocations: usize,
    /// Relayed bandwidth per allocation, kbit/s (0: no limit).
    pub bandwidth_kbps: u64,
    /// Lifetime of the credentials rooms hand out, seconds (allocations end with them).
    pub credential_ttl_secs: u64,
    /// The `turn:`/`stun:` host rooms tell clients (empty: the relay address).
    pub public_host: String,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            listen_udp: "0.0.0.0:3478".into(),
            listen_tcp: "0.0.0.0:3478".into(),
            listen_tls: "0.0.0.0:5349".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            realm: "tidecast".into(),
            secret: String::new(),
            allowed_peers: Vec::new(),
            relay_ports: "49152-65535".into(),
            relay_address: String::new(),
            max_allocations_per_user: 10,
            max_allocations: 1000,
            bandwidth_kbps: 0,
            credential_ttl_secs: 600,
            public_host: String::new(),
        }
    }
}

/// Rooms (video calls) settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// HTTP + WebSocket signaling listen address.
    pub http_listen: String,
    /// Signs join tokens (JWT HS256) and authorises `POST /api/rooms/{room}/tokens`
    /// (`Authorization: Bearer <secret>`). Empty = development mode: a random key is made at
    /// start and anyone may mint tokens (logged as a warning).
    pub api_secret: String,
    /// Lifetime of minted join tokens, seconds.
    pub token_ttl_secs: u64,
    /// A participant whose WebSocket drops may reconnect within this many seconds and keep its
    /// place; the others see it leave only after that.
    pub resume_secs: u64,
    /// Participants per room.
    pub max_participants: usize,
    /// ICE servers handed to clients (`stun:host:port` URLs).
    pub ice_servers: Vec<String>,
    /// Group calls: from the third participant on, media goes through the SFU. Off: rooms stay
    /// peer-to-peer (and `max_participants` should be 2).
    pub sfu: bool,
    /// The SFU's one UDP port for every peer (`ip:port`; port 0 = any free one). On 0.0.0.0 it
    /// binds and announces 127.0.0.1 and the address of the default route; set `media_addresses`
    /// to announce others (a public IP behind 1:1 NAT, several interfaces).
    pub media_listen: String,
    /// A range of UDP (and ICE-TCP) ports instead of the one of `media_listen`, e.g.
    /// `"50000-50099"`: every port is bound, each new peer connection is given the next in turn
    /// (for firewalls or load balancers that spread by port). Empty: the one port.
    pub media_ports: String,
    /// Addresses the SFU binds and announces as host candidates (empty: from `media_listen`).
    pub media_addresses: Vec<String>,
    /// Also accept ICE-TCP on the media port (for clients behind UDP-blocking firewalls).
    pub media_tcp: bool,
    /// A STUN server (`host:port`, e.g. a `tidecast turn` outside the NAT) the SFU asks, from
    /// each media socket on a non-loopback address, for the address the world sees; a mapped
    /// address that differs from the socket's own is announced as a server-reflexive candidate.
    /// Empty: no STUN (the host candidates, or `media_addresses`, are the public ones).
    pub stun_server: String,
    /// Every rooms node of the deployment, as base URLs clients can reach
    /// (`http://rooms-a.example:7880`), this one included. A room lives on one node: the one
    /// its name hashes to (rendezvous) among the healthy ones, unless it is already open on
    /// another; a join that reaches another node is redirected there. Empty: one node.
    pub nodes: Vec<String>,
    /// Names (`host:port`) that resolve to the rooms nodes' addresses, looked up every 5 s:
    /// each address of the family of `node_url`'s is a node `http://ADDRESS:port` (`https` when
    /// `node_url` is), beside those of `nodes`. On Kubernetes, a headless Service over the
    /// rooms DaemonSet lists every ready node. A name that does not resolve leaves the members
    /// as they were.
    pub nodes_dns: Vec<String>,
    /// This node's own entry in `nodes` (with `nodes_dns`: its URL by its address).
    pub node_url: String,
    /// Record every call (through the SFU, into the object store of `[store]`); otherwise a
    /// call is recorded from `POST /api/rooms/{room}/recording` on.
    pub record: bool,
    /// Where `POST /api/rooms/{room}/restream` pushes a room unless the request names a URL:
    /// an RTMP application URL, the stream key `room-{room}` is appended. Empty: this
    /// deployment's own ingest (`rtmp://127.0.0.1:{port of ingest.rtmp_listen}/{ingest.app}`).
    pub restream_url: String,
    /// Restream picture width.
    pub restream_width: u32,
    /// Restream picture height.
    pub restream_height: u32,
    /// Restream frames per second.
    pub restream_fps: u32,
    /// Restream H.264 bitrate, kbit/s (the ladder transcodes it again).
    pub restream_kbps: u32,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            http_listen: "0.0.0.0:7880".into(),
            api_secret: String::new(),
            token_ttl_secs: 6 * 3600,
            resume_secs: 15,
            max_participants: 16,
            ice_servers: Vec::new(),
            sfu: true,
            media_listen: "0.0.0.0:50000".into(),
            media_ports: String::new(),
            media_addresses: Vec::new(),
            media_tcp: true,
            stun_server: String::new(),
            record: false,
            restream_url: String::new(),
            restream_width: 1280,
            restream_height: 720,
            restream_fps: 30,
            restream_kbps: 3000,
            nodes: Vec::new(),
            nodes_dns: Vec::new(),
            node_url: String::new(),
        }
    }
}

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

/// Which object-store backend to use.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A local directory (`store.local_dir`, default `{data_dir}/store`).
    #[default]
    Local,
    /// An S3 bucket (`[store.s3]`).
    S3,
}

/// Object store settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `local` (default) or `s3`.
    pub kind: StoreKind,
    /// Directory of the local store; default `{data_dir}/store`.
    pub local_dir: Option<PathBuf>,
    /// S3 settings (used when `kind = "s3"`).
    pub s3: S3Config,
}

/// Which event bus.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In-process, durable under `bus.dir` (the embedded default).
    #[default]
    Local,
    /// Kafka at `bus.brokers`.
    Kafka,
}

/// Event bus settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `local` (default) or `kafka`.
    pub kind: BusKind,
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Topic of call events (`call.ended`).
    pub topic: String,
    /// Directory of the local log and of the Kafka outbox; default `{data_dir}/bus`.
    pub dir: Option<PathBuf>,
    /// How long the local bus keeps records, read or not (a Kafka topic has its own).
    pub retention_hours: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            kind: BusKind::Local,
            brokers: "127.0.0.1:9092".into(),
            topic: "call-events".into(),
            dir: None,
            retention_hours: 168,
        }
    }
}

/// Archiver settings: assembles recorded calls into one MP4 each.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiverConfig {
    /// Run the archiver inside `tidecast all` (a separate `tidecast archiver` runs it anyway).
    pub enabled: bool,
    /// Consumer group on `bus.topic`.
    pub group: String,
    /// Where chunks are assembled; default `{data_dir}/archiver`.
    pub work_dir: Option<PathBuf>,
    /// Tries per call before its event goes to `{bus.topic}.dlq`.
    pub max_attempts: u32,
    /// First pause between tries, seconds (doubling, at most 60).
    pub retry_secs: u64,
    /// Output width.
    pub width: u32,
    /// Output height.
    pub height: u32,
}

impl Default for ArchiverConfig {
    fn default() -> Self {
        ArchiverConfig {
            enabled: true,
            group: "archiver".into(),
            work_dir: None,
            max_attempts: 8,
            retry_secs: 2,
            width: 1280,
            height: 720,
        }
    }
}

/// S3 bucket settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL (e.g. `http://127.0.0.1:9000` for MinIO/s3s-fs); empty = AWS for `region`.
    pub endpoint: String,
    /// Region.
    pub region: String,
    /// Bucket (must exist).
    pub bucket: String,
    /// Key prefix inside the bucket.
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most self-hosted servers.
    pub path_style: bool,
    /// Access key id; empty = `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// Secret key; empty = `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: String::new(),
            prefix: String::new(),
            path_style: true,
            access_key_id: String::new(),
            secret_access_key: String::new(),
        }
    }
}

impl Config {
    /// Parse TOML text (missing keys take defaults).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let value: toml::Value =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Self::from_value(value)
    }

    fn from_value(value: toml::Value) -> Result<Self, ConfigError> {
        value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))
    }

    /// Load: optional file, then env overrides from `vars` (pass `std::env::vars()`).
    pub fn load(
        path: Option<&std::path::Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let mut value: toml::Value =
            toml::from_str(&text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for (name, raw) in vars {
            let Some(rest) = name.strip_prefix("TIDECAST_") else {
                continue;
            };
            // a name without a section is an override only for a top-level key; the rest
            // (TIDECAST_CONFIG for --config, TIDECAST_BIN for the tests, …) are not config
            if rest.contains("__") || TOP_LEVEL_KEYS.contains(&rest.to_ascii_lowercase().as_str()) {
                apply_env_override(&mut value, rest, &raw)?;
            }
        }
        Self::from_value(value)
    }
}

/// The keys of [`Config`] outside any section (`TIDECAST_DATA_DIR`, `TIDECAST_LISTEN_BACKLOG`).
const TOP_LEVEL_KEYS: [&str; 4] = [
    "data_dir",
    "listen_backlog",
    "drain_delay_secs",
    "drain_timeout_secs",
];

/// `INGEST__RTMP_LISTEN=…` sets `ingest.rtmp_listen`. Path parts are lower-cased except map keys
/// under `keys` (stream keys are case-sensitive). Values parse as TOML scalars/arrays when they
/// can (`2000`, `true`, `["a"]`) and are strings otherwise.
fn apply_env_override(root: &mut toml::Value, path: &str, raw: &str) -> Result<(), ConfigError> {
    let mut parts: Vec<String> = Vec::new();
    for part in path.split("__") {
        if part.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "env override TIDECAST_{path}: empty path component"
            )));
        }
        let keep_case = parts.last().map(|p| p == "keys").unwrap_or(false);
        parts.push(if keep_case {
            part.to_string()
        } else {
            part.to_ascii_lowercase()
        });
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut cur = root;
    let (last, dirs) = parts
        .split_last()
        .ok_or_else(|| ConfigError::Invalid("empty env override".into()))?;
    for dir in dirs {
        let table = cur
            .as_table_mut()
            .ok_or_else(|| ConfigError::Invalid(format!("TIDECAST_{path}: not a table")))?;
        cur = table
            .entry(dir.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    let table = cur
        .as_table_mut()
        .ok_or_else(|| ConfigError::Invalid(format!("TIDECAST_{path}: not a table")))?;
    table.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_target_bounds_two_frames_over() {
        let ms = std::time::Duration::from_millis;
        // 400 ms at 30 fps: 12 frames, 13 with a late keyframe (0.433 s)
        assert_eq!(part_target(ms(400)), ms(484));
        // 24 fps: 10 frames = 0.4167 s, up to 11 (0.4583 s)
        assert!(part_target(ms(400)) >= std::time::Duration::from_micros(458_334));
        assert_eq!(part_target(ms(1000)), ms(1100));
        assert_eq!(part_target(ms(250)), ms(334));
    }

    #[test]
    fn defaults_without_file() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.ladder.rungs.len(), 5);
    }

    #[test]
    fn env_overrides_nested_keys() {
        let vars = vec![
            (
                "TIDECAST_ORIGIN__HTTP_LISTEN".into(),
                "127.0.0.1:9000".into(),
            ),
            ("TIDECAST_LADDER__SEGMENT_MS".into(), "1000".into()),
            ("TIDECAST_INGEST__KEYS__AbC".into(), "main".into()),
            ("OTHER".into(), "x".into()),
            ("TIDECAST_DATA_DIR".into(), "/srv/tidecast".into()),
            ("TIDECAST_LISTEN_BACKLOG".into(), "8192".into()),
            // not config keys: --config's env var, the test harness's binary path
            ("TIDECAST_CONFIG".into(), "/etc/tidecast.toml".into()),
            ("TIDECAST_BIN".into(), "/usr/bin/tidecast".into()),
        ];
        let c = Config::load(None, vars).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/tidecast"));
        assert_eq!(c.listen_backlog, 8192);
        assert_eq!(c.origin.http_listen, "127.0.0.1:9000");
        assert_eq!(c.ladder.segment_ms, 1000);
        assert_eq!(c.ingest.keys.get("AbC").map(String::as_str), Some("main"));
    }

    #[test]
    fn parts_divide_segments() {
        let ladder = |segment_ms, part_ms| LadderConfig {
            segment_ms,
            part_ms,
            ..LadderConfig::default()
        };
        let ms = |v: u64| Some(std::time::Duration::from_millis(v));
        assert_eq!(LadderConfig::default().part(), ms(250));
        assert_eq!(ladder(2000, 333).part(), ms(400));
        assert_eq!(ladder(2000, 500).part(), ms(500));
        assert_eq!(ladder(2000, 300).part(), ms(250));
        assert_eq!(ladder(6000, 1000).part(), ms(1000));
        assert_eq!(ladder(2000, 10).part(), ms(50));
        assert_eq!(ladder(2000, 0).part(), None);
        let passthrough = LadderConfig {
            passthrough: true,
            ..LadderConfig::default()
        };
        assert_eq!(passthrough.part(), ms(400));
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(Config::from_toml("[origin]\nhttp_lsten = 'x'").is_err());
        let typo = vec![("TIDECAST_ORIGN__HTTP_LISTEN".to_string(), "x".to_string())];
        assert!(
            Config::load(None, typo).is_err(),
            "a misspelt section is reported"
        );
        let c = Config::from_toml("[[ladder.rungs]]\nname='a'\nheight=100\nvideo_kbps=10").unwrap();
        assert_eq!(c.ladder.rungs.len(), 1);
    }
}
