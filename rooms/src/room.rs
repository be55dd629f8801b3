//! One room's signaling state, as a pure core: participants, their connection generations and
//! resume windows. Every input (a join, a message, a dropped socket, the passing of time) returns
//! the [`Effect`]s for the shell to carry out — messages to send, sockets to close. No sockets,
//! no clock: `now` is passed in, so resume and timeout rules are unit-tested directly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::forwarding::Need;
use crate::sfu::{Command, SFU_ID};
use crate::signal::{
    self, Capabilities, ClientMessage, IceServer, MediaConstraints, MediaKind, ParticipantInfo,
    ServerMessage, VERSION,
};
use crate::token::{JoinClaims, RoomRole};

/// One connection of a participant (a new WebSocket gets a new one).
pub type ConnId = u64;

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send `message` to participant `to` (dropped if it is between connections).
    Send {
        /// Recipient identity.
        to: String,
        /// The message.
        message: ServerMessage,
    },
    /// Close connection `conn` (after sending `message`).
    Close {
        /// The connection.
        conn: ConnId,
        /// Last message.
        message: ServerMessage,
    },
    /// Hand this to the SFU.
    Sfu(Command),
}

/// How media flows in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Browser to browser (two participants).
    P2p,
    /// Through the SFU (from the third participant on, for the rest of the room's life).
    Sfu,
}

impl Mode {
    /// As in `joined` and `mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::P2p => "p2p",
            Mode::Sfu => "sfu",
        }
    }
}

/// Settings of every room on a node.
#[derive(Debug, Clone)]
pub struct RoomSettings {
    /// Participants allowed at once.
    pub max_participants: usize,
    /// How long a dropped participant keeps its place.
    pub resume_window: Duration,
    /// ICE servers handed out in `joined`.
    pub ice_servers: Vec<IceServer>,
    /// Move to the SFU when a third participant joins (else rooms stay peer-to-peer).
    pub sfu: bool,
}

#[derive(Debug, Clone)]
struct Participant {
    info: ParticipantInfo,
    session: String,
    conn: ConnId,
    /// When its socket dropped, while it may still resume.
    dropped_at: Option<Instant>,
    /// Join order.
    order: u64,
    /// What its client can handle.
    caps: Capabilities,
}

/// See the module docs.
#[derive(Debug)]
pub struct Room {
    name: String,
    settings: RoomSettings,
    participants: BTreeMap<String, Participant>,
    joins: u64,
    started_at: Instant,
    mode: Mode,
}

impl Room {
    /// An empty room.
    pub fn new(name: &str, settings: RoomSettings, now: Instant) -> Room {
        Room {
            name: name.to_string(),
            settings,
            participants: BTreeMap::new(),
            joins: 0,
            started_at: now,
            mode: Mode::P2p,
        }
    }

    /// The room's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Peer-to-peer or through the SFU.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// When the room was created.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// Nobody is in the room (not even a participant that may resume).
    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }

    /// Participants in join order.
    pub fn participants(&self) -> Vec<ParticipantInfo> {
        let mut all: Vec<&Participant> = self.participants.values().collect();
        all.sort_by_key(|p| p.order);
        all.into_iter().map(|p| p.info.clone()).collect()
    }

    /// Participants with a live connection.
    pub fn connected(&self) -> usize {
        self.participants
            .values()
            .filter(|p| p.dropped_at.is_none())
            .count()
    }

    /// What every participant can handle (the weaker side decides).
    pub fn constraints(&self) -> MediaConstraints {
        signal::constraints(self.participants.values().map(|p| &p.caps))
    }

    /// Tell everyone but `except` the constraints if they differ from `before`.
    fn constraints_changed(&self, before: &MediaConstraints, except: &str) -> Vec<Effect> {
        let now = self.constraints();
        if now == *before {
            return Vec::new();
        }
        self.others(except, &ServerMessage::Constraints { constraints: now })
    }

    fn others(&self, id: &str, message: &ServerMessage) -> Vec<Effect> {
        self.participants
            .keys()
            .filter(|k| k.as_str() != id)
            .map(|k| Effect::Send {
                to: k.clone(),
                message: message.clone(),
            })
            .collect()
    }

    /// `conn` sent `join` with a verified token. `new_session` is a fresh random session id
    /// (used unless an earlier session continues). Effects include the `joined` answer.
    pub fn join(
        &mut self,
        claims: &JoinClaims,
        name: Option<String>,
        session: Option<&str>,
        caps: Capabilities,
        conn: ConnId,
        new_session: String,
    ) -> Vec<Effect> {
        let id = claims.sub.clone();
        let before = self.constraints();
        let name = name
            .map(|n| {
                n.chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect::<String>()
            })
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| {
                if claims.name.is_empty() {
                    id.clone()
                } else {
                    claims.name.clone()
                }
            });
        let mut effects = Vec::new();
        if let Some(existing) = self.participants.get_mut(&id) {
            // the same identity again: a resumed session, or the same person on a new page —
            // either way it takes the place over; the others see no leave
            let resumed = session == Some(existing.session.as_str());
            if existing.dropped_at.is_none() {
                effects.push(Effect::Close {
                    conn: existing.conn,
                    message: ServerMessage::error("replaced", "joined again elsewhere"),
                });
            }
            existing.conn = conn;
            existing.dropped_at = None;
            existing.caps = caps;
            if !resumed {
                existing.session = new_session;
            }
            let renamed = existing.info.name != name;
            existing.info.name = name;
            let you = existing.info.clone();
            let session = existing.session.clone();
            if renamed {
                effects.extend(self.others(
                    &id,
                    &ServerMessage::ParticipantUpdated {
                        participant: you.clone(),
                    },
                ));
            }
            effects.extend(self.constraints_changed(&before, &id));
            effects.push(self.joined(&id, you, session, resumed));
            return effects;
        }
        if self.participants.len() >= self.settings.max_participants {
            return vec![Effect::Close {
                conn,
                message: ServerMessage::error(
                    "room_full",
                    format!(
                        "room {} has {} participants (the most it takes)",
                        self.name, self.settings.max_participants
                    ),
                ),
            }];
        }
        self.joins += 1;
        let info = ParticipantInfo {
            id: id.clone(),
            name,
            role: claims.role,
            audio_muted: false,
            video_muted: false,
        };
        effects.extend(self.others(
            &id,
            &ServerMessage::ParticipantJoined {
                participant: info.clone(),
            },
        ));
        self.participants.insert(
            id.clone(),
            Participant {
                info: info.clone(),
                session: new_session.clone(),
                conn,
                dropped_at: None,
                order: self.joins,
                caps,
            },
        );
        effects.extend(self.constraints_changed(&before, &id));
        if self.mode == Mode::P2p && self.settings.sfu && self.participants.len() >= 3 {
            // everyone renegotiates with the SFU; the newcomer learns it from `joined`
            self.mode = Mode::Sfu;
            effects.extend(self.others(&id, &ServerMessage::Mode { mode: "sfu" }));
        }
        effects.push(self.joined(&id, info, new_session, false));
        effects
    }

    /// Move the call to the SFU now, whatever its size (a recorded call is recorded there):
    /// everyone renegotiates with it, as when a third participant joins. Nothing when it is
    /// there already or the node has no SFU.
    pub fn use_sfu(&mut self) -> Vec<Effect> {
        if self.mode == Mode::Sfu || !self.settings.sfu {
            return Vec::new();
        }
        self.mode = Mode::Sfu;
        self.participants
            .keys()
            .map(|id| Effect::Send {
                to: id.clone(),
                message: ServerMessage::Mode { mode: "sfu" },
            })
            .collect()
    }

    fn joined(&self, id: &str, you: ParticipantInfo, session: String, resumed: bool) -> Effect {
        Effect::Send {
            to: id.to_string(),
            message: ServerMessage::Joined {
                v: VERSION,
                room: self.name.clone(),
                you,
                session,
                resumed,
                participants: self
                    .participants()
                    .into_iter()
                    .filter(|p| p.id != id)
                    .collect(),
                mode: self.mode.as_str(),
                ice_servers: self.settings.ice_servers.clone(),
                constraints: self.constraints(),
            },
        }
    }

    /// Participant `id`'s live connection.
    pub fn conn_of(&self, id: &str) -> Option<ConnId> {
        self.participants
            .get(id)
            .filter(|p| p.dropped_at.is_none())
            .map(|p| p.conn)
    }

    /// Whether `conn` is participant `id`'s current connection.
    pub fn is_current(&self, id: &str, conn: ConnId) -> bool {
        self.participants
            .get(id)
            .is_some_and(|p| p.conn == conn && p.dropped_at.is_none())
    }

    /// A message from joined participant `id` on `conn`.
    pub fn message(&mut self, id: &str, conn: ConnId, message: ClientMessage) -> Vec<Effect> {
        if !self.is_current(id, conn) {
            return vec![Effect::Close {
                conn,
                message: ServerMessage::error("replaced", "this session continues elsewhere"),
            }];
        }
        let reply = |message| {
            vec![Effect::Send {
                to: id.to_string(),
                message,
            }]
        };
        let unknown = |to: &str| {
            reply(ServerMessage::error(
                "unknown_participant",
                format!(
                    "no participant {:?}",
                    to.chars().take(64).collect::<String>()
                ),
            ))
        };
        let relay = |to: String, message: ServerMessage| {
            if to == id || !self.participants.contains_key(&to) {
                unknown(&to)
            } else {
                vec![Effect::Send { to, message }]
            }
        };
        let sfu = |command| vec![Effect::Sfu(command)];
        let from = id.to_string();
        match message {
            ClientMessage::Join { .. } => {
                reply(ServerMessage::error("already_joined", "already joined"))
            }
            ClientMessage::Offer { to, sdp } if self.to_sfu(&to) => sfu(Command::Offer {
                room: self.name.clone(),
                participant: from,
                sdp,
            }),
            ClientMessage::Answer { to, sdp } if self.to_sfu(&to) => sfu(Command::Answer {
                room: self.name.clone(),
                participant: from,
                sdp,
            }),
            ClientMessage::Candidate { to, candidate } if self.to_sfu(&to) => {
                sfu(Command::Candidate {
                    room: self.name.clone(),
                    participant: from,
                    candidate,
                })
            }
            ClientMessage::Subscribe {
                participant,
                layer,
                height,
                ..
            } if self.mode == Mode::Sfu => {
                if participant == id || !self.participants.contains_key(&participant) {
                    return unknown(&participant);
                }
                sfu(Command::Subscribe {
                    room: self.name.clone(),
                    subscriber: from,
                    publisher: participant,
                    need: Need {
                        layer,
                        tile_height: height,
                    },
                })
            }
            ClientMessage::Offer { to, sdp } => relay(to, ServerMessage::Offer { from, sdp }),
            ClientMessage::Answer { to, sdp } => relay(to, ServerMessage::Answer { from, sdp }),
            ClientMessage::Candidate { to, candidate } => {
                relay(to, ServerMessage::Candidate { from, candidate })
            }
            ClientMessage::Subscribe {
                participant,
                layer,
                width,
                height,
            } => relay(
                participant,
                ServerMessage::Subscription {
                    from,
                    layer,
                    width,
                    height,
                },
            ),
            ClientMessage::Mute { kind, muted } => {
                let Some(p) = self.participants.get_mut(id) else {
                    return Vec::new();
                };
                match kind {
                    MediaKind::Audio => p.info.audio_muted = muted,
                    MediaKind::Video => p.info.video_muted = muted,
                }
                let participant = p.info.clone();
                self.updated(participant)
            }
            ClientMessage::Update { name } => {
                let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
                let Some(p) = self.participants.get_mut(id) else {
                    return Vec::new();
                };
                if !name.trim().is_empty() {
                    p.info.name = name;
                }
                let participant = p.info.clone();
                self.updated(participant)
            }
            ClientMessage::Ping => reply(ServerMessage::Pong),
            // the shell handles recording (it owns the recorder)
            ClientMessage::Record { .. } => Vec::new(),
            ClientMessage::Leave => self.remove(id, "left"),
        }
    }

    fn updated(&self, participant: ParticipantInfo) -> Vec<Effect> {
        let message = ServerMessage::ParticipantUpdated {
            participant: participant.clone(),
        };
        let mut effects = self.others(&participant.id, &message);
        effects.push(Effect::Send {
            to: participant.id,
            message,
        });
        effects
    }

    /// Participant `id` is gone for good (`reason`: `left`, `timeout`, `kicked`).
    pub fn remove(&mut self, id: &str, reason: &'static str) -> Vec<Effect> {
        let before = self.constraints();
        let Some(p) = self.participants.remove(id) else {
            return Vec::new();
        };
        let mut effects = self.others(
            id,
            &ServerMessage::ParticipantLeft {
                id: id.to_string(),
                reason,
            },
        );
        if p.dropped_at.is_none() {
            let message = match reason {
                "kicked" => ServerMessage::error("kicked", "removed from the room"),
                _ => ServerMessage::ParticipantLeft {
                    id: id.to_string(),
                    reason,
                },
            };
            effects.push(Effect::Close {
                conn: p.conn,
                message,
            });
        }
        effects.extend(self.constraints_changed(&before, id));
        if self.mode == Mode::Sfu {
            effects.push(Effect::Sfu(Command::Leave {
                room: self.name.clone(),
                participant: id.to_string(),
            }));
        }
        effects
    }

    /// Whether a message addressed `to` goes to the SFU.
    fn to_sfu(&self, to: &str) -> bool {
        self.mode == Mode::Sfu && to == SFU_ID
    }

    /// Connection `conn` of `id` dropped without `leave`: it may resume within the window.
    pub fn dropped(&mut self, id: &str, conn: ConnId, now: Instant) {
        if let Some(p) = self.participants.get_mut(id) {
            if p.conn == conn && p.dropped_at.is_none() {
                p.dropped_at = Some(now);
            }
        }
    }

    /// Participants dropped longer than the resume window ago leave (`timeout`).
    pub fn expire(&mut self, now: Instant) -> Vec<Effect> {
        let gone: Vec<String> = self
            .participants
            .iter()
            .filter(|(_, p)| {
                p.dropped_at.is_some_and(|t| {
                    now.saturating_duration_since(t) >= self.settings.resume_window
                })
            })
            .map(|(id, _)| id.clone())
            .collect();
        gone.iter()
            .flat_map(|id| self.remove(id, "timeout"))
            .collect()
    }

    /// The room is ended (API): everyone connected is told and closed.
    pub fn end(&mut self) -> Vec<Effect> {
        let mut effects: Vec<Effect> = self
            .participants
            .values()
            .filter(|p| p.dropped_at.is_none())
            .map(|p| Effect::Close {
                conn: p.conn,
                message: ServerMessage::RoomEnded,
            })
            .collect();
        if self.mode == Mode::Sfu {
            effects.extend(self.participants.keys().map(|id| {
                Effect::Sfu(Command::Leave {
                    room: self.name.clone(),
                    participant: id.clone(),
                })
            }));
        }
        self.participants.clear();
        effects
    }

    /// The role of participant `id`.
    pub fn role(&self, id: &str) -> Option<RoomRole> {
        self.participants.get(id).map(|p| p.info.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::Layer;

    fn claims(id: &str) -> JoinClaims {
        JoinClaims {
            room: "r".into(),
            sub: id.into(),
            name: String::new(),
            role: RoomRole::Publisher,
            record: false,
            iat: 0,
            exp: u64::MAX,
        }
    }

    fn room(now: Instant) -> Room {
        Room::new(
            "r",
            RoomSettings {
                max_participants: 2,
                resume_window: Duration::from_secs(15),
                ice_servers: vec![],
                sfu: true,
            },
            now,
        )
    }

    /// `id` joins `r` on connection `conn` with a new session `session`, no name, no resume.
    fn join(r: &mut Room, id: &str, conn: ConnId, session: &str) -> Vec<Effect> {
        r.join(
            &claims(id),
            None,
            None,
            Capabilities::default(),
            conn,
            session.into(),
        )
    }

    fn sent_to(effects: &[Effect], who: &str) -> Vec<ServerMessage> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, message } if to == who => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn two_join_and_relay_offer_answer_candidates() {
        let t0 = Instant::now();
        let mut r = room(t0);
        let e = r.join(
            &claims("a"),
            Some("Alice".into()),
            None,
            Capabilities::default(),
            1,
            "s1".into(),
        );
        assert!(
            matches!(&sent_to(&e, "a")[0], ServerMessage::Joined { participants, .. } if participants.is_empty())
        );
        let e = join(&mut r, "b", 2, "s2");
        assert!(
            matches!(&sent_to(&e, "a")[0], ServerMessage::ParticipantJoined { participant } if participant.id == "b")
        );
        assert!(
            matches!(&sent_to(&e, "b")[0], ServerMessage::Joined { participants, .. } if participants[0].name == "Alice")
        );
        let e = r.message(
            "b",
            2,
            ClientMessage::Offer {
                to: "a".into(),
                sdp: "v=0".into(),
            },
        );
        assert_eq!(
            e,
            vec![Effect::Send {
                to: "a".into(),
                message: ServerMessage::Offer {
                    from: "b".into(),
                    sdp: "v=0".into()
                }
            }]
        );
        let e = r.message(
            "a",
            1,
            ClientMessage::Candidate {
                to: "b".into(),
                candidate: serde_json::Value::Null,
            },
        );
        assert_eq!(sent_to(&e, "b").len(), 1);
        let e = r.message(
            "a",
            1,
            ClientMessage::Offer {
                to: "zed".into(),
                sdp: String::new(),
            },
        );
        assert!(matches!(
            &sent_to(&e, "a")[0],
            ServerMessage::Error {
                code: "unknown_participant",
                ..
            }
        ));
        let e = r.message(
            "a",
            1,
            ClientMessage::Subscribe {
                participant: "b".into(),
                layer: Layer::Low,
                width: Some(320),
                height: None,
            },
        );
        assert!(matches!(
            &sent_to(&e, "b")[0],
            ServerMessage::Subscription {
                layer: Layer::Low,
                ..
            }
        ));
        // a third is refused while the room is peer-to-peer only
        let e = join(&mut r, "c", 3, "s3");
        assert!(matches!(
            &e[..],
            [Effect::Close {
                conn: 3,
                message: ServerMessage::Error {
                    code: "room_full",
                    ..
                }
            }]
        ));
    }

    #[test]
    fn a_dropped_participant_resumes_unseen_or_times_out() {
        let t0 = Instant::now();
        let mut r = room(t0);
        join(&mut r, "a", 1, "s1");
        join(&mut r, "b", 2, "s2");
        r.dropped("a", 1, t0);
        assert!(
            r.expire(t0 + Duration::from_secs(14)).is_empty(),
            "within the window"
        );
        let e = r.join(
            &claims("a"),
            None,
            Some("s1"),
            Capabilities::default(),
            7,
            "new".into(),
        );
        assert!(sent_to(&e, "b").is_empty(), "b sees nothing of the resume");
        assert!(
            matches!(&sent_to(&e, "a")[0], ServerMessage::Joined { resumed: true, session, .. } if session == "s1")
        );
        assert!(r.is_current("a", 7) && !r.is_current("a", 1));
        // the old connection's late messages are refused
        let e = r.message("a", 1, ClientMessage::Ping);
        assert!(matches!(&e[..], [Effect::Close { conn: 1, .. }]));
        // dropped again, past the window: b sees it leave
        r.dropped("a", 7, t0 + Duration::from_secs(20));
        let e = r.expire(t0 + Duration::from_secs(35));
        assert_eq!(
            sent_to(&e, "b"),
            vec![ServerMessage::ParticipantLeft {
                id: "a".into(),
                reason: "timeout"
            }]
        );
        assert_eq!(r.connected(), 1);
    }

    #[test]
    fn same_identity_replaces_leave_and_end_close() {
        let t0 = Instant::now();
        let mut r = room(t0);
        join(&mut r, "a", 1, "s1");
        join(&mut r, "b", 2, "s2");
        let e = join(&mut r, "a", 3, "s3");
        assert!(e.contains(&Effect::Close {
            conn: 1,
            message: ServerMessage::error("replaced", "joined again elsewhere")
        }));
        assert!(matches!(
            &sent_to(&e, "a")[0],
            ServerMessage::Joined { resumed: false, .. }
        ));
        let e = r.message(
            "a",
            3,
            ClientMessage::Mute {
                kind: MediaKind::Audio,
                muted: true,
            },
        );
        assert!(
            matches!(&sent_to(&e, "b")[0], ServerMessage::ParticipantUpdated { participant } if participant.audio_muted)
        );
        let e = r.message("b", 2, ClientMessage::Leave);
        assert_eq!(
            sent_to(&e, "a"),
            vec![ServerMessage::ParticipantLeft {
                id: "b".into(),
                reason: "left"
            }]
        );
        let e = r.end();
        assert_eq!(
            e,
            vec![Effect::Close {
                conn: 3,
                message: ServerMessage::RoomEnded
            }]
        );
        assert!(r.is_empty());
    }

    #[test]
    fn a_recorded_call_of_two_moves_to_the_sfu() {
        let now = Instant::now();
        let mut r = room(now);
        let caps = Capabilities::default;
        r.join(&claims("a"), None, None, caps(), 1, "s1".into());
        r.join(&claims("b"), None, None, caps(), 2, "s2".into());
        assert_eq!(r.mode(), Mode::P2p);
        let e = r.use_sfu();
        assert_eq!(r.mode(), Mode::Sfu);
        for who in ["a", "b"] {
            assert_eq!(sent_to(&e, who), vec![ServerMessage::Mode { mode: "sfu" }]);
        }
        assert!(r.use_sfu().is_empty());
        // a newcomer is told at once
        let mut r = room(now);
        r.use_sfu();
        let e = r.join(&claims("a"), None, None, caps(), 1, "s1".into());
        assert!(matches!(
            sent_to(&e, "a").last(),
            Some(ServerMessage::Joined { mode: "sfu", .. })
        ));
        // no SFU on this node: the call stays peer-to-peer
        let mut r = room(now);
        r.settings.sfu = false;
        assert!(r.use_sfu().is_empty());
        assert_eq!(r.mode(), Mode::P2p);
    }

    #[test]
    fn a_third_participant_moves_the_room_to_the_sfu() {
        let now = Instant::now();
        let mut r = room(now);
        r.settings.max_participants = 4;
        let caps = Capabilities::default;
        r.join(&claims("a"), None, None, caps(), 1, "s1".into());
        r.join(&claims("b"), None, None, caps(), 2, "s2".into());
        assert_eq!(r.mode(), Mode::P2p);
        let e = r.join(&claims("c"), None, None, caps(), 3, "s3".into());
        assert_eq!(r.mode(), Mode::Sfu);
        for who in ["a", "b"] {
            assert!(sent_to(&e, who).contains(&ServerMessage::Mode { mode: "sfu" }));
        }
        assert!(matches!(
            sent_to(&e, "c").last(),
            Some(ServerMessage::Joined { mode: "sfu", .. })
        ));
        // SDP addressed to the SFU goes to it; subscriptions become forwarding needs
        let e = r.message(
            "a",
            1,
            ClientMessage::Offer {
                to: SFU_ID.into(),
                sdp: "v=0".into(),
            },
        );
        assert_eq!(
            e,
            vec![Effect::Sfu(Command::Offer {
                room: "r".into(),
                participant: "a".into(),
                sdp: "v=0".into()
            })]
        );
        let e = r.message(
            "c",
            3,
            ClientMessage::Subscribe {
                participant: "a".into(),
                layer: Layer::High,
                width: Some(640),
                height: Some(360),
            },
        );
        assert_eq!(
            e,
            vec![Effect::Sfu(Command::Subscribe {
                room: "r".into(),
                subscriber: "c".into(),
                publisher: "a".into(),
                need: Need {
                    layer: Layer::High,
                    tile_height: Some(360)
                }
            })]
        );
        let e = r.message(
            "c",
            3,
            ClientMessage::Subscribe {
                participant: "nobody".into(),
                layer: Layer::High,
                width: None,
                height: None,
            },
        );
        assert!(
            matches!(&sent_to(&e, "c")[0], ServerMessage::Error { code, .. } if *code == "unknown_participant")
        );
        // leaving frees its SFU state; fewer participants keep the SFU
        let e = r.message("b", 2, ClientMessage::Leave);
        assert!(e.contains(&Effect::Sfu(Command::Leave {
            room: "r".into(),
            participant: "b".into()
        })));
        assert_eq!(r.mode(), Mode::Sfu);
    }
}
