//! One participant's connection to the SFU: its `str0m::Rtc` (RTP mode: packets are forwarded,
//! never depacketised), what it publishes, the other participants' tracks it receives, and
//! the SDP negotiation that adds and removes those. The client offers once (its own tracks);
//! after that only the SFU offers, so the two never collide.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid, Rid};
use str0m::net::TcpType;
use str0m::rtp::Ssrc;
use str0m::{Candidate, Rtc};

use super::codec::SeqExtender;
use super::SfuError;
use crate::forwarding::{Budget, ProbePacer, RtpRewriter, TrackKey};

/// Starting bandwidth estimate towards a subscriber, before TWCC feedback refines it.
pub const INITIAL_ESTIMATE_BPS: u64 = 1_500_000;

/// Where an outgoing track is in its negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutState {
    /// To be added at the next offer.
    ToOpen,
    /// In an offer not yet answered.
    Negotiating(Mid),
    /// Negotiated: packets may be written.
    Open(Mid),
    /// To be removed at the next offer.
    ToStop(Mid),
    /// Removal offered, not yet answered.
    NegotiatingStop(Mid),
}

/// Another participant's track as sent to this one.
#[derive(Debug)]
pub struct OutTrack {
    /// Audio or video.
    pub kind: MediaKind,
    /// Negotiation state.
    pub state: OutState,
    /// Keeps sequence numbers and timestamps continuous across layer switches.
    pub rewriter: RtpRewriter,
    /// Extended sequence numbers for SRTP.
    pub seq: SeqExtender,
}

/// See the module docs.
pub struct Peer {
    /// Participant identity.
    pub id: String,
    /// The WebRTC session.
    pub rtc: Rtc,
    /// `a=ice-ufrag` of the client's offer: a new one means a new `RTCPeerConnection`.
    pub remote_ufrag: String,
    /// The client's first offer was answered: the SFU may offer now.
    ready: bool,
    pending: Option<SdpPendingOffer>,
    /// Other participants' tracks sent to this one.
    pub outputs: BTreeMap<TrackKey, OutTrack>,
    /// (mid, rid) of incoming SSRCs.
    ssrcs: HashMap<Ssrc, (Mid, Option<Rid>)>,
    /// Bandwidth estimate towards this subscriber (TWCC + GCC).
    pub estimate_bps: u64,
    /// What its layers may use, from the estimates.
    pub budget: Budget,
    /// When to ask the estimator to probe for a held-back layer.
    pub probe: ProbePacer,
    /// The forwarding choice must be recomputed.
    pub reselect: bool,
    /// Remote addresses seen (for the demultiplexing cache).
    pub addrs: Vec<SocketAddr>,
    /// Something was fed in (input, a written packet, a changed setting): poll it.
    pub dirty: bool,
    /// When str0m next wants time fed in.
    pub wake: Instant,
}

fn ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .unwrap_or_default()
        .to_string()
}

impl Peer {
    /// A peer for `id`'s offer, with host candidates on the SFU's sockets and the
    /// server-reflexive ones STUN found for them (`(public, socket)`). Returns the peer and the
    /// SDP answer.
    pub fn accept(
        id: &str,
        sdp: &str,
        candidates: &[SocketAddr],
        reflexive: &[(SocketAddr, SocketAddr)],
        tcp: bool,
        now: Instant,
    ) -> Result<(Peer, String), SfuError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| SfuError::Sdp(e.to_string()))?;
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
            .enable_bwe(Some(Bitrate::bps(INITIAL_ESTIMATE_BPS)))
            .build(now);
        for addr in candidates {
            let c = Candidate::host(*addr, "udp").map_err(|e| SfuError::Sdp(e.to_string()))?;
            rtc.add_local_candidate(c);
            if tcp {
                // ICE-TCP: the client connects to us (RFC 6544 passive)
                let c = Candidate::builder()
                    .tcp()
                    .host(*addr)
                    .tcptype(TcpType::Passive)
                    .build()
                    .map_err(|e| SfuError::Sdp(e.to_string()))?;
                rtc.add_local_candidate(c);
            }
        }
        for (public, base) in reflexive {
            let c = Candidate::server_reflexive(*public, *base, "udp")
                .map_err(|e| SfuError::Sdp(e.to_string()))?;
            rtc.add_local_candidate(c);
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SfuError::Sdp(e.to_string()))?;
        let peer = Peer {
            id: id.to_string(),
            rtc,
            remote_ufrag: ufrag(sdp),
            ready: true,
            pending: None,
            outputs: BTreeMap::new(),
            ssrcs: HashMap::new(),
            estimate_bps: INITIAL_ESTIMATE_BPS,
            budget: Budget::new(INITIAL_ESTIMATE_BPS),
            probe: ProbePacer::default(),
            reselect: true,
            addrs: Vec::new(),
            dirty: true,
            wake: now,
        };
        Ok((peer, answer.to_sdp_string()))
    }

    /// Whether `sdp` comes from the same `RTCPeerConnection` as the first offer.
    pub fn same_connection(&self, sdp: &str) -> bool {
        ufrag(sdp) == self.remote_ufrag
    }

    /// A renegotiation offer from the client.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, SfuError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| SfuError::Sdp(e.to_string()))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SfuError::Sdp(e.to_string()))?;
        if self.pending.take().is_some() {
            // our own offer is void now: offer its changes again
            for out in self.outputs.values_mut() {
                out.state = match out.state {
                    OutState::Negotiating(_) => OutState::ToOpen,
                    OutState::NegotiatingStop(m) => OutState::ToStop(m),
                    s => s,
                };
            }
        }
        Ok(answer.to_sdp_string())
    }

    /// The client's answer to the SFU's offer.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), SfuError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| SfuError::Sdp(e.to_string()))?;
        let Some(pending) = self.pending.take() else {
            return Err(SfuError::Sdp("an answer without an offer".into()));
        };
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| SfuError::Sdp(e.to_string()))?;
        for out in self.outputs.values_mut() {
            if let OutState::Negotiating(m) = out.state {
                out.state = OutState::Open(m);
            }
        }
        self.outputs
            .retain(|_, o| !matches!(o.state, OutState::NegotiatingStop(_)));
        // tracks just opened can be forwarded: choose their layers now, not at the next tick
        self.reselect = true;
        Ok(())
    }

    /// Start sending `track` (negotiated at the next offer).
    pub fn add_output(&mut self, track: &TrackKey, kind: MediaKind) {
        let clock = if kind == MediaKind::Audio {
            48_000
        } else {
            90_000
        };
        self.outputs.entry(track.clone()).or_insert(OutTrack {
            kind,
            state: OutState::ToOpen,
            rewriter: RtpRewriter::new(clock),
            seq: SeqExtender::default(),
        });
    }

    /// Stop sending every track of `publisher`.
    pub fn remove_outputs_of(&mut self, publisher: &str) {
        self.outputs.retain(|k, o| {
            if k.publisher != publisher {
                return true;
            }
            match o.state {
                OutState::ToOpen => false,
                OutState::Negotiating(m) | OutState::Open(m) => {
                    o.state = OutState::ToStop(m);
                    true
                }
                OutState::ToStop(_) | OutState::NegotiatingStop(_) => true,
            }
        });
    }

    /// An SDP offer carrying the pending changes, if any and if the SFU may offer now.
    pub fn negotiate(&mut self) -> Option<String> {
        // not before the connection is up: a client still starting ICE from our answer can take
        // an offer arriving now for an ICE restart (webrtc-rs does), and answers with new
        // credentials
        if !self.ready || self.pending.is_some() || !self.rtc.is_connected() {
            return None;
        }
        let wanted = self
            .outputs
            .values()
            .any(|o| matches!(o.state, OutState::ToOpen | OutState::ToStop(_)));
        if !wanted {
            return None;
        }
        let mut change = self.rtc.sdp_api();
        for (key, out) in self.outputs.iter_mut() {
            match out.state {
                OutState::ToOpen => {
                    let mid = change.add_media(
                        out.kind,
                        Direction::SendOnly,
                        Some(key.publisher.clone()),
                        Some(format!("{}-{}", key.publisher, key.track)),
                        None,
                    );
                    out.state = OutState::Negotiating(mid);
                }
                OutState::ToStop(mid) => {
                    change.stop_media(mid);
                    out.state = OutState::NegotiatingStop(mid);
                }
                _ => {}
            }
        }
        if !change.has_changes() {
            return None;
        }
        let (offer, pending) = change.apply()?;
        self.pending = Some(pending);
        Some(offer.to_sdp_string())
    }

    /// The (mid, rid) an incoming SSRC belongs to.
    pub fn source_of(&mut self, ssrc: Ssrc) -> Option<(Mid, Option<Rid>)> {
        if let Some(v) = self.ssrcs.get(&ssrc) {
            return Some(*v);
        }
        let mut api = self.rtc.direct_api();
        let s = api.stream_rx(&ssrc)?;
        let v = (s.mid(), s.rid());
        self.ssrcs.insert(ssrc, v);
        Some(v)
    }

    /// The outgoing track negotiated on `mid`.
    pub fn output_on(&self, mid: Mid) -> Option<&TrackKey> {
        self.outputs
            .iter()
            .find(|(_, o)| o.state == OutState::Open(mid))
            .map(|(k, _)| k)
    }
}
