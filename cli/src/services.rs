//! The roles a `tidecast` process runs — everything (`all`) or one of them — started in order:
//! TURN first (its sockets are up before any `/healthz` says so), the origin's HTTP (or the
//! health/metrics port of a role without routes), ingest, edge, the event bus, the archiver and
//! rooms. Each role is a task in [`Process::tasks`]; they share one metrics registry and one
//! lifecycle ([`Readiness`]) that a signal drains.

use std::sync::Arc;

use anyhow::{Context, Result};
use tidecast_common::bus::SharedBus;
use tidecast_common::config::EdgeConfig;
use tidecast_common::http_server::bind;
use tidecast_common::metrics::Registry;
use tidecast_common::service::{NoRoutes, Readiness, Service};
use tidecast_common::Config;
use tidecast_origin::OriginHandle;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::args::Command;

/// A running process: its roles' tasks, metrics and lifecycle.
pub struct Process {
    /// One task per role's server; the first to end ends the process.
    pub tasks: JoinSet<Result<()>>,
    /// Draining on a signal.
    pub readiness: Readiness,
}

/// Start the roles `command` runs with `config`.
pub async fn start(command: &Command, config: &Config) -> Result<Process> {
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
        .then(|| tidecast_origin::Origin::new(config, &registry, store));
    let mut tasks = tokio::task::JoinSet::new();

    let readiness = Readiness::default();
    readiness.set_drain_delay(std::time::Duration::from_secs(config.drain_delay_secs));
    let turn = if matches!(command, Command::All | Command::Turn) {
        Some(start_turn(config, &registry).await?)
    } else {
        None
    };
    if matches!(
        command,
        Command::All | Command::Origin | Command::Ingest | Command::Turn
    ) {
        serve_http(
            command,
            config,
            origin.clone(),
            &registry,
            &readiness,
            &mut tasks,
        )
        .await?;
    }
    if matches!(command, Command::All | Command::Ingest) {
        start_ingest(
            command,
            config,
            origin.as_ref(),
            &registry,
            &readiness,
            &mut tasks,
        )
        .await?;
    }
    if matches!(command, Command::All | Command::Edge) {
        start_edge(command, config, &registry, &readiness, &mut tasks).await?;
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
        start_archiver(config, bus, &registry, &readiness, &mut tasks)?;
    }
    if matches!(command, Command::All | Command::Rooms) {
        start_rooms(
            config,
            turn.as_ref(),
            bus,
            &registry,
            &readiness,
            &mut tasks,
        )
        .await?;
    }
    Ok(Process { tasks, readiness })
}

/// The TURN server of this process and the setup it was started from.
async fn start_turn(
    config: &Config,
    registry: &Registry,
) -> Result<(tidecast_turn::TurnSetup, tidecast_turn::server::TurnServer)> {
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
    let server = tidecast_turn::server::TurnServer::start(setup.listeners.clone(), core, registry)
        .await
        .with_context(|| {
            format!(
                "binding TURN on {} (udp) / {} (tcp) / {} (tls)",
                config.turn.listen_udp, config.turn.listen_tcp, config.turn.listen_tls
            )
        })?;
    Ok((setup, server))
}

/// The HTTP port of the origin, or of a role that serves only health, readiness and metrics.
async fn serve_http(
    command: &Command,
    config: &Config,
    origin: Option<OriginHandle>,
    registry: &Registry,
    readiness: &Readiness,
    tasks: &mut JoinSet<Result<()>>,
) -> Result<()> {
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
        let service = Service::new(Arc::new(NoRoutes(role)), registry, readiness);
        tasks.spawn(async move { service.serve(listener).await.context("metrics http") });
    } else if let Some(o) = origin.clone() {
        let r = readiness.clone();
        tasks.spawn(async move { o.serve(listener, &r).await.context("origin http") });
    }
    Ok(())
}

/// The RTMP ingest and its ladder, pushing to this process's origin or to remote ones.
async fn start_ingest(
    command: &Command,
    config: &Config,
    origin: Option<&OriginHandle>,
    registry: &Registry,
    readiness: &Readiness,
    tasks: &mut JoinSet<Result<()>>,
) -> Result<()> {
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
        o.event_sender(readiness)
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
            registry,
            readiness,
        )?
    };
    let ingest = tidecast_ingest::IngestServer::new(config, sink, registry);
    let r = readiness.clone();
    tasks.spawn(async move { ingest.run(listener, &r).await.context("rtmp ingest") });
    Ok(())
}

/// The caching edge (or shield).
async fn start_edge(
    command: &Command,
    config: &Config,
    registry: &Registry,
    readiness: &Readiness,
    tasks: &mut JoinSet<Result<()>>,
) -> Result<()> {
    let mut edge_config = config.edge.clone();
    if matches!(command, Command::All) && edge_config.upstreams == EdgeConfig::default().upstreams {
        // in one process the edge fronts this process's origin, wherever it listens
        let origin = config.origin.http_listen.replace("0.0.0.0", "127.0.0.1");
        edge_config.upstreams = vec![format!("http://{origin}")];
    }
    let listener = bind(&edge_config.http_listen, config.listen_backlog)
        .await
        .with_context(|| format!("binding edge HTTP on {}", edge_config.http_listen))?;
    let edge = tidecast_edge::Edge::new(&edge_config, registry)
        .map_err(|e| anyhow::anyhow!("edge configuration: {e}"))?;
    let r = readiness.clone();
    tasks.spawn(async move { edge.serve(listener, &r).await.context("edge http") });
    Ok(())
}

/// The archiver: assembles recorded calls as their `call.ended` events arrive on `bus`.
fn start_archiver(
    config: &Config,
    bus: &SharedBus,
    registry: &Registry,
    readiness: &Readiness,
    tasks: &mut JoinSet<Result<()>>,
) -> Result<()> {
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
    let archiver = tidecast_archive::Archiver::new(store, bus.clone(), settings, registry);
    let r = readiness.clone();
    tasks.spawn(async move {
        archiver.run(&r).await;
        Ok(())
    });
    Ok(())
}

/// Rooms: signaling, the SFU, recording and restreaming; `turn` is this process's TURN server.
async fn start_rooms(
    config: &Config,
    turn: Option<&(tidecast_turn::TurnSetup, tidecast_turn::server::TurnServer)>,
    bus: Option<SharedBus>,
    registry: &Registry,
    readiness: &Readiness,
    tasks: &mut JoinSet<Result<()>>,
) -> Result<()> {
    let listener = bind(&config.rooms.http_listen, config.listen_backlog)
        .await
        .with_context(|| format!("binding rooms HTTP on {}", config.rooms.http_listen))?;
    // TURN credentials for joining clients: from the TURN server in this process, or for a
    // separate `tidecast turn` from the shared turn.secret and its public host
    let handout = |setup: &tidecast_turn::TurnSetup, udp, tcp, tls| tidecast_rooms::TurnHandout {
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
        registry,
        "recording",
    );
    writer.hold_drain(readiness);
    let recorder = tidecast_rooms::recording::Recorder::spawn(
        writer,
        config.data_dir.join("recording-tmp"),
        registry,
    );
    let restreamer = tidecast_rooms::restream::Restreamer::new(
        tidecast_rooms::restream::composite::CompositeSettings {
            width: config.rooms.restream_width.clamp(160, 3840) & !1,
            height: config.rooms.restream_height.clamp(90, 2160) & !1,
            fps: config.rooms.restream_fps.clamp(1, 60),
            video_kbps: config.rooms.restream_kbps.max(100),
            x264_preset: config.ladder.x264_preset.clone(),
        },
        &restream_url(config),
        registry,
    );
    let rooms = tidecast_rooms::Rooms::new(
        &config.rooms,
        registry,
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
    Ok(())
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
