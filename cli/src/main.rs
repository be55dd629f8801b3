//! `tidecast`: every service in one binary. With no arguments it runs everything (`all`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tidecast_common::config::EdgeConfig;
use tidecast_common::http_server::bind;
use tidecast_common::metrics::Registry;
use tidecast_common::service::{NoRoutes, Readiness, Service};
use tidecast_common::Config;
use tracing::{info, warn};

/// Live streaming origin, transcode ladder and player demo in one binary.
///
/// Publish from OBS with Server `rtmp://HOST:1935/live` and any Stream key (open mode) or a key
/// from `[ingest.keys]`; watch at `http://HOST:8080/demo/` or `/live/{stream}/master.m3u8`.
/// Every config key can also be set as `TIDECAST_SECTION__KEY` (e.g. `TIDECAST_ORIGIN__HTTP_LISTEN`).
#[derive(Parser, Debug)]
#[command(name = "tidecast", version, about, long_about)]
struct Cli {
    /// TOML config file (defaults are embedded; see docs/configuration.md).
    #[arg(long, short, global = true, env = "TIDECAST_CONFIG")]
    config: Option<PathBuf>,
    /// RTMP listen address (ingest.rtmp_listen), default 0.0.0.0:1935.
    #[arg(long, global = true)]
    rtmp_listen: Option<String>,
    /// Origin HTTP listen address (origin.http_listen), default 0.0.0.0:8080.
    #[arg(long, global = true)]
    http_listen: Option<String>,
    /// Data directory (data_dir), default ./data.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Stream key mapping KEY=STREAM (repeatable); with none, publishing is open.
    #[arg(long = "stream-key", global = true, value_name = "KEY=STREAM")]
    stream_keys: Vec<String>,
    /// Edge HTTP listen address (edge.http_listen), default 0.0.0.0:8081.
    #[arg(long, global = true)]
    edge_listen: Option<String>,
    /// Edge upstream base URL (repeatable; edge.upstreams): origins, or shields for an edge.
    #[arg(long = "upstream", global = true, value_name = "URL")]
    upstreams: Vec<String>,
    /// Edge region label (edge.region).
    #[arg(long, global = true)]
    region: Option<String>,
    /// Edge role label, `edge` or `shield` (edge.role).
    #[arg(long, global = true)]
    role: Option<String>,
    /// Rooms HTTP/WebSocket listen address (rooms.http_listen), default 0.0.0.0:7880.
    #[arg(long, global = true)]
    rooms_listen: Option<String>,
    /// Check the configuration (file, environment overrides and these flags) and exit: 0 when
    /// it is fine, 2 with each offending key on stderr when it is not.
    #[arg(long, global = true)]
    check_config: bool,
    /// Log filter (RUST_LOG syntax), default `info`.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
enum Command {
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
enum TokenCommand {
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

fn load_config(cli: &Cli) -> Result<Config> {
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

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) if cli.check_config => {
            eprintln!("{e:#}");
            std::process::exit(2);
        }
        Err(e) => return Err(e),
    };
    let problems = config.check();
    if cli.check_config {
        for p in &problems {
            eprintln!("{p}");
        }
        if !problems.is_empty() {
            eprintln!(
                "tidecast: {} problem(s) in the configuration{}",
                problems.len(),
                cli.config
                    .as_ref()
                    .map(|p| format!(" ({})", p.display()))
                    .unwrap_or_default()
            );
            std::process::exit(2);
        }
        println!("configuration ok");
        return Ok(());
    }
    for p in &problems {
        warn!(key = %p.key, "configuration: {}", p.message);
    }
    let command = cli.command.clone().unwrap_or(Command::All);
    match &command {
        Command::Config => {
            println!("{config:#?}");
            return Ok(());
        }
        Command::Token {
            action:
                TokenCommand::Sign {
                    secret,
                    path,
                    ttl,
                    ip,
                },
        } => {
            let secret = secret
                .clone()
                .unwrap_or_else(|| config.edge.signing_secret.clone());
            anyhow::ensure!(
                !secret.is_empty(),
                "no secret: pass --secret or set edge.signing_secret"
            );
            anyhow::ensure!(path.starts_with('/'), "--path must start with /");
            let expires = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("system clock before 1970")?
                .as_secs()
                + ttl;
            let token = tidecast_common::token::TokenSigner::new(secret.as_bytes()).sign(
                &tidecast_common::token::TokenClaims {
                    expires,
                    path_prefix: path.clone(),
                    client_ip: ip.clone(),
                },
            );
            println!("{token}");
            return Ok(());
        }
        Command::Token {
            action:
                TokenCommand::Room {
                    secret,
                    room,
                    identity,
                    name,
                    viewer,
                    record,
                    ttl,
                },
        } => {
            use tidecast_rooms::token::{is_valid_name, JoinClaims, JoinTokens, RoomRole};
            let secret = secret
                .clone()
                .unwrap_or_else(|| config.rooms.api_secret.clone());
            anyhow::ensure!(
                !secret.is_empty(),
                "no secret: pass --secret or set rooms.api_secret"
            );
            anyhow::ensure!(
                is_valid_name(room) && is_valid_name(identity),
                "room and identity are 1-64 of A-Z a-z 0-9 _ - ."
            );
            let role = if *viewer {
                RoomRole::Viewer
            } else {
                RoomRole::Publisher
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("system clock before 1970")?
                .as_secs();
            let token = JoinTokens::new(secret.as_bytes()).mint(&JoinClaims {
                room: room.clone(),
                sub: identity.clone(),
                name: name.clone(),
                role,
                record: *record,
                iat: now,
                exp: now + ttl.unwrap_or(config.rooms.token_ttl_secs),
            });
            println!("{token}");
            return Ok(());
        }
        Command::Bot {
            server,
            room,
            participants,
            prefix,
            duration,
            join_interval,
            secret,
            no_publish,
            publishers,
            schedule,
            pin,
            janus,
            colours,
            json,
        } => {
            anyhow::ensure!(
                duration.is_finite() && *duration > 0.0 && *duration < 86_400.0,
                "--duration is seconds, above 0"
            );
            anyhow::ensure!(
                join_interval.is_finite() && (0.0..3600.0).contains(join_interval),
                "--join-interval is seconds"
            );
            let options = tidecast_bot::BotOptions {
                server: server.clone(),
                room: room.clone(),
                participants: *participants,
                prefix: prefix.clone(),
                duration: std::time::Duration::from_secs_f64(*duration),
                join_interval: std::time::Duration::from_secs_f64(*join_interval),
                secret: secret.clone(),
                publishers: if *no_publish {
                    0
                } else {
                    publishers.unwrap_or(usize::MAX)
                },
                schedule: tidecast_bot::parse_schedule(schedule)?,
                pin: *pin,
                janus: janus.clone(),
                colours: *colours,
            };
            let report = tidecast_bot::run(options).await?;
            if *json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", tidecast_bot::render(&report));
            }
            anyhow::ensure!(
                report.failures.is_empty(),
                "bots failed: {:?}",
                report.failures
            );
            return Ok(());
        }
        _ => {}
    }
    let open_files = tidecast_common::zero_copy::raise_fd_limit();
    tracing::debug!(?open_files, "open files limit");
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let registry = Registry::default();
    // the ingest role only serves /metrics and /healthz: nothing to archive there
    let store = if config.origin.archive && matches!(command, Command::All | Command::Origin) {
        let store = tidecast_common::store::from_config(&config.store, &config.data_dir)
            .context("setting up the object store ([store] config)")?;
        info!(
            store = store.kind(),
            "archiving streams to the object store"
        );
        Some(store)
    } else {
        None
    };
    // the origin runs only where it serves (`all`, `origin`): an ingest node pushes to a remote one
    let origin = matches!(command, Command::All | Command::Origin)
        .then(|| tidecast_origin::Origin::new(&config, &registry, store));
    let mut tasks = tokio::task::JoinSet::new();

    let readiness = Readiness::default();
    readiness.set_drain_delay(std::time::Duration::from_secs(config.drain_delay_secs));
    let mut turn = None;
    // TURN first: its sockets are up before any /healthz says so
    if matches!(command, Command::All | Command::Turn) {
        let setup = tidecast_turn::setup(&config.turn)?;
        if setup.dev_secret {
            warn!(
                "turn.secret is not set: development mode, a random TURN secret only this \
                 process's rooms can hand out credentials for; set TIDECAST_TURN__SECRET in production"
            );
        }
        if setup.self_signed && setup.listeners.tls.is_some() {
            warn!(
                "turn.tls_cert is not set: TURN over TLS uses a self-signed certificate (for \
                 development; browsers will not accept it); set turn.tls_cert and turn.tls_key"
            );
        }
        let core = tidecast_turn::core::TurnCore::new(
            setup.credentials.clone(),
            setup.filter.clone(),
            setup.limits.clone(),
        )
        .with_ipv6_relays(setup.listeners.relay_ip.is_ipv6());
        let server =
            tidecast_turn::server::TurnServer::start(setup.listeners.clone(), core, &registry)
                .await
                .with_context(|| {
                    format!(
                        "binding TURN on {} (udp) / {} (tcp) / {} (tls)",
                        config.turn.listen_udp, config.turn.listen_tcp, config.turn.listen_tls
                    )
                })?;
        turn = Some((setup, server));
    }
    if matches!(
        command,
        Command::All | Command::Origin | Command::Ingest | Command::Turn
    ) {
        let listener = bind(&config.origin.http_listen, config.listen_backlog)
            .await
            .with_context(|| format!("binding origin HTTP on {}", config.origin.http_listen))?;
        if matches!(command, Command::Ingest | Command::Turn) {
            // an ingest or TURN node serves only its health, readiness and metrics
            let role = if matches!(command, Command::Ingest) {
                "ingest"
            } else {
                "turn"
            };
            let service = Service::new(Arc::new(NoRoutes(role)), &registry, &readiness);
            tasks.spawn(async move { service.serve(listener).await.context("metrics http") });
        } else if let Some(o) = origin.clone() {
            let r = readiness.clone();
            tasks.spawn(async move { o.serve(listener, &r).await.context("origin http") });
        }
    }
    if matches!(command, Command::All | Command::Ingest) {
        tidecast_ingest::ladder::init_gstreamer().context("initialising GStreamer")?;
        let listener = bind(&config.ingest.rtmp_listen, config.listen_backlog)
            .await
            .with_context(|| format!("binding RTMP on {}", config.ingest.rtmp_listen))?;
        let sink = if config.ingest.origin_url.is_empty() {
            let Some(o) = origin.as_ref().filter(|_| matches!(command, Command::All)) else {
                anyhow::bail!(
                    "`tidecast ingest` pushes to a remote origin: set ingest.origin_url \
                     (TIDECAST_INGEST__ORIGIN_URL) and ingest.origin_token"
                );
            };
            o.event_sender(&readiness)
        } else {
            let urls: Vec<&str> = config
                .ingest
                .origin_url
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .collect();
            tidecast_ingest::push::spawn_fanout(
                &urls,
                &config.ingest.origin_token,
                &registry,
                &readiness,
            )?
        };
        let ingest = tidecast_ingest::IngestServer::new(&config, sink, &registry);
        let r = readiness.clone();
        tasks.spawn(async move { ingest.run(listener, &r).await.context("rtmp ingest") });
    }
    if matches!(command, Command::All | Command::Edge) {
        let mut edge_config = config.edge.clone();
        if matches!(command, Command::All)
            && edge_config.upstreams == EdgeConfig::default().upstreams
        {
            // in one process the edge fronts this process's origin, wherever it listens
            let origin = config.origin.http_listen.replace("0.0.0.0", "127.0.0.1");
            edge_config.upstreams = vec![format!("http://{origin}")];
        }
        let listener = bind(&edge_config.http_listen, config.listen_backlog)
            .await
            .with_context(|| format!("binding edge HTTP on {}", edge_config.http_listen))?;
        let edge = tidecast_edge::Edge::new(&edge_config, &registry)
            .map_err(|e| anyhow::anyhow!("edge configuration: {e}"))?;
        let r = readiness.clone();
        tasks.spawn(async move { edge.serve(listener, &r).await.context("edge http") });
    }
    // one event bus per process: the rooms publish call.ended on it, the archiver consumes it
    let bus = if matches!(command, Command::All | Command::Rooms | Command::Archiver) {
        let bus = tidecast_common::bus::from_config(&config.bus, &config.data_dir, &registry)
            .context("setting up the event bus ([bus] config)")?;
        info!(bus = bus.kind(), topic = %config.bus.topic, "call events on the event bus");
        Some(bus)
    } else {
        None
    };
    if matches!(command, Command::Archiver) {
        let listener = bind(&config.origin.http_listen, config.listen_backlog)
            .await
            .with_context(|| format!("binding HTTP on {}", config.origin.http_listen))?;
        let service = Service::new(Arc::new(NoRoutes("archiver")), &registry, &readiness);
        tasks.spawn(async move { service.serve(listener).await.context("metrics http") });
    }
    let run_archiver = match command {
        Command::Archiver => true,
        Command::All => config.archiver.enabled,
        _ => false,
    };
    if let (true, Some(bus)) = (run_archiver, &bus) {
        let store = tidecast_common::store::from_config(&config.store, &config.data_dir)
            .context("setting up the object store for the archiver ([store] config)")?;
        let a = &config.archiver;
        let settings = tidecast_archive::ArchiverSettings {
            topic: config.bus.topic.clone(),
            group: a.group.clone(),
            work_dir: a
                .work_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("archiver")),
            max_attempts: a.max_attempts.max(1),
            retry: std::time::Duration::from_secs(a.retry_secs.max(1)),
            width: a.width.clamp(160, 3840) & !1,
            height: a.height.clamp(90, 2160) & !1,
        };
        let archiver = tidecast_archive::Archiver::new(store, bus.clone(), settings, &registry);
        let r = readiness.clone();
        tasks.spawn(async move {
            archiver.run(&r).await;
            Ok(())
        });
    }
    if matches!(command, Command::All | Command::Rooms) {
        let listener = bind(&config.rooms.http_listen, config.listen_backlog)
            .await
            .with_context(|| format!("binding rooms HTTP on {}", config.rooms.http_listen))?;
        // TURN credentials for joining clients: from the TURN server in this process, or for a
        // separate `tidecast turn` from the shared turn.secret and its public host
        let handout =
            |setup: &tidecast_turn::TurnSetup, udp, tcp, tls| tidecast_rooms::TurnHandout {
                credentials: setup.credentials.clone(),
                urls: setup.urls(udp, tcp, tls),
                ttl: setup.credential_ttl,
            };
        let turn = match &turn {
            Some((setup, server)) => Some(handout(setup, server.udp, server.tcp, server.tls)),
            None if !config.turn.secret.is_empty() => {
                let setup = tidecast_turn::setup(&config.turn)?;
                let tls = setup.listeners.tls.as_ref().map(|(a, _)| *a);
                Some(handout(
                    &setup,
                    setup.listeners.udp,
                    setup.listeners.tcp,
                    tls,
                ))
            }
            None => None,
        };
        let events = bus.clone().map(|bus| tidecast_rooms::CallEvents {
            bus,
            topic: config.bus.topic.clone(),
        });
        // recordings go to the same object store as the archive, through their own spool
        let store = tidecast_common::store::from_config(&config.store, &config.data_dir)
            .context("setting up the object store for recordings ([store] config)")?;
        let writer = tidecast_common::spool::SpooledWriter::spawn(
            store,
            config.data_dir.join("spool-recording"),
            std::time::Duration::from_secs(config.origin.archive_retry_secs),
            &registry,
            "recording",
        );
        writer.hold_drain(&readiness);
        let recorder = tidecast_rooms::recording::Recorder::spawn(
            writer,
            config.data_dir.join("recording-tmp"),
            &registry,
        );
        let restreamer = tidecast_rooms::restream::Restreamer::new(
            tidecast_rooms::restream::composite::CompositeSettings {
                width: config.rooms.restream_width.clamp(160, 3840) & !1,
                height: config.rooms.restream_height.clamp(90, 2160) & !1,
                fps: config.rooms.restream_fps.clamp(1, 60),
                video_kbps: config.rooms.restream_kbps.max(100),
                x264_preset: config.ladder.x264_preset.clone(),
            },
            &restream_url(&config),
            &registry,
        );
        let rooms = tidecast_rooms::Rooms::new(
            &config.rooms,
            &registry,
            turn,
            events,
            Some(recorder),
            Some(restreamer),
        )
        .with_context(|| {
            format!(
                "starting the SFU on {} (rooms.media_listen)",
                config.rooms.media_listen
            )
        })?;
        let r = readiness.clone();
        tasks.spawn(async move { rooms.serve(listener, &r).await.context("rooms http") });
    }
    info!(?command, "tidecast running");
    let signal = tokio::select! {
        r = tasks.join_next() => {
            return match r {
                Some(Ok(Err(e))) => Err(e),
                Some(Err(e)) => Err(anyhow::anyhow!("service task failed: {e}")),
                _ => Ok(()),
            };
        }
        s = tidecast_common::lifecycle::shutdown_signal() => s,
    };
    drain(&readiness, &config, signal).await;
    Ok(())
}

/// SIGTERM: `/readyz` turns 503, every role finishes its work (see `common::lifecycle`),
/// then the process exits; a second signal, or `drain_timeout_secs`, cuts it short.
async fn drain(readiness: &Readiness, config: &Config, signal: &str) {
    let delay = std::time::Duration::from_secs(config.drain_delay_secs);
    let timeout = std::time::Duration::from_secs(config.drain_timeout_secs);
    info!(
        signal,
        delay_secs = delay.as_secs(),
        timeout_secs = timeout.as_secs(),
        work = readiness.work_in_progress(),
        "draining"
    );
    readiness.drain();
    tokio::select! {
        done = readiness.drained(timeout) => {
            if done {
                info!("drained, exiting");
            } else {
                warn!(work = readiness.work_in_progress(), "drain timed out, exiting");
            }
        }
        s = tidecast_common::lifecycle::shutdown_signal() => {
            warn!(signal = s, work = readiness.work_in_progress(), "second signal: exiting now");
        }
    }
}

/// Where rooms are restreamed by default: `rooms.restream_url`, else this deployment's own
/// RTMP ingest on loopback.
fn restream_url(config: &Config) -> String {
    if !config.rooms.restream_url.is_empty() {
        return config.rooms.restream_url.clone();
    }
    let port = config
        .ingest
        .rtmp_listen
        .parse::<std::net::SocketAddr>()
        .map(|a| a.port())
        .unwrap_or(1935);
    format!("rtmp://127.0.0.1:{port}/{}", config.ingest.app)
}
