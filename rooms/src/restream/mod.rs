//! Restreaming a room to the CDN: the participants composited into one picture (the active
//! speaker large, the others in a strip — [`layout`]) with their audio mixed, encoded as H.264
//! and AAC and pushed over RTMP ([`composite`]) — by default into this deployment's own ingest
//! as stream `room-{room}`, so it goes through the ladder to the origin and the edges like any
//! stream from OBS. The SFU hands the room's packets to a [`RestreamTap`]; one thread per
//! restream feeds them to the pipeline and keeps the layout current.

pub mod composite;
pub mod layout;

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidecast_common::metrics::{Metric, Registry};
use tracing::{info, info_span, warn};

use crate::tap::{PacketSink, Tap, TappedPacket};
use composite::{Composite, CompositeSettings};

/// Why a restream could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RestreamError {
    /// GStreamer could not build or run the pipeline.
    #[error("restream pipeline: {0}")]
    Pipeline(String),
    /// The request cannot be served.
    #[error("{0}")]
    Refused(String),
}

/// A participant whose video and audio stopped this long ago has left the picture.
const GONE_AFTER: Duration = Duration::from_secs(3);
/// How often the layout is checked without packets.
const TICK: Duration = Duration::from_millis(250);

enum Msg {
    Packet(TappedPacket),
    Speaker(String),
    Stop,
}

/// Where the SFU sends a restreamed room's packets.
struct RestreamTap {
    room: String,
    tx: std_mpsc::Sender<Msg>,
}

impl PacketSink for RestreamTap {
    fn label(&self) -> String {
        format!("restream of room {}", self.room)
    }

    fn send(&self, packet: TappedPacket) {
        let _ = self.tx.send(Msg::Packet(packet));
    }

    fn active_speaker(&self, participant: &str) {
        let _ = self.tx.send(Msg::Speaker(participant.to_string()));
    }
}

/// The restreams of a rooms node. Cheap to clone.
#[derive(Clone)]
pub struct Restreamer {
    settings: CompositeSettings,
    /// `rtmp://host:port/app`: the stream key `room-{room}` is appended.
    default_url: String,
    active: Metric,
    registry: Registry,
}

/// A running restream.
pub struct Restream {
    /// The stream it pushes (`room-{room}` by default).
    pub url: String,
    tap: Tap,
    tx: std_mpsc::Sender<Msg>,
    /// Set when the pipeline failed.
    failure: Arc<Mutex<Option<String>>>,
    done: Option<std::thread::JoinHandle<()>>,
}

impl Restreamer {
    /// Restreams encoded with `settings`, pushed to `default_url` (`rtmp://host:port/app`)
    /// unless a request names another.
    pub fn new(settings: CompositeSettings, default_url: &str, registry: &Registry) -> Restreamer {
        Restreamer {
            settings,
            default_url: default_url.trim_end_matches('/').to_string(),
            active: registry.gauge(
                "tidecast_restreams_active",
                "Rooms being restreamed from this node.",
                &[],
            ),
            registry: registry.clone(),
        }
    }

    /// The default target of `room`: `{default_url}/room-{room}`.
    pub fn default_target(&self, room: &str) -> String {
        format!("{}/room-{room}", self.default_url)
    }

    /// Start restreaming `room` to `url`; the SFU must then send the room's packets to
    /// [`Restream::tap`].
    pub fn start(&self, room: &str, url: &str) -> Result<Restream, RestreamError> {
        if !url.starts_with("rtmp://") && !url.starts_with("rtmps://") {
            return Err(RestreamError::Refused(
                "restream URLs are rtmp:// or rtmps://".into(),
            ));
        }
        let composite = Composite::start(url, &self.settings)?;
        let (tx, rx) = std_mpsc::channel();
        let failure = Arc::new(Mutex::new(None));
        let mut worker = Worker {
            room: room.to_string(),
            composite: Some(composite),
            rx,
            seen: HashMap::new(),
            order: Vec::new(),
            speaker: None,
            width: self.settings.width,
            height: self.settings.height,
            failure: failure.clone(),
            failures: self.registry.counter(
                "tidecast_restream_failures_total",
                "Restreams that stopped because their pipeline failed (RTMP target refused or gone).",
                &[],
            ),
            active: self.active.clone(),
        };
        self.active.add(1);
        let done = std::thread::Builder::new()
            .name(format!("restream-{room}"))
            .spawn(move || {
                let span = info_span!("restream", room = %worker.room);
                let _enter = span.enter();
                worker.run();
            })
            .map_err(|e| RestreamError::Pipeline(e.to_string()))?;
        info!(%room, %url, "restream started");
        Ok(Restream {
            url: url.to_string(),
            tap: Tap::new(RestreamTap {
                room: room.to_string(),
                tx: tx.clone(),
            }),
            tx,
            failure,
            done: Some(done),
        })
    }
}

impl Restream {
    /// Where the SFU sends the room's packets.
    pub fn tap(&self) -> Tap {
        self.tap.clone()
    }

    /// Why it failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// End the stream (flushes, then closes the RTMP connection: the stream ends with
    /// ENDLIST). Blocks up to a few seconds.
    pub fn stop(mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(done) = self.done.take() {
            let _ = done.join();
        }
    }
}

struct Worker {
    room: String,
    composite: Option<Composite>,
    rx: std_mpsc::Receiver<Msg>,
    /// participant → last packet
    seen: HashMap<String, Instant>,
    /// participants in the order they appeared
    order: Vec<String>,
    speaker: Option<String>,
    width: u32,
    height: u32,
    failure: Arc<Mutex<Option<String>>>,
    failures: Metric,
    active: Metric,
}

impl Worker {
    fn run(&mut self) {
        let mut last_check = Instant::now();
        loop {
            let msg = self.rx.recv_timeout(TICK);
            let now = Instant::now();
            let Some(composite) = self.composite.as_mut() else {
                break;
            };
            let mut relayout = false;
            match msg {
                Ok(Msg::Packet(p)) => {
                    if self.seen.insert(p.publisher.clone(), now).is_none() {
                        self.order.push(p.publisher.clone());
                        relayout = true;
                    }
                    // a new branch starts hidden: place it
                    relayout |= composite.push(&p);
                }
                Ok(Msg::Speaker(s)) => {
                    relayout = self.speaker.as_deref() != Some(s.as_str());
                    self.speaker = Some(s);
                }
                Ok(Msg::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            }
            if now.saturating_duration_since(last_check) >= TICK {
                last_check = now;
                let gone: Vec<String> = self
                    .seen
                    .iter()
                    .filter(|(_, t)| now.saturating_duration_since(**t) >= GONE_AFTER)
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in gone {
                    info!(participant = %p, "left the restream");
                    self.seen.remove(&p);
                    self.order.retain(|o| o != &p);
                    composite.remove(&p);
                    relayout = true;
                }
                if let Some(why) = composite.failure() {
                    warn!("restream failed: {why}");
                    self.failures.inc();
                    *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    break;
                }
            }
            if relayout {
                let tiles = layout::speaker_view(
                    &self.order,
                    self.speaker.as_deref(),
                    self.width,
                    self.height,
                );
                composite.set_layout(&tiles);
            }
        }
        if let Some(composite) = self.composite.take() {
            composite.finish();
        }
        self.active.add(-1);
        info!("restream ended");
    }
}
