//! The command line: global flags, the subcommands, and the configuration they override.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tidecast_common::Config;

/// Live streaming origin, transcode ladder and player demo in one binary.
///
/// Publish from OBS with Server `rtmp://HOST:1935/live` and any Stream key (open mode) or a key
/// from `[ingest.keys]`; watch at `http://HOST:8080/demo/` or `/live/{stream}/master.m3u8`.
/// Every config key can also be set as `TIDECAST_SECTION__KEY` (e.g. `TIDECAST_ORIGIN__HTTP_LISTEN`).
#[derive(Parser, Debug)]
#[command(name = "tidecast", version, about, long_about)]
pub struct Cli {
    /// TOML config file (defaults are embedded; see docs/configuration.md).
    #[arg(long, short, global = true, env = "TIDECAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// RTMP listen address (ingest.rtmp_listen), default 0.0.0.0:1935.
    #[arg(long, global = true)]
    pub rtmp_listen: Option<String>,
    /// Origin HTTP listen address (origin.http_listen), default 0.0.0.0:8080.
    #[arg(long, global = true)]
    pub http_listen: Option<String>,
    /// Data directory (data_dir), default ./data.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Stream key mapping KEY=STREAM (repeatable); with none, publishing is open.
    #[arg(long = "stream-key", global = true, value_name = "KEY=STREAM")]
    pub stream_keys: Vec<String>,
    /// Edge HTTP listen address (edge.http_listen), default 0.0.0.0:8081.
    #[arg(long, global = true)]
    pub edge_listen: Option<String>,
    /// Edge upstream base URL (repeatable; edge.upstreams): origins, or shields for an edge.
    #[arg(long = "upstream", global = true, value_name = "URL")]
    pub upstreams: Vec<String>,
    /// Edge region label (edge.region).
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Edge role label, `edge` or `shield` (edge.role).
    #[arg(long, global = true)]
    pub role: Option<String>,
    /// Rooms HTTP/WebSocket listen address (rooms.http_listen), default 0.0.0.0:7880.
    #[arg(long, global = true)]
    pub rooms_listen: Option<String>,
    /// Check the configuration (file, environment overrides and these flags) and exit: 0 when
    /// it is fine, 2 with each offending key on stderr when it is not.
    #[arg(long, global = true)]
    pub check_config: bool,
    /// Log filter (RUST_LOG syntax), default `info`.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Every service in one process (the default).
    All,
    /// Only the RTMP ingest and transcode ladder, pushing CMAF to `ingest.origin_url` (a remote
    /// `tidecast origin` with `origin.push_token`). Serves /metrics and /healthz on the HTTP port.
    Ingest,
    /// Only the origin HTTP server.
    Origin,
    /// Only the caching edge (or, with `--role shield`, a shield in front of origins).
    Edge,
    /// Only rooms: WebSocket signaling for video calls on `rooms.http_listen`.
    Rooms,
    /// Only STUN/TURN (`turn.listen_udp`, `turn.listen_tcp`) for the rooms' clients.
    Turn,
    /// Only the archiver: consumes `call.ended` from `[bus]` and assembles each recorded call
    /// into `recordings/{meeting}/recording.mp4` in `[store]`. Serves /metrics and /healthz on
    /// the HTTP port.
    Archiver,
    /// Signed playback tokens and room join tokens.
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Synthetic participants (webrtc-rs) that join a room, publish simulcast and subscribe,
    /// then print what each received: bitrate, layer (frame height), switches, loss, freezes,
    /// RTT. The load generator for a rooms deployment.
    Bot {
        /// The rooms node's HTTP/WebSocket address, `host:port`.
        #[arg(long, default_value = "127.0.0.1:7880")]
        server: String,
        /// Room to join.
        #[arg(long)]
        room: String,
        /// How many participants.
        #[arg(long, default_value_t = 3)]
        participants: usize,
        /// Identities are this prefix and a number.
        #[arg(long, default_value = "bot-")]
        prefix: String,
        /// Seconds to stay.
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        /// Seconds between joins.
        #[arg(long, default_value_t = 0.5)]
        join_interval: f64,
        /// The rooms node's `rooms.api_secret` (none: its development default mints for anyone).
        #[arg(long, env = "TIDECAST_ROOMS__API_SECRET", default_value = "")]
        secret: String,
        /// Only subscribe (publish nothing): `--publishers 0`.
        #[arg(long, conflicts_with = "publishers")]
        no_publish: bool,
        /// How many of the participants publish (the first ones); the others only subscribe, as
        /// a webinar's viewers. Default: all of them.
        #[arg(long)]
        publishers: Option<usize>,
        /// Layer asked of every other participant over time: `SECONDS=high|low|off,…`.
        #[arg(long, default_value = "0=low")]
        schedule: String,
        /// `high` is for one participant (the first of the others, like a pinned tile); the
        /// others get `low`.
        #[arg(long)]
        pin: bool,
        /// Join Janus's VideoRoom at this `host:port` (its REST API, e.g. 127.0.0.1:8088)
        /// instead of a tidecast rooms node: the anchor of `bench/sfu.sh`.
        #[arg(long)]
        janus: Option<String>,
        /// Each participant shows a solid colour of its own (red, green, blue, …) instead of
        /// the test pattern: tells tiles apart in a composited recording.
        #[arg(long)]
        colours: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration as TOML-like debug output and exit.
    Config,
}

#[derive(Subcommand, Debug, Clone)]
pub enum TokenCommand {
    /// Print a token (and a URL) for paths under `--path`, valid for `--ttl` seconds.
    Sign {
        /// The edges' `edge.signing_secret` (default: from the config).
        #[arg(long, env = "TIDECAST_EDGE__SIGNING_SECRET")]
        secret: Option<String>,
        /// Path prefix the token opens, e.g. `/live/main/`.
        #[arg(long)]
        path: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Bind the token to this client IP.
        #[arg(long)]
        ip: Option<String>,
    },
    /// Print a room join token (JWT) for `--identity` in `--room`.
    Room {
        /// The rooms node's `rooms.api_secret` (default: from the config).
        #[arg(long, env = "TIDECAST_ROOMS__API_SECRET")]
        secret: Option<String>,
        /// Room name.
        #[arg(long)]
        room: String,
        /// Participant identity (unique in the room).
        #[arg(long)]
        identity: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        /// A viewer token (receives only); default: publisher.
        #[arg(long)]
        viewer: bool,
        /// The participant may start and stop the call's recording.
        #[arg(long)]
        record: bool,
        /// Lifetime in seconds (default: rooms.token_ttl_secs).
        #[arg(long)]
        ttl: Option<u64>,
    },
}

pub fn load_config(cli: &Cli) -> Result<Config> {
    let mut config =
        Config::load(cli.config.as_deref(), std::env::vars()).context("loading configuration")?;
    if let Some(v) = &cli.rtmp_listen {
        config.ingest.rtmp_listen = v.clone();
    }
    if let Some(v) = &cli.http_listen {
        config.origin.http_listen = v.clone();
    }
    if let Some(v) = &cli.data_dir {
        config.data_dir = v.clone();
    }
    if let Some(v) = &cli.edge_listen {
        config.edge.http_listen = v.clone();
    }
    if !cli.upstreams.is_empty() {
        config.edge.upstreams = cli.upstreams.clone();
    }
    if let Some(v) = &cli.rooms_listen {
        config.rooms.http_listen = v.clone();
    }
    if let Some(v) = &cli.region {
        config.edge.region = v.clone();
    }
    if let Some(v) = &cli.role {
        anyhow::ensure!(v == "edge" || v == "shield", "--role is `edge` or `shield`");
        config.edge.role = v.clone();
    }
    for pair in &cli.stream_keys {
        let (key, stream) = pair
            .split_once('=')
            .with_context(|| format!("--stream-key {pair}: expected KEY=STREAM"))?;
        anyhow::ensure!(
            tidecast_common::keys::is_valid_stream_name(stream),
            "--stream-key {pair}: stream names are 1-64 characters of A-Z a-z 0-9 _ -"
        );
        config
            .ingest
            .keys
            .insert(key.to_string(), stream.to_string());
    }
    Ok(config)
}
