//! The RTMP server shell: accepts TCP connections, runs the rml_rtmp handshake and session per
//! connection (one tokio task each), checks stream keys, and feeds accepted publishers' media
//! through the [`MediaGate`] into a [`Ladder`].
//!
//! Bad input (garbage, truncated handshakes, absurd chunk sizes, malformed AMF, unsupported
//! codecs) closes only the offending connection, with the reason logged and counted.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rml_rtmp::sessions::{ServerSession, ServerSessionEvent, ServerSessionResult};
use tidecast_common::config::{Config, IngestConfig, LadderConfig};
use tidecast_common::keys::{KeyDecision, StreamKeys};
use tidecast_common::lifecycle::Readiness;
use tidecast_common::live::unix_millis;
use tidecast_common::metrics::{Metric, Registry};
use tidecast_common::LiveEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::ladder::{Ladder, LadderInput, LadderSettings};
use crate::ladder_plan;
use crate::media_gate::{GateOutput, MediaGate};
use crate::publishers::{Claim, ConnId, PublisherTable};
use crate::rtmp_input::{HandshakeInput, HandshakeStep, RtmpInput};
use crate::IngestError;

/// A ladder input backlog this large means transcoding cannot keep up with real time.
const MAX_LADDER_BACKLOG: u64 = 48 * 1024 * 1024;

/// Counters the ingest exports.
#[derive(Clone, Debug)]
pub struct IngestMetrics {
    registry: Registry,
    connections: Metric,
    publishers: Metric,
    bytes: Metric,
}

impl IngestMetrics {
    fn new(registry: &Registry) -> Self {
        IngestMetrics {
            registry: registry.clone(),
            connections: registry.counter(
                "tidecast_ingest_connections_total",
                "RTMP connections accepted.",
                &[],
            ),
            publishers: registry.gauge(
                "tidecast_ingest_publishers",
                "Publishers currently streaming.",
                &[],
            ),
            bytes: registry.counter(
                "tidecast_ingest_media_bytes_total",
                "Audio/video payload bytes received from publishers.",
                &[],
            ),
        }
    }

    fn closed(&self, reason: &str) {
        self.registry
            .counter(
                "tidecast_ingest_connections_closed_total",
                "RTMP connections closed, by reason.",
                &[("reason", reason)],
            )
            .inc();
    }
}

/// The RTMP ingest service.
pub struct IngestServer {
    config: IngestConfig,
    ladder: LadderConfig,
    keys: StreamKeys,
    publishers: Mutex<PublisherTable>,
    kill_switches: Mutex<HashMap<ConnId, Arc<Notify>>>,
    sink: mpsc::Sender<LiveEvent>,
    metrics: IngestMetrics,
    next_conn: AtomicU64,
    /// The process's lifecycle, once `run` started.
    readiness: std::sync::OnceLock<Readiness>,
}

/// Per-connection state that outlives errors, so cleanup always runs.
#[derive(Default)]
struct ConnState {
    stream: Option<String>,
    gate: MediaGate,
    ladder: Option<Ladder>,
    session: u64,
    /// Wall clock of the first media message (running time 0 of the ladder).
    first_media_at: Option<SystemTime>,
}

impl IngestServer {
    /// Create the service; ladders send their output to `sink`.
    pub fn new(config: &Config, sink: mpsc::Sender<LiveEvent>, registry: &Registry) -> Arc<Self> {
        Arc::new(IngestServer {
            config: config.ingest.clone(),
            ladder: config.ladder.clone(),
            keys: StreamKeys::new(&config.ingest.keys),
            publishers: Mutex::new(PublisherTable::default()),
            kill_switches: Mutex::new(HashMap::new()),
            sink,
            metrics: IngestMetrics::new(registry),
            next_conn: AtomicU64::new(1),
            readiness: std::sync::OnceLock::new(),
        })
    }

    /// Accept connections until `readiness` drains; then stop accepting and end every
    /// publisher's stream (its ladder drains, the playlists get `#EXT-X-ENDLIST`). Each
    /// connection and each ladder until its `SessionEnded` is sent is work the drain waits for.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        readiness: &Readiness,
    ) -> std::io::Result<()> {
        crate::ladder::init_gstreamer().map_err(std::io::Error::other)?;
        let _ = self.readiness.set(readiness.clone());
        info!(addr = ?listener.local_addr().ok(), open = self.keys.is_open(), "rtmp ingest listening");
        let mut drain = readiness.drain_signal();
        loop {
            let accepted = tokio::select! {
                _ = drain.started() => {
                    drop(listener);
                    let kills: Vec<_> = self.lock_kills().values().cloned().collect();
                    info!(publishers = kills.len(), "draining: rtmp closed, ending every stream");
                    for k in kills {
                        k.notify_one();
                    }
                    return Ok(());
                }
                accepted = listener.accept() => accepted,
            };
            let (socket, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    warn!("rtmp accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
            self.metrics.connections.inc();
            let server = self.clone();
            let work = readiness.track();
            let handle = tokio::spawn(
                async move {
                    server.connection(conn, socket, peer).await;
                    drop(work);
                }
                .instrument(info_span!("rtmp", conn)),
            );
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = handle.await {
                    warn!(conn, "rtmp connection task failed: {e}");
                    metrics.closed("panic");
                }
            });
        }
    }

    async fn connection(self: Arc<Self>, conn: ConnId, socket: TcpStream, peer: SocketAddr) {
        debug!(%peer, "rtmp connection");
        let kill = Arc::new(Notify::new());
        self.lock_kills().insert(conn, kill.clone());
        let mut state = ConnState::default();
        let result = self.serve(conn, socket, &mut state, kill).await;
        self.lock_kills().remove(&conn);
        match &result {
            Ok(()) => {
                debug!("rtmp connection closed by peer");
                self.metrics.closed("eof");
            }
            Err(e) => {
                warn!(
                    stream = state.stream.as_deref().unwrap_or(""),
                    "closing rtmp connection: {e}"
                );
                self.metrics.closed(e.as_str());
            }
        }
        self.stop_publishing(conn, &mut state);
    }

    fn lock_kills(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, Arc<Notify>>> {
        self.kill_switches.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_publishers(&self) -> std::sync::MutexGuard<'_, PublisherTable> {
        self.publishers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stop_publishing(&self, conn: ConnId, state: &mut ConnState) {
        if let Some(ladder) = state.ladder.take() {
            ladder.finish();
        }
        if let Some(stream) = state.stream.take() {
            if self.lock_publishers().release(&stream, conn) {
                self.metrics.publishers.dec();
                self.metrics.registry.remove_labelled_in(
                    crate::ladder_output::OUTPUT_MS,
                    "stream",
                    &stream,
                );
            }
            info!(stream = %stream, session = state.session, "publisher stopped");
        }
        state.gate = MediaGate::default();
        state.first_media_at = None;
    }

    async fn serve(
        &self,
        conn: ConnId,
        mut socket: TcpStream,
        state: &mut ConnState,
        kill: Arc<Notify>,
    ) -> Result<(), IngestError> {
        let mut buf = vec![0u8; 64 * 1024];
        let handshake_deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.config.handshake_timeout_secs);
        let mut handshake = HandshakeInput::default();
        let mut received = 0usize;
        let leftover = loop {
            let n = tokio::time::timeout_at(handshake_deadline, socket.read(&mut buf))
                .await
                .map_err(|_| IngestError::Timeout("handshake not completed"))??;
            if n == 0 {
                if received == 0 {
                    return Ok(()); // a port probe or health check, not an error
                }
                return Err(IngestError::Handshake(
                    "connection closed mid-handshake".into(),
                ));
            }
            received += n;
            match handshake.handle(&buf[..n])? {
                HandshakeStep::Continue(response) => socket.write_all(&response).await?,
                HandshakeStep::Done {
                    response,
                    remaining,
                } => {
                    socket.write_all(&response).await?;
                    break remaining;
                }
            }
        };

        let (mut input, initial) = RtmpInput::new()?;
        let mut out = Vec::new();
        let mut processed = self.process(conn, input.session(), initial, state, &mut out);
        if processed.is_ok() && !leftover.is_empty() {
            processed = feed(&mut input, &leftover)
                .and_then(|results| self.process(conn, input.session(), results, state, &mut out));
        }
        socket.write_all(&out).await?;
        processed?;

        let idle = Duration::from_secs(self.config.idle_timeout_secs);
        loop {
            if state.stream.is_none() && tokio::time::Instant::now() > handshake_deadline {
                return Err(IngestError::Timeout("no publish request"));
            }
            let n = tokio::select! {
                r = tokio::time::timeout(idle, socket.read(&mut buf)) => {
                    r.map_err(|_| IngestError::Timeout("publisher idle"))??
                }
                _ = kill.notified() => {
                    let why = if self.readiness.get().is_some_and(Readiness::is_draining) {
                        "server draining: publish to another node"
                    } else {
                        "stream taken over by a reconnecting publisher"
                    };
                    return Err(IngestError::Refused(why.into()));
                }
            };
            if n == 0 {
                return Ok(());
            }
            let results = feed(&mut input, &buf[..n])?;
            out.clear();
            let processed = self.process(conn, input.session(), results, state, &mut out);
            if !out.is_empty() {
                socket.write_all(&out).await?;
            }
            processed?;
        }
    }

    /// Handle session results; bytes to send are appended to `out`.
    fn process(
        &self,
        conn: ConnId,
        session: &mut ServerSession,
        results: Vec<ServerSessionResult>,
        state: &mut ConnState,
        out: &mut Vec<u8>,
    ) -> Result<(), IngestError> {
        let mut queue: VecDeque<ServerSessionResult> = results.into();
        while let Some(result) = queue.pop_front() {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    out.extend_from_slice(&packet.bytes)
                }
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
                ServerSessionResult::RaisedEvent(event) => {
                    let more = self.on_event(conn, session, event, state, out)?;
                    queue.extend(more);
                }
            }
        }
        Ok(())
    }

    fn on_event(
        &self,
        conn: ConnId,
        session: &mut ServerSession,
        event: ServerSessionEvent,
        state: &mut ConnState,
        out: &mut Vec<u8>,
    ) -> Result<Vec<ServerSessionResult>, IngestError> {
        let proto =
            |e: rml_rtmp::sessions::ServerSessionError| IngestError::Protocol(e.to_string());
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                if app_name.trim_end_matches('/') != self.config.app {
                    let r = session
                        .reject_request(
                            request_id,
                            "NetConnection.Connect.Rejected",
                            "unknown application",
                        )
                        .map_err(proto)?;
                    flush(r, out);
                    return Err(IngestError::Refused(format!(
                        "unknown application '{app_name}'"
                    )));
                }
                session.accept_request(request_id).map_err(proto)
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => {
                if state.stream.is_some() {
                    return Err(IngestError::Protocol(
                        "second publish on one connection".into(),
                    ));
                }
                let name = match self.keys.check(&stream_key) {
                    KeyDecision::Allowed(name) => name,
                    KeyDecision::Refused => {
                        let r = session
                            .reject_request(
                                request_id,
                                "NetStream.Publish.BadName",
                                "invalid stream key",
                            )
                            .map_err(proto)?;
                        flush(r, out);
                        return Err(IngestError::Refused("invalid stream key".into()));
                    }
                };
                let idle = Duration::from_secs(self.config.takeover_after_secs);
                let claim = self
                    .lock_publishers()
                    .claim(&name, conn, Instant::now(), idle);
                match claim {
                    Claim::Busy => {
                        let r = session
                            .reject_request(
                                request_id,
                                "NetStream.Publish.BadName",
                                "stream is already being published",
                            )
                            .map_err(proto)?;
                        flush(r, out);
                        return Err(IngestError::Refused(format!(
                            "stream '{name}' is already being published"
                        )));
                    }
                    Claim::TookOver { previous } => {
                        info!(stream = %name, previous, "publisher takes over an idle stream");
                        if let Some(k) = self.lock_kills().get(&previous) {
                            k.notify_one();
                        }
                    }
                    Claim::Granted => self.metrics.publishers.inc(),
                }
                let now = SystemTime::now();
                state.session = unix_millis(now);
                info!(stream = %name, session = state.session, "publisher accepted");
                state.stream = Some(name);
                if self.ladder.passthrough {
                    state.gate.measure_gop(
                        u32::try_from(self.ladder.segment_ms * 3 / 2).unwrap_or(u32::MAX),
                    );
                }
                session.accept_request(request_id).map_err(proto)
            }
            ServerSessionEvent::PublishStreamFinished { .. } => {
                self.stop_publishing(conn, state);
                Ok(Vec::new())
            }
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                if metadata.audio_codec_id.is_none() && metadata.audio_sample_rate.is_none() {
                    state.gate.set_audio_expected(false);
                }
                Ok(Vec::new())
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => {
                self.on_media(conn, state, true, timestamp.value, data)?;
                Ok(Vec::new())
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => {
                self.on_media(conn, state, false, timestamp.value, data)?;
                Ok(Vec::new())
            }
            ServerSessionEvent::PlayStreamRequested { request_id, .. } => {
                let r = session
                    .reject_request(
                        request_id,
                        "NetStream.Play.Failed",
                        "playback is over HLS/DASH",
                    )
                    .map_err(proto)?;
                flush(r, out);
                Err(IngestError::Refused("RTMP playback is not offered".into()))
            }
            _ => Ok(Vec::new()),
        }
    }

    fn on_media(
        &self,
        conn: ConnId,
        state: &mut ConnState,
        video: bool,
        ts: u32,
        data: Bytes,
    ) -> Result<(), IngestError> {
        let Some(stream) = state.stream.clone() else {
            return Ok(()); // media before publish: ignore
        };
        self.metrics.bytes.add(data.len() as i64);
        state.first_media_at.get_or_insert_with(SystemTime::now);
        self.lock_publishers().touch(&stream, conn, Instant::now());
        let output = if video {
            state.gate.on_video(ts, &data)?
        } else {
            state.gate.on_audio(ts, &data)?
        };
        match output {
            GateOutput::Pending => Ok(()),
            GateOutput::Start {
                avc,
                gop_ms,
                has_audio,
                flv,
            } => {
                let mut rungs = ladder_plan::plan(avc.width, avc.height, &self.ladder.rungs);
                let passthrough = ladder_plan::use_passthrough(
                    self.ladder.passthrough,
                    gop_ms,
                    self.ladder.segment_ms,
                );
                if passthrough {
                    rungs = ladder_plan::below_source(rungs, avc.height);
                }
                info!(stream = %stream, width = avc.width, height = avc.height, codec = %avc.codec_string(),
                      gop_ms = ?gop_ms, passthrough,
                      rungs = ?rungs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), "source detected");
                let input = LadderInput {
                    stream: stream.clone(),
                    session: state.session,
                    rungs,
                    passthrough: passthrough.then_some(avc),
                    has_audio,
                    started_at: state.first_media_at.unwrap_or_else(SystemTime::now),
                    metrics: Some(self.metrics.registry.clone()),
                };
                let settings = LadderSettings {
                    segment: Duration::from_millis(self.ladder.segment_ms.max(100)),
                    part: self.ladder.part(),
                    x264_preset: self.ladder.x264_preset.clone(),
                    x264_threads: self.ladder.x264_threads,
                };
                let work = self.readiness.get().map(Readiness::track);
                let ladder = Ladder::start(input, &settings, self.sink.clone(), work)?;
                for chunk in flv {
                    ladder.push(chunk)?;
                }
                state.ladder = Some(ladder);
                Ok(())
            }
            GateOutput::Forward(tag) => {
                let Some(ladder) = &state.ladder else {
                    return Ok(());
                };
                if ladder.queued_bytes() > MAX_LADDER_BACKLOG {
                    return Err(IngestError::Ladder(
                        "transcoding cannot keep up with the input".into(),
                    ));
                }
                ladder.push(tag)
            }
        }
    }
}

/// Hand bytes to the guarded rml_rtmp session. The guard refuses every input known to make
/// rml_rtmp panic (and the fuzz targets look for more); should one still slip through, it is
/// this connection's bad input and becomes a protocol error instead of a dead task.
fn feed(input: &mut RtmpInput, bytes: &[u8]) -> Result<Vec<ServerSessionResult>, IngestError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| input.handle(bytes))).map_err(
        |_| IngestError::Protocol("malformed message (rejected by the RTMP decoder)".into()),
    )?
}

fn flush(results: Vec<ServerSessionResult>, out: &mut Vec<u8>) {
    for r in results {
        if let ServerSessionResult::OutboundResponse(p) = r {
            out.extend_from_slice(&p.bytes);
        }
    }
}
