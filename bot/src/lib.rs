//! `tidecast bot`: synthetic room participants on webrtc-rs — the load generator operators run
//! against a deployment (like LiveKit's `lk load-test`) and the independent WebRTC peer the
//! tests drive the SFU with. Each bot joins over the signaling WebSocket; two bots call each
//! other peer-to-peer (one VP8 track at the layer the other asks for), from three on they
//! publish simulcast VP8 (180p/360p/720p) and Opus to the SFU — from loops encoded once at
//! start — and subscribe to everyone with
//! the layer a schedule gives, and reports per received track: bitrate, frame height and its
//! switches, sequence continuity, loss, freezes and RTT.
//!
//! * [`media`]: the encoded loops (GStreamer, once).
//! * [`participant`]: one bot — its signaling session and what it reports.
//! * `peer`: its webrtc-rs peer connections — publishing, receiving, the SFU and P2P calls.
//! * `steps`: the subscription schedule and the packets received per step.
//! * [`janus`]: the same participant against Janus VideoRoom (the bench's anchor).
//! * [`report`]: what is measured on a received track (a pure core).
#![deny(missing_docs)]

pub mod http;
pub mod janus;
pub mod media;
pub mod participant;
mod peer;
pub mod report;
mod steps;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::warn;

pub use participant::ParticipantReport;

/// Errors of a bot run.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// Network I/O.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The signaling exchange failed.
    #[error("signaling: {0}")]
    Signaling(String),
    /// webrtc-rs refused something.
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::Error),
    /// Encoding the media loops failed.
    #[error("media: {0}")]
    Media(String),
    /// A bad option.
    #[error("{0}")]
    Options(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BotOptions {
    /// The rooms node, `host:port` (its HTTP/WebSocket address).
    pub server: String,
    /// Room to join.
    pub room: String,
    /// Synthetic participants.
    pub participants: usize,
    /// Identities are this prefix and a number.
    pub prefix: String,
    /// How long to stay.
    pub duration: Duration,
    /// Delay between joins.
    pub join_interval: Duration,
    /// `rooms.api_secret` for minting tokens (empty: the development default).
    pub secret: String,
    /// How many of the participants publish (the first ones); the rest only subscribe, as the
    /// viewers of a webinar. `usize::MAX`: all of them.
    pub publishers: usize,
    /// Subscription layer over time: (offset from start, `high`/`low`/`off`), sorted.
    pub schedule: Vec<(Duration, String)>,
    /// `high` in the schedule is for one participant only (the first of the others by
    /// identity, as a pinned tile); the others get `low`.
    pub pin: bool,
    /// Run against Janus's VideoRoom at this `host:port` (its REST API) instead of tidecast:
    /// the benchmark anchor.
    pub janus: Option<String>,
    /// Each participant shows a solid colour of its own ([`media::COLOURS`] in turn) instead of
    /// the test pattern.
    pub colours: bool,
}

/// Parse `0=low,8=high,14=off` (seconds=layer).
pub fn parse_schedule(text: &str) -> Result<Vec<(Duration, String)>, BotError> {
    let mut v = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (at, layer) = part.split_once('=').ok_or_else(|| {
            BotError::Options(format!("schedule step {part:?}: want SECONDS=LAYER"))
        })?;
        let at: f64 = at
            .trim()
            .parse()
            .map_err(|_| BotError::Options(format!("schedule step {part:?}: bad seconds")))?;
        let layer = layer.trim();
        if !["high", "low", "off"].contains(&layer) {
            return Err(BotError::Options(format!(
                "schedule step {part:?}: layer is high, low or off"
            )));
        }
        if !(0.0..=86_400.0).contains(&at) {
            return Err(BotError::Options(format!(
                "schedule step {part:?}: bad seconds"
            )));
        }
        v.push((Duration::from_secs_f64(at), layer.to_string()));
    }
    v.sort_by_key(|(at, _)| *at);
    if v.first().is_none_or(|(at, _)| !at.is_zero()) {
        v.insert(0, (Duration::ZERO, "low".into()));
    }
    Ok(v)
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct BotReport {
    /// Room.
    pub room: String,
    /// When the bots started (Unix ms): the origin of every `at_ms` and `*_ms` in the report.
    pub started_unix_ms: u64,
    /// One entry per synthetic participant.
    pub participants: Vec<ParticipantReport>,
    /// Participants that failed, with why.
    pub failures: Vec<String>,
}

/// Run the bots and collect their reports.
pub async fn run(options: BotOptions) -> Result<BotReport, BotError> {
    // one set of loops for everyone, or one per participant with its own colour
    let pictures: Vec<media::Picture> = if options.colours {
        (0..options.participants)
            .map(|i| media::Picture::Solid(media::COLOURS[i % media::COLOURS.len()]))
            .collect()
    } else {
        vec![media::Picture::TestPattern]
    };
    let media =
        tokio::task::spawn_blocking(move || -> Result<Vec<Arc<participant::Media>>, BotError> {
            let audio = media::audio_loop(2)?;
            pictures
                .into_iter()
                .map(|p| {
                    Ok(Arc::new(participant::Media {
                        video: media::video_loops(2, p)?,
                        audio: audio.clone(),
                    }))
                })
                .collect()
        })
        .await
        .map_err(|e| BotError::Media(e.to_string()))??;
    let options = Arc::new(options);
    let started = Instant::now();
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut tasks = Vec::new();
    for i in 0..options.participants {
        let join_at = started + options.join_interval * i as u32;
        let deadline = started + options.duration;
        let (o, m) = (options.clone(), media[i % media.len()].clone());
        let identity = format!("{}{}", options.prefix, i + 1);
        let publish = i < options.publishers;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(join_at.into()).await;
            let result = if o.janus.is_some() {
                janus::run(o, identity.clone(), publish, m, started, deadline).await
            } else {
                participant::run(o, identity.clone(), publish, m, started, deadline).await
            };
            result.map_err(|e| format!("{identity}: {e}"))
        }));
    }
    let mut report = BotReport {
        room: options.room.clone(),
        started_unix_ms,
        participants: Vec::new(),
        failures: Vec::new(),
    };
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => report.participants.push(r),
            Ok(Err(e)) => {
                warn!("bot failed: {e}");
                report.failures.push(e);
            }
            Err(e) => report.failures.push(e.to_string()),
        }
    }
    Ok(report)
}

/// The report as a table, one line per received track.
pub fn render(report: &BotReport) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "room {}: {} participants\n{:<12} {:<12} {:<6} {:>7} {:>6} {:>7} {:>6} {:>6} {:>8} {:>7} {:>8}\n",
        report.room,
        report.participants.len(),
        "bot",
        "from",
        "kind",
        "kbit/s",
        "height",
        "frames",
        "lost",
        "late",
        "switches",
        "freezes",
        "rtt ms"
    );
    for p in &report.participants {
        for t in &p.tracks {
            let _ = writeln!(
                out,
                "{:<12} {:<12} {:<6} {:>7} {:>6} {:>7} {:>6} {:>6} {:>8} {:>7} {:>8}",
                p.identity,
                t.publisher,
                t.kind,
                t.kbps,
                t.height,
                t.frames,
                t.lost,
                t.late,
                t.heights.len().saturating_sub(1),
                t.freezes,
                t.rtt_ms
                    .map(|r| format!("{r:.1}"))
                    .unwrap_or_else(|| "-".into()),
            );
        }
        for e in &p.errors {
            let _ = writeln!(out, "{:<12} error: {e}", p.identity);
        }
    }
    for f in &report.failures {
        let _ = writeln!(out, "failed: {f}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_one_is_the_first_by_number_not_by_text() {
        let ids: Vec<String> = ["bot-10", "bot-3", "bot-2", "bot-11"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let first = participant::first_in_number_order(ids.iter());
        assert_eq!(first.map(String::as_str), Some("bot-2"));
        assert_eq!(participant::first_in_number_order([].iter()), None);
    }

    #[test]
    fn schedules_parse_and_start_at_zero() {
        let s = parse_schedule("8=high, 14=off").expect("parses");
        assert_eq!(
            s,
            vec![
                (Duration::ZERO, "low".to_string()),
                (Duration::from_secs(8), "high".to_string()),
                (Duration::from_secs(14), "off".to_string()),
            ]
        );
        assert!(parse_schedule("3=loud").is_err());
        assert!(parse_schedule("x=low").is_err());
        assert!(parse_schedule("-1=low").is_err());
        assert!(parse_schedule("5").is_err());
    }
}
