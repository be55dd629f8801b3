//! The data plane: Send indications and ChannelData from clients to peers, datagrams from
//! peers back to their client — within permissions, channels and the bandwidth quota.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Dropped, FiveTuple, Out, Transport, TurnCore};
use crate::stun::{attr, channel_data, method, Builder, Class, Message};

impl TurnCore {
    pub(super) fn send_indication(
        &mut self,
        five: FiveTuple,
        m: &Message,
        now: Instant,
    ) -> Vec<Out> {
        let (Some(peer), Some(data)) = (m.xor_address(attr::XOR_PEER_ADDRESS), m.get(attr::DATA))
        else {
            return Vec::new();
        };
        let limit = self.limits.bandwidth_bps;
        let Some(a) = self.allocations.get_mut(&five) else {
            return vec![Out::Dropped(Dropped::NoAllocation)];
        };
        // silently dropped (RFC 8656 §11.2), counted
        if !a.permitted(peer.ip(), now) {
            return vec![Out::Dropped(Dropped::NoPermission)];
        }
        if !a.spend(data.len(), limit, now) {
            return vec![Out::Dropped(Dropped::Bandwidth)];
        }
        vec![Out::Peer {
            relay: a.relay,
            peer,
            data: data.to_vec(),
        }]
    }

    pub(super) fn channel_data(
        &mut self,
        five: FiveTuple,
        channel: u16,
        payload: &[u8],
        now: Instant,
    ) -> Vec<Out> {
        let limit = self.limits.bandwidth_bps;
        let Some(a) = self.allocations.get_mut(&five) else {
            return vec![Out::Dropped(Dropped::NoAllocation)];
        };
        let Some((peer, _)) = a.channels.get(&channel).copied().filter(|c| c.1 > now) else {
            return vec![Out::Dropped(Dropped::NoChannel)];
        };
        if !a.permitted(peer.ip(), now) {
            return vec![Out::Dropped(Dropped::NoPermission)];
        }
        if !a.spend(payload.len(), limit, now) {
            return vec![Out::Dropped(Dropped::Bandwidth)];
        }
        vec![Out::Peer {
            relay: a.relay,
            peer,
            data: payload.to_vec(),
        }]
    }

    /// A datagram from `peer` arrived on relay address `relay`: what goes to the client.
    pub fn peer(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Option<Out> {
        let Some(five) = self.by_relay.get(&relay).copied() else {
            return Some(Out::Dropped(Dropped::NoAllocation));
        };
        let limit = self.limits.bandwidth_bps;
        let Some(a) = self.allocations.get_mut(&five) else {
            return Some(Out::Dropped(Dropped::NoAllocation));
        };
        if !a.permitted(peer.ip(), now) {
            return Some(Out::Dropped(Dropped::NoPermission));
        }
        if !a.spend(data.len(), limit, now) {
            return Some(Out::Dropped(Dropped::Bandwidth));
        }
        let streamed = five.transport != Transport::Udp;
        let bytes = match a.channel_of.get(&peer) {
            Some(c) if a.channels.get(c).is_some_and(|(_, until)| *until > now) => {
                channel_data(*c, data, streamed)
            }
            _ => {
                let mut tid = [0u8; 12];
                // indications need no matching: a transaction id from the time and peer
                let seed =
                    now.elapsed().as_nanos() as u64 ^ u64::from(peer.port()) ^ data.len() as u64;
                tid[..8].copy_from_slice(&seed.to_be_bytes());
                Builder::new(method::DATA, Class::Indication, tid)
                    .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
                    .add(attr::DATA, data)
                    .build()
            }
        };
        Some(Out::Client(five, bytes))
    }
}
