//! `tidecast bot --janus HOST:PORT`: the same synthetic participants against the Janus
//! VideoRoom plugin (its REST API) — the anchor `bench/sfu.sh` measures tidecast's SFU against.
//! Each bot publishes the same simulcast VP8 and Opus on one peer connection and, once it knows
//! the others in its run (or after `SUBSCRIBE_AFTER`), subscribes to all of them on a second one
//! (Janus's multistream subscriber), choosing the substream its schedule asks for: `high` for
//! the pinned one (with `--pin`), else the low one. Feeds that publish later are not picked up:
//! this mode is for benchmark runs where all bots join together.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;

use crate::participant::{lock, Media, ParticipantReport, Stats};
use crate::peer::{gathered, peer_connection, watch_tracks, TrackNames};
use crate::steps::Steps;
use crate::{BotError, BotOptions};

/// Subscribe with the feeds known by then even if not all the others have published.
const SUBSCRIBE_AFTER: Duration = Duration::from_secs(8);
/// How long one step of the exchange may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The Janus room number for a room name (a number is used as it is).
pub fn room_number(name: &str) -> u64 {
    name.parse().unwrap_or_else(|_| {
        // FNV-1a, kept below 2^53 so JSON carries it exactly
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        h & ((1 << 53) - 1)
    })
}

/// A Janus session over the REST API, with its long poll feeding `events`.
struct Session {
    server: String,
    id: u64,
    transactions: u64,
}

impl Session {
    async fn create(server: &str) -> Result<(Session, mpsc::UnboundedReceiver<Value>), BotError> {
        let (_, v) = crate::http::json(
            server,
            "POST",
            "/janus",
            "",
            Some(&json!({ "janus": "create", "transaction": "create" })),
        )
        .await?;
        let id = v["data"]["id"]
            .as_u64()
            .ok_or_else(|| BotError::Signaling(format!("janus create: {v}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let server_owned = server.to_string();
        tokio::spawn(async move {
            let path = format!("/janus/{id}?maxev=10");
            loop {
                match crate::http::json(&server_owned, "GET", &path, "", None).await {
                    Ok((_, Value::Array(events))) => {
                        for e in events {
                            if tx.send(e).is_err() {
                                return;
                            }
                        }
                    }
                    Ok((_, e)) if e["janus"] == "keepalive" => {}
                    Ok((_, e)) => {
                        if tx.send(e).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        debug!("janus long poll ended: {e}");
                        return;
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok((
            Session {
                server: server.to_string(),
                id,
                transactions: 0,
            },
            rx,
        ))
    }

    async fn post(&mut self, path: &str, mut body: Value) -> Result<Value, BotError> {
        self.transactions += 1;
        body["transaction"] = json!(format!("t{}", self.transactions));
        let (_, v) = crate::http::json(&self.server, "POST", path, "", Some(&body)).await?;
        if v["janus"] == "error" {
            return Err(BotError::Signaling(format!("janus: {}", v["error"])));
        }
        Ok(v)
    }

    async fn attach(&mut self) -> Result<u64, BotError> {
        let path = format!("/janus/{}", self.id);
        let v = self
            .post(
                &path,
                json!({ "janus": "attach", "plugin": "janus.plugin.videoroom" }),
            )
            .await?;
        v["data"]["id"]
            .as_u64()
            .ok_or_else(|| BotError::Signaling(format!("janus attach: {v}")))
    }

    /// A request to the plugin on `handle`: the synchronous answer (`success` with the plugin's
    /// data, or `ack` when the result comes as an event).
    async fn message(
        &mut self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<Value, BotError> {
        let path = format!("/janus/{}/{handle}", self.id);
        let mut m = json!({ "janus": "message", "body": body });
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        self.post(&path, m).await
    }

    async fn destroy(&mut self) {
        let path = format!("/janus/{}", self.id);
        let _ = self.post(&path, json!({ "janus": "destroy" })).await;
    }
}

/// Events of the session, and the other publishers they announced.
struct Events {
    rx: mpsc::UnboundedReceiver<Value>,
    /// feed id → display name (the bot identity)
    feeds: BTreeMap<u64, String>,
    me: u64,
}

impl Events {
    fn note(&mut self, e: &Value) {
        let data = &e["plugindata"]["data"];
        if let Some(id) = data["id"]
            .as_u64()
            .filter(|_| data["videoroom"] == "joined")
        {
            self.me = id;
        }
        for p in data["publishers"].as_array().into_iter().flatten() {
            if let (Some(id), Some(name)) = (p["id"].as_u64(), p["display"].as_str()) {
                if id != self.me {
                    self.feeds.insert(id, name.to_string());
                }
            }
        }
    }

    /// The next event from `handle` that `wanted` accepts.
    async fn wait(
        &mut self,
        handle: u64,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Value, BotError> {
        let until = Instant::now() + STEP_TIMEOUT;
        loop {
            let e = tokio::time::timeout_at(until.into(), self.rx.recv())
                .await
                .map_err(|_| BotError::Signaling("janus: no answer in time".into()))?
                .ok_or_else(|| BotError::Signaling("janus: session gone".into()))?;
            self.note(&e);
            if let Some(err) = e["plugindata"]["data"]["error"].as_str() {
                if e["sender"].as_u64() == Some(handle) {
                    return Err(BotError::Signaling(format!("janus videoroom: {err}")));
                }
            }
            if e["sender"].as_u64() == Some(handle) && wanted(&e) {
                return Ok(e);
            }
        }
    }
}

fn sdp_of(e: &Value) -> Result<String, BotError> {
    e["jsep"]["sdp"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| BotError::Signaling("janus: an event without SDP".into()))
}

/// Substream per subscribed video mid, for a schedule layer (`--pin`: `high` for the first of
/// the others by name only). Janus numbers the rids of `a=simulcast` as listed high to low
/// (Chrome's order); webrtc-rs lists ours low to high, so substream 0 is our 720p layer.
fn substreams(names: &BTreeMap<String, String>, video: &[String], layer: &str, pin: bool) -> Value {
    let pinned =
        crate::participant::first_in_number_order(video.iter().filter_map(|m| names.get(m)));
    let streams: Vec<Value> = video
        .iter()
        .map(|mid| {
            let high = layer == "high" && (!pin || names.get(mid) == pinned);
            json!({ "mid": mid, "substream": if high { 0 } else { 2 } })
        })
        .collect();
    json!({ "request": "configure", "streams": streams })
}

/// Run participant `identity` against Janus at `opts.janus` until `deadline`; `publish`: it
/// also publishes (else it only subscribes).
pub async fn run(
    opts: Arc<BotOptions>,
    identity: String,
    publish: bool,
    media: Arc<Media>,
    started: Instant,
    deadline: Instant,
) -> Result<ParticipantReport, BotError> {
    let server = opts.janus.clone().unwrap_or_default();
    let room = room_number(&opts.room);
    let (mut session, rx) = Session::create(&server).await?;
    let ws_open_ms = started.elapsed().as_millis() as u64;
    let mut events = Events {
        rx,
        feeds: BTreeMap::new(),
        me: 0,
    };
    let stats: Stats = Arc::default();
    let mut report = ParticipantReport::new(&identity);
    let publisher = session.attach().await?;
    // the first bot creates the room; the others are told it exists (427)
    let created = session
        .message(
            publisher,
            json!({ "request": "create", "room": room, "publishers": 100,
                    "videocodec": "vp8", "audiocodec": "opus", "bitrate": 0 }),
            None,
        )
        .await?;
    let code = created["plugindata"]["data"]["error_code"].as_u64();
    if code.is_some_and(|c| c != 427) {
        return Err(BotError::Signaling(format!("janus create room: {created}")));
    }
    session
        .message(
            publisher,
            json!({ "request": "join", "ptype": "publisher", "room": room, "display": identity }),
            None,
        )
        .await?;
    events
        .wait(publisher, |e| {
            e["plugindata"]["data"]["videoroom"] == "joined"
        })
        .await?;
    let mut pcs: Vec<Arc<RTCPeerConnection>> = Vec::new();
    if publish {
        let pc = peer_connection(Vec::new()).await?;
        crate::peer::publish(&pc, &identity, &media).await?;
        let offer = pc.create_offer(None).await?;
        let sdp = gathered(&pc, offer).await?;
        session
            .message(
                publisher,
                json!({ "request": "publish", "display": identity }),
                Some(json!({ "type": "offer", "sdp": sdp })),
            )
            .await?;
        let answer = events
            .wait(publisher, |e| e["jsep"]["type"] == "answer")
            .await?;
        pc.set_remote_description(RTCSessionDescription::answer(sdp_of(&answer)?)?)
            .await?;
        pcs.push(pc);
    }
    // the feeds to wait for: the run's publishers but this one
    let others = opts
        .participants
        .min(opts.publishers)
        .saturating_sub(usize::from(publish));
    let joined = Instant::now();
    let mut steps = Steps::new(&opts.schedule, started);
    let names: Arc<std::sync::Mutex<BTreeMap<String, String>>> = Arc::default();
    let mut subscriber: Option<(u64, Arc<RTCPeerConnection>, Vec<String>)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => break,
            e = events.rx.recv() => match e {
                Some(e) => {
                    events.note(&e);
                    if e["janus"] == "hangup" {
                        report.errors.push(format!("janus hangup: {}", e["reason"]));
                    }
                }
                None => {
                    report.errors.push("janus session gone".into());
                    break;
                }
            },
            _ = tick.tick() => {
                let now = Instant::now();
                if let Some(layer) = steps.tick(&stats, now) {
                    if let Some((handle, _, video)) = &subscriber {
                        let body = substreams(&lock(&names), video, &layer, opts.pin);
                        session.message(*handle, body, None).await?;
                    }
                }
                if subscriber.is_none()
                    && !events.feeds.is_empty()
                    && (events.feeds.len() >= others || now >= joined + SUBSCRIBE_AFTER)
                {
                    subscriber = Some(
                        subscribe(&mut session, &mut events, room, &names, &stats, started).await?,
                    );
                    if let Some((handle, _, video)) = &subscriber {
                        let body = substreams(&lock(&names), video, &steps.layer(), opts.pin);
                        session.message(*handle, body, None).await?;
                    }
                }
                if let Some((_, pc, _)) = &subscriber {
                    if report.connected_ms.is_none()
                        && pc.connection_state() == RTCPeerConnectionState::Connected
                    {
                        report.connected_ms = Some(started.elapsed().as_millis() as u64);
                        info!(%identity, "connected to Janus");
                    }
                }
            }
        }
    }
    steps.finish(&stats, None, ws_open_ms, &mut report);
    let _ = session
        .message(publisher, json!({ "request": "leave" }), None)
        .await;
    session.destroy().await;
    if let Some((_, pc, _)) = subscriber {
        pcs.push(pc);
    }
    for pc in pcs {
        let _ = pc.close().await;
    }
    Ok(report)
}

/// Subscribe to every known feed on a new handle and peer connection: the handle, the
/// connection and the subscribed video mids.
async fn subscribe(
    session: &mut Session,
    events: &mut Events,
    room: u64,
    names: &Arc<std::sync::Mutex<BTreeMap<String, String>>>,
    stats: &Stats,
    started: Instant,
) -> Result<(u64, Arc<RTCPeerConnection>, Vec<String>), BotError> {
    let handle = session.attach().await?;
    let streams: Vec<Value> = events.feeds.keys().map(|f| json!({ "feed": f })).collect();
    debug!(feeds = streams.len(), "subscribing on Janus");
    session
        .message(
            handle,
            json!({ "request": "join", "ptype": "subscriber", "room": room, "streams": streams }),
            None,
        )
        .await?;
    let offer = events
        .wait(handle, |e| e["jsep"]["type"] == "offer")
        .await?;
    let mut video = Vec::new();
    for s in offer["plugindata"]["data"]["streams"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let (Some(mid), Some(name)) = (s["mid"].as_str(), s["feed_display"].as_str()) else {
            continue;
        };
        lock(names).insert(mid.to_string(), name.to_string());
        if s["type"] == "video" {
            video.push(mid.to_string());
        }
    }
    let pc = peer_connection(Vec::new()).await?;
    watch_tracks(
        &pc,
        stats.clone(),
        started,
        TrackNames::ByMid(names.clone()),
    );
    pc.set_remote_description(RTCSessionDescription::offer(sdp_of(&offer)?)?)
        .await?;
    let answer = pc.create_answer(None).await?;
    let sdp = gathered(&pc, answer).await?;
    session
        .message(
            handle,
            json!({ "request": "start" }),
            Some(json!({ "type": "answer", "sdp": sdp })),
        )
        .await?;
    if video.is_empty() {
        warn!("Janus offered no video streams");
    }
    Ok((handle, pc, video))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_numbers_are_stable_and_fit_json() {
        assert_eq!(room_number("1234"), 1234);
        assert_eq!(room_number("cost"), room_number("cost"));
        assert_ne!(room_number("cost"), room_number("join"));
        assert!(room_number("cost") < 1 << 53);
    }

    #[test]
    fn the_pinned_feed_gets_the_high_substream() {
        let names: BTreeMap<String, String> = [("1", "b"), ("3", "a"), ("5", "c")]
            .iter()
            .map(|(m, n)| (m.to_string(), n.to_string()))
            .collect();
        let video = vec!["1".to_string(), "3".to_string(), "5".to_string()];
        let v = substreams(&names, &video, "high", true);
        let subs: Vec<u64> = v["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["substream"].as_u64().unwrap())
            .collect();
        assert_eq!(subs, vec![2, 0, 2]);
        let v = substreams(&names, &video, "low", true);
        assert!(v["streams"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["substream"] == 2));
    }
}
