//! The signaling protocol, version 1: JSON text messages over `/rooms/{room}/ws?token=…`, each
//! an object with a `type`. Documented for client authors in `docs/signaling.md`; this module
//! is the source of truth (parsing is here, never in the shell).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::token::RoomRole;

/// Protocol version, sent in `joined`.
pub const VERSION: u32 = 1;

/// A subscriber's need for one remote participant's video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Pinned or enlarged.
    High,
    /// A thumbnail.
    Low,
    /// Hidden: send nothing.
    Off,
}

/// Client → server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message on a socket. `session` from an earlier `joined` resumes that session.
    Join {
        /// Display name (else the token's).
        #[serde(default)]
        name: Option<String>,
        /// Session to resume after a dropped WebSocket.
        #[serde(default)]
        session: Option<String>,
        /// What this client can send and receive.
        #[serde(default)]
        caps: Capabilities,
    },
    /// SDP offer for participant `to`.
    Offer {
        /// Recipient.
        to: String,
        /// The SDP.
        sdp: String,
    },
    /// SDP answer for participant `to`.
    Answer {
        /// Recipient.
        to: String,
        /// The SDP.
        sdp: String,
    },
    /// A trickled ICE candidate (`RTCIceCandidateInit`, or null at the end) for `to`.
    Candidate {
        /// Recipient.
        to: String,
        /// The candidate.
        candidate: Value,
    },
    /// Audio or video muted / unmuted.
    Mute {
        /// `audio` or `video`.
        kind: MediaKind,
        /// Muted now.
        muted: bool,
    },
    /// New display name.
    Update {
        /// The name.
        name: String,
    },
    /// What this subscriber's layout needs of `participant`'s video.
    Subscribe {
        /// Whose video.
        participant: String,
        /// High, low or off.
        layer: Layer,
        /// Tile size in pixels, if known: the video need not exceed it.
        #[serde(default)]
        width: Option<u32>,
        /// Tile height.
        #[serde(default)]
        height: Option<u32>,
    },
    /// Start (`on: true`) or stop the call's recording; only with a token that allows it.
    Record {
        /// Recording from now on.
        on: bool,
    },
    /// Leaving for good.
    Leave,
    /// Keep-alive; answered with `pong`.
    Ping,
}

/// What a client can send and receive (sent in `join`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Video codecs it can encode and decode (`VP8`, `H264`), in any order. Empty: no limit.
    #[serde(default)]
    pub video_codecs: Vec<String>,
    /// The tallest video it wants to receive (a small screen, a weak decoder). None: no limit.
    #[serde(default)]
    pub max_height: Option<u32>,
}

/// What every participant of a room can handle: the weaker side decides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MediaConstraints {
    /// The video codec everyone can decode (`VP8` preferred, else `H264`); None when there is no
    /// common one (each side then negotiates what it can).
    pub video_codec: Option<String>,
    /// Senders scale their video to at most this height.
    pub max_height: Option<u32>,
}

/// Video codecs a room can agree on, most preferred first.
pub const VIDEO_CODECS: [&str; 2] = ["VP8", "H264"];

/// The constraints for participants with these capabilities.
pub fn constraints<'a>(caps: impl Iterator<Item = &'a Capabilities> + Clone) -> MediaConstraints {
    let video_codec = VIDEO_CODECS
        .iter()
        .find(|codec| {
            caps.clone().all(|c| {
                c.video_codecs.is_empty()
                    || c.video_codecs.iter().any(|v| v.eq_ignore_ascii_case(codec))
            })
        })
        .map(|c| (*c).to_string());
    let max_height = caps.filter_map(|c| c.max_height).filter(|h| *h > 0).min();
    MediaConstraints {
        video_codec,
        max_height,
    }
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    /// Microphone.
    Audio,
    /// Camera.
    Video,
}

/// A participant as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParticipantInfo {
    /// Identity (from the token).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Publisher or viewer.
    pub role: RoomRole,
    /// Microphone muted.
    pub audio_muted: bool,
    /// Camera muted.
    pub video_muted: bool,
}

/// An ICE server for `RTCPeerConnection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// `stun:` / `turn:` URLs.
    pub urls: Vec<String>,
    /// TURN REST API username (`expiry:identity`), for `turn:` URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Its password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Admitted (or resumed).
    Joined {
        /// Protocol version.
        v: u32,
        /// The room.
        room: String,
        /// This participant.
        you: ParticipantInfo,
        /// Resume with this after a dropped WebSocket.
        session: String,
        /// True when an earlier session continued (the peer connections may still be up).
        resumed: bool,
        /// Everyone else, in join order; a newcomer sends each of them an offer.
        participants: Vec<ParticipantInfo>,
        /// `p2p`: media flows between the browsers.
        mode: &'static str,
        /// For `RTCPeerConnection({iceServers})`.
        ice_servers: Vec<IceServer>,
        /// Codec and size every participant can handle.
        constraints: MediaConstraints,
    },
    /// The room moved to the SFU (a third participant joined): close the peer-to-peer
    /// connections and offer to participant `sfu`.
    Mode {
        /// `sfu`.
        mode: &'static str,
    },
    /// The SFU forwards only these simulcast layers (RIDs) of your video on `mid`: pause the
    /// others at the encoder (`RTCRtpEncodingParameters.active`).
    Layers {
        /// The video's `mid` in your connection to the SFU.
        mid: String,
        /// RIDs someone receives.
        active: Vec<String>,
    },
    /// Whether the call is being recorded: sent to everyone when it starts or stops, and to
    /// each participant after it joins (with whether its token may start and stop it).
    Recording {
        /// Recording now.
        on: bool,
        /// This participant may send `record` (only in the message after joining).
        #[serde(skip_serializing_if = "Option::is_none")]
        can_control: Option<bool>,
    },
    /// The loudest participant (through the SFU), for the layout to enlarge.
    ActiveSpeaker {
        /// Who.
        participant: String,
    },
    /// The room's constraints changed (someone joined or left): apply at the next negotiation.
    Constraints {
        /// As now.
        constraints: MediaConstraints,
    },
    /// Someone joined.
    ParticipantJoined {
        /// Who.
        participant: ParticipantInfo,
    },
    /// Someone changed name or mute state.
    ParticipantUpdated {
        /// Who, as now.
        participant: ParticipantInfo,
    },
    /// Someone left (`left`, `timeout`, `kicked`, `replaced`).
    ParticipantLeft {
        /// Who.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// Relayed offer.
    Offer {
        /// Sender.
        from: String,
        /// SDP.
        sdp: String,
    },
    /// Relayed answer.
    Answer {
        /// Sender.
        from: String,
        /// SDP.
        sdp: String,
    },
    /// Relayed candidate.
    Candidate {
        /// Sender.
        from: String,
        /// Candidate.
        candidate: Value,
    },
    /// A subscriber's need for this participant's video (peer-to-peer: the sender scales its
    /// encoding to it).
    Subscription {
        /// The subscriber.
        from: String,
        /// Layer asked for.
        layer: Layer,
        /// Tile width, if given.
        width: Option<u32>,
        /// Tile height, if given.
        height: Option<u32>,
    },
    /// Answer to `ping`.
    Pong,
    /// The room was ended by the API; the socket closes.
    RoomEnded,
    /// This node is shutting down (SIGTERM): the socket closes, and the client joins again
    /// as a new session, on whichever node answers.
    Draining,
    /// The room lives on another node: join there (`url` + `?token=…&redirects=n`, n counting
    /// the redirects followed); the socket closes.
    Redirect {
        /// The room's WebSocket URL on its node.
        url: String,
    },
    /// A refused message or a reason the socket closes.
    Error {
        /// Stable code (see `docs/signaling.md`).
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
}

impl ServerMessage {
    /// An error message.
    pub fn error(code: &'static str, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code,
            message: message.into(),
        }
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Message types clients may send (anything else is `unknown_type`).
const CLIENT_TYPES: [&str; 10] = [
    "join",
    "offer",
    "answer",
    "candidate",
    "mute",
    "update",
    "subscribe",
    "record",
    "leave",
    "ping",
];

/// A message that could not be taken, with the error code sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `bad_message` or `unknown_type`.
    pub code: &'static str,
    /// Detail for the client.
    pub message: String,
}

impl From<Refusal> for ServerMessage {
    fn from(r: Refusal) -> ServerMessage {
        ServerMessage::error(r.code, r.message)
    }
}

fn refusal(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// Parse one text message.
pub fn parse(text: &str) -> Result<ClientMessage, Refusal> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| refusal("bad_message", format!("not JSON: {e}")))?;
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| refusal("bad_message", "no \"type\""))?
        .to_string();
    if !CLIENT_TYPES.contains(&kind.as_str()) {
        let shown: String = kind.chars().take(32).collect();
        return Err(refusal(
            "unknown_type",
            format!("unknown message type {shown:?}"),
        ));
    }
    serde_json::from_value(value).map_err(|e| refusal("bad_message", format!("bad {kind}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_messages_and_names_errors() {
        assert_eq!(
            parse(r#"{"type":"join","name":"Al"}"#),
            Ok(ClientMessage::Join {
                name: Some("Al".into()),
                session: None,
                caps: Capabilities::default(),
            })
        );
        assert_eq!(
            parse(r#"{"type":"candidate","to":"b","candidate":null}"#),
            Ok(ClientMessage::Candidate {
                to: "b".into(),
                candidate: Value::Null
            })
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","participant":"b","layer":"low","width":320}"#),
            Ok(ClientMessage::Subscribe {
                participant: "b".into(),
                layer: Layer::Low,
                width: Some(320),
                height: None
            })
        );
        let code = |t: &str| match parse(t) {
            Err(r) => r.code,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(code("{"), "bad_message");
        assert_eq!(code("[1]"), "bad_message");
        assert_eq!(code(r#"{"type":"explode"}"#), "unknown_type");
        assert_eq!(code(r#"{"type":"offer","to":"b"}"#), "bad_message");
        assert_eq!(
            code(r#"{"type":"mute","kind":"smell","muted":true}"#),
            "bad_message"
        );
        assert_eq!(
            code(r#"{"type":"offer","to":"b","sdp":"x","evil":1}"#),
            "bad_message"
        );
    }

    #[test]
    fn the_weaker_side_decides_codec_and_height() {
        let caps = |codecs: &[&str], h: Option<u32>| Capabilities {
            video_codecs: codecs.iter().map(|c| c.to_string()).collect(),
            max_height: h,
        };
        let both = [caps(&["VP8", "H264"], None), caps(&["vp8"], Some(720))];
        assert_eq!(
            constraints(both.iter()),
            MediaConstraints {
                video_codec: Some("VP8".into()),
                max_height: Some(720)
            }
        );
        let h264_only = [
            caps(&["VP8", "H264"], Some(1080)),
            caps(&["H264"], Some(360)),
        ];
        let c = constraints(h264_only.iter());
        assert_eq!(
            (c.video_codec.as_deref(), c.max_height),
            (Some("H264"), Some(360))
        );
        let none = [caps(&["VP8"], None), caps(&["H264"], None)];
        assert_eq!(constraints(none.iter()).video_codec, None);
        let unknown = [caps(&[], None), caps(&["H264"], None)];
        assert_eq!(
            constraints(unknown.iter()).video_codec.as_deref(),
            Some("H264")
        );
        assert_eq!(
            parse(r#"{"type":"join","caps":{"video_codecs":["H264"],"max_height":360}}"#),
            Ok(ClientMessage::Join {
                name: None,
                session: None,
                caps: caps(&["H264"], Some(360)),
            })
        );
    }

    #[test]
    fn server_messages_are_tagged_json() {
        let m = ServerMessage::ParticipantLeft {
            id: "a".into(),
            reason: "left",
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"participant_left","id":"a","reason":"left"}"#
        );
        assert_eq!(ServerMessage::Pong.to_json(), r#"{"type":"pong"}"#);
    }
}
