//! One participant's connection to the SFU: its `str0m::Rtc` (RTP mode: packets are forwarded,
//! never depacketised), what it publishes, the other participants' tracks it receives, and
//! the SDP negotiation that adds and removes those. The client offers once (its own tracks);
//! after that only the SFU offers, so the two never collide.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid};
use str0m::net::TcpType;
use str0m::rtp::Ssrc;
use str0m::{Candidate, Rtc};

use super::codec::SeqExtender;
use super::SfuError;
use crate::bandwidth::{Budget, ProbePacer};
use crate::forwarding::{RtpRewriter, TrackKey};

/// How often str0m reports a peer's media statistics (the subscribers' reported losses).
const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

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
    /// The publisher's payload type last forwarded and this peer's for the same codec
    /// (str0m's `match_params` scores every codec this peer has: once per packet was ~1 % of
    /// the SFU's CPU).
    pub pt: Option<(Pt, Pt)>,
}

/// `sdp` with the spaces and tabs at the end of each line removed. webrtc-rs writes a
/// feedback without a parameter as `a=rtcp-fb:96 transport-cc ` (its format string puts a
/// space before the empty parameter); str0m reads that value with the space and takes the
/// codec for one without transport-wide feedback, so it never sent bandwidth probes on that
/// client's video streams but on its SSRC 0 fallback, which webrtc-rs drops unacknowledged:
/// each probe counted as loss, and a subscriber's estimate crept up instead of jumping (a lifted
/// 400 kbit/s cap took 6-20 s to find). Trailing whitespace carries no meaning in SDP.
pub fn trim_sdp_lines(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.lines() {
        out.push_str(line.trim_end_matches([' ', '\t', '\r']));
        out.push_str("\r\n");
    }
    out
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
    /// Packets lost on each outgoing stream as the subscriber last reported them (cumulative).
    pub reported_lost: HashMap<Mid, u64>,
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
        let offer = SdpOffer::from_sdp_string(&trim_sdp_lines(sdp))
            .map_err(|e| SfuError::Sdp(e.to_string()))?;
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
            .enable_bwe(Some(Bitrate::bps(INITIAL_ESTIMATE_BPS)))
            .set_stats_interval(Some(STATS_INTERVAL))
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
            reported_lost: HashMap::new(),
        };
        Ok((peer, answer.to_sdp_string()))
    }

    /// The subscriber's cumulative loss report for the stream `mid`: how many packets it adds
    /// to the last report.
    pub fn lost_reported(&mut self, mid: Mid, cumulative: u64) -> u64 {
        let before = self.reported_lost.insert(mid, cumulative).unwrap_or(0);
        cumulative.saturating_sub(before)
    }

    /// Whether `sdp` comes from the same `RTCPeerConnection` as the first offer.
    pub fn same_connection(&self, sdp: &str) -> bool {
        ufrag(sdp) == self.remote_ufrag
    }

    /// A renegotiation offer from the client.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, SfuError> {
        let offer = SdpOffer::from_sdp_string(&trim_sdp_lines(sdp))
            .map_err(|e| SfuError::Sdp(e.to_string()))?;
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
        let answer = SdpAnswer::from_sdp_string(&trim_sdp_lines(sdp))
            .map_err(|e| SfuError::Sdp(e.to_string()))?;
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
        // stopped streams go, with the loss last reported on them
        let reported_lost = &mut self.reported_lost;
        self.outputs.retain(|_, o| match o.state {
            OutState::NegotiatingStop(mid) => {
                reported_lost.remove(&mid);
                false
            }
            _ => true,
        });
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
            pt: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer as webrtc-rs 0.17 writes it (the bots'), trailing spaces included.
    const WEBRTC_RS_OFFER: &str = "v=0\r\no=- 2470870231819380759 981998972 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
a=fingerprint:sha-256 F6:3D:E0:3C:1D:8B:9D:48:F9:70:E7:7F:E5:42:52:79:52:80:AB:63:99:01:D0:6B:E4:BD:BE:0F:D1:5B:80:59\r\n\
a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=setup:actpass\r\na=mid:0\r\n\
a=ice-ufrag:edUkHDBRfdYjRNZB\r\na=ice-pwd:jHdSaDrojrIsofkQEyjaWdBfsKodrLxo\r\na=rtcp-mux\r\na=rtcp-rsize\r\n\
a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=rtcp-fb:111 transport-cc \r\n\
a=extmap:2 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=ssrc:3339555345 cname:pub-1\r\na=msid:pub-1 audio\r\na=sendonly\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=setup:actpass\r\na=mid:1\r\n\
a=ice-ufrag:edUkHDBRfdYjRNZB\r\na=ice-pwd:jHdSaDrojrIsofkQEyjaWdBfsKodrLxo\r\na=rtcp-mux\r\na=rtcp-rsize\r\n\
a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 transport-cc \r\na=rtcp-fb:96 goog-remb \r\na=rtcp-fb:96 ccm fir\r\n\
a=rtcp-fb:96 nack \r\na=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=extmap:2 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=ssrc:3434927387 cname:pub-1\r\na=msid:pub-1 video\r\na=sendonly\r\n";

    fn vp8_has_transport_cc(offer: &str) -> bool {
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(Instant::now());
        let offer = SdpOffer::from_sdp_string(offer).expect("offer");
        rtc.sdp_api().accept_offer(offer).expect("answer");
        rtc.codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == str0m::format::Codec::Vp8)
            .is_some_and(|p| p.fb_transport_cc())
    }

    #[test]
    fn transport_wide_feedback_is_read_from_a_webrtc_rs_offer_once_lines_are_trimmed() {
        assert!(
            !vp8_has_transport_cc(WEBRTC_RS_OFFER),
            "str0m reads `transport-cc ` as another feedback (if it learns to trim, drop trim_sdp_lines)"
        );
        assert!(vp8_has_transport_cc(&trim_sdp_lines(WEBRTC_RS_OFFER)));
    }

    #[test]
    fn trimming_keeps_every_line_and_ends_each_with_crlf() {
        assert_eq!(
            trim_sdp_lines("v=0\na=rtcp-fb:96 transport-cc \r\na=x\t\r\n"),
            "v=0\r\na=rtcp-fb:96 transport-cc\r\na=x\r\n"
        );
        assert_eq!(trim_sdp_lines(""), "");
    }
}
