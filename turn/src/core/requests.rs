//! The control plane: authenticating a request with long-term credentials, Allocate (and its
//! relay socket arriving), Refresh, CreatePermission and ChannelBind.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{
    error, Allocation, FiveTuple, Out, PendingAllocation, Refused, TurnCore, CHANNEL_LIFETIME,
    PERMISSION_LIFETIME, SOFTWARE,
};
use crate::auth::username_expiry;
use crate::stun::{attr, method, Builder, Class, Message};

/// The refusals answered here: the error code, its reason phrase, and how it is counted.
type Refusal = (u16, &'static str, Refused);
const BAD_REQUEST: Refusal = (400, "Bad Request", Refused::BadRequest);
const MISMATCH: Refusal = (437, "Allocation Mismatch", Refused::Mismatch);
const FORBIDDEN: Refusal = (403, "Forbidden", Refused::Forbidden);
const FAMILY_MISMATCH: Refusal = (443, "Peer Address Family Mismatch", Refused::BadRequest);

impl TurnCore {
    /// Long-term credentials: the user, key and credential expiry, or the error reply.
    pub(super) fn authenticate(
        &self,
        five: FiveTuple,
        m: &Message,
        unix: u64,
    ) -> Result<(String, [u8; 16], u64), Vec<Out>> {
        let challenge = |code: u16, reason: &str, why: Refused| {
            let reply = error(m, code, reason)
                .add(attr::REALM, self.credentials.realm().as_bytes())
                .add(attr::NONCE, self.credentials.nonce(unix).as_bytes())
                .fingerprint();
            vec![Out::Client(five, reply), Out::Refused(why, five)]
        };
        let (Some(user), Some(nonce), Some(_realm)) = (
            m.text(attr::USERNAME),
            m.text(attr::NONCE),
            m.text(attr::REALM),
        ) else {
            // the first, unauthenticated request: a challenge (not counted as a failure)
            let reply = error(m, 401, "Unauthorized")
                .add(attr::REALM, self.credentials.realm().as_bytes())
                .add(attr::NONCE, self.credentials.nonce(unix).as_bytes())
                .fingerprint();
            return Err(vec![Out::Client(five, reply)]);
        };
        if !self.credentials.nonce_ok(nonce, unix) {
            return Err(challenge(438, "Stale Nonce", Refused::StaleNonce));
        }
        let key = self.credentials.key(user);
        if !m.integrity_ok(&key) {
            return Err(challenge(401, "Unauthorized", Refused::Unauthorized));
        }
        match username_expiry(user) {
            // quotas count per identity (the part after the expiry), whatever the expiry
            Some(expiry) if expiry > unix => {
                let identity = user.split_once(':').map_or(user, |(_, id)| id);
                Ok((identity.to_string(), key, expiry))
            }
            _ => Err(challenge(401, "Credentials expired", Refused::Unauthorized)),
        }
    }

    fn lifetime(&self, m: &Message) -> Duration {
        match m.u32(attr::LIFETIME) {
            Some(s) => Duration::from_secs(u64::from(s))
                .max(self.limits.default_lifetime.min(Duration::from_secs(600)))
                .min(self.limits.max_lifetime),
            None => self.limits.default_lifetime,
        }
    }

    pub(super) fn allocate(
        &mut self,
        five: FiveTuple,
        m: &Message,
        user: String,
        key: [u8; 16],
        credentials_expire_unix: u64,
    ) -> Vec<Out> {
        let fail = |code: u16, reason: &'static str, why: Refused| {
            Self::refuse(five, m, &key, (code, reason, why))
        };
        if let Some(a) = self.allocations.get(&five) {
            if a.transaction == m.transaction {
                // a retransmission of the request that made it: the same answer
                let (relay, lifetime) = (a.relay, self.limits.default_lifetime);
                let reply = Self::allocate_success(five, m.transaction, relay, lifetime, &key);
                return vec![Out::Client(five, reply)];
            }
            return Self::mismatch(five, m, &key);
        }
        match m.get(attr::REQUESTED_TRANSPORT) {
            Some([17, ..]) => {}
            Some(_) => return fail(442, "Unsupported Transport Protocol", Refused::BadRequest),
            None => return Self::refuse(five, m, &key, BAD_REQUEST),
        }
        // EVEN-PORT is honoured; reserving the next port (its R bit, RESERVATION-TOKEN) is not
        // offered, which RFC 8656 §7.2 answers with 508
        let even = match m.get(attr::EVEN_PORT) {
            None => false,
            Some([r, ..]) if r & 0x80 == 0 => true,
            Some(_) => return fail(508, "Insufficient Capacity", Refused::BadRequest),
        };
        if m.get(attr::RESERVATION_TOKEN).is_some() {
            return fail(508, "Insufficient Capacity", Refused::BadRequest);
        }
        let ipv6 = match m.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => self.relay_ipv6,
            Some([1, ..]) => false,
            Some([2, ..]) => true,
            Some(_) => return fail(440, "Address Family not Supported", Refused::BadRequest),
        };
        if ipv6 != self.relay_ipv6 {
            return fail(440, "Address Family not Supported", Refused::BadRequest);
        }
        let mine = self.allocations.values().filter(|a| a.user == user).count();
        if mine >= self.limits.per_user
            || self.allocations.len() + self.pending >= self.limits.total
        {
            return fail(486, "Allocation Quota Reached", Refused::Quota);
        }
        self.pending += 1;
        vec![Out::Bind(PendingAllocation {
            five,
            ipv6,
            even,
            transaction: m.transaction,
            user,
            key,
            lifetime: self.lifetime(m),
            credentials_expire_unix,
        })]
    }

    fn allocate_success(
        five: FiveTuple,
        transaction: [u8; 12],
        relay: SocketAddr,
        lifetime: Duration,
        key: &[u8],
    ) -> Vec<u8> {
        Builder::new(method::ALLOCATE, Class::Success, transaction)
            .add_xor_address(attr::XOR_RELAYED_ADDRESS, relay)
            .add_xor_address(attr::XOR_MAPPED_ADDRESS, five.client)
            .add_u32(attr::LIFETIME, lifetime.as_secs() as u32)
            .add(attr::SOFTWARE, SOFTWARE)
            .integrity(key)
            .fingerprint()
    }

    /// The shell bound (or failed to bind) the relay socket of `p`.
    pub fn allocated(
        &mut self,
        p: PendingAllocation,
        relay: Option<SocketAddr>,
        now: Instant,
    ) -> Vec<Out> {
        self.pending = self.pending.saturating_sub(1);
        let Some(relay) = relay else {
            let reply = Builder::new(method::ALLOCATE, Class::Error, p.transaction)
                .add_error(508, "Insufficient Capacity")
                .integrity(&p.key)
                .fingerprint();
            return vec![
                Out::Client(p.five, reply),
                Out::Refused(Refused::Quota, p.five),
            ];
        };
        self.allocations.insert(
            p.five,
            Allocation {
                user: p.user,
                relay,
                transaction: p.transaction,
                expires: now + p.lifetime,
                credentials_expire_unix: p.credentials_expire_unix,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                channel_of: HashMap::new(),
                window: (now, 0),
            },
        );
        self.by_relay.insert(relay, p.five);
        let reply = Self::allocate_success(p.five, p.transaction, relay, p.lifetime, &p.key);
        vec![Out::Client(p.five, reply)]
    }

    fn mismatch(five: FiveTuple, m: &Message, key: &[u8]) -> Vec<Out> {
        Self::refuse(five, m, key, MISMATCH)
    }

    /// An authenticated error answering `m`, and the refusal counted as `why`.
    fn refuse(five: FiveTuple, m: &Message, key: &[u8], (code, reason, why): Refusal) -> Vec<Out> {
        vec![
            Out::Client(five, error(m, code, reason).integrity(key).fingerprint()),
            Out::Refused(why, five),
        ]
    }

    /// A success without attributes answering `m` (CreatePermission, ChannelBind).
    fn success(five: FiveTuple, method: u16, m: &Message, key: &[u8]) -> Vec<Out> {
        let reply = Builder::new(method, Class::Success, m.transaction)
            .integrity(key)
            .fingerprint();
        vec![Out::Client(five, reply)]
    }

    pub(super) fn refresh(
        &mut self,
        five: FiveTuple,
        m: &Message,
        key: &[u8],
        now: Instant,
    ) -> Vec<Out> {
        let requested = m.u32(attr::LIFETIME);
        let lifetime = self.lifetime(m);
        let Some(a) = self.allocations.get_mut(&five) else {
            return Self::mismatch(five, m, key);
        };
        if requested == Some(0) {
            let relay = a.relay;
            self.allocations.remove(&five);
            self.by_relay.remove(&relay);
            return vec![
                Out::Client(five, Self::refresh_success(m, 0, key)),
                Out::Release(relay),
            ];
        }
        a.expires = now + lifetime;
        let seconds = lifetime.as_secs() as u32;
        vec![Out::Client(five, Self::refresh_success(m, seconds, key))]
    }

    /// A Refresh success answering `m`, granting `seconds` (0: the allocation is released).
    fn refresh_success(m: &Message, seconds: u32, key: &[u8]) -> Vec<u8> {
        Builder::new(method::REFRESH, Class::Success, m.transaction)
            .add_u32(attr::LIFETIME, seconds)
            .integrity(key)
            .fingerprint()
    }

    pub(super) fn create_permission(
        &mut self,
        five: FiveTuple,
        m: &Message,
        key: &[u8],
        now: Instant,
    ) -> Vec<Out> {
        let peers = m.xor_addresses(attr::XOR_PEER_ADDRESS);
        let Some(a) = self.allocations.get_mut(&five) else {
            return Self::mismatch(five, m, key);
        };
        if peers.is_empty() || peers.iter().any(Option::is_none) {
            return Self::refuse(five, m, key, BAD_REQUEST);
        }
        let peers: Vec<SocketAddr> = peers.into_iter().flatten().collect();
        // the filter first: an internal address is refused as such in whatever family
        let forbidden = peers.iter().any(|p| self.filter.check(p.ip()).is_err());
        if forbidden {
            return Self::refuse(five, m, key, FORBIDDEN);
        }
        if peers.iter().any(|p| p.is_ipv4() != a.relay.is_ipv4()) {
            return Self::refuse(five, m, key, FAMILY_MISMATCH);
        }
        for p in peers {
            a.permissions.insert(p.ip(), now + PERMISSION_LIFETIME);
        }
        Self::success(five, method::CREATE_PERMISSION, m, key)
    }

    pub(super) fn channel_bind(
        &mut self,
        five: FiveTuple,
        m: &Message,
        key: &[u8],
        now: Instant,
    ) -> Vec<Out> {
        let bad = |refusal| Self::refuse(five, m, key, refusal);
        let channel = m
            .get(attr::CHANNEL_NUMBER)
            .and_then(|v| Some(u16::from_be_bytes([*v.first()?, *v.get(1)?])));
        let (Some(channel), Some(peer)) = (channel, m.xor_address(attr::XOR_PEER_ADDRESS)) else {
            return bad(BAD_REQUEST);
        };
        // RFC 8656 uses 0x4000-0x4FFF; RFC 5766 clients (coturn's among them) pick up to 0x7FFF
        if !(0x4000..=0x7FFF).contains(&channel) {
            return bad(BAD_REQUEST);
        }
        let Some(a) = self.allocations.get_mut(&five) else {
            return Self::mismatch(five, m, key);
        };
        if self.filter.check(peer.ip()).is_err() {
            return bad(FORBIDDEN);
        }
        if peer.is_ipv4() != a.relay.is_ipv4() {
            return bad(FAMILY_MISMATCH);
        }
        // a channel is bound to one peer, a peer to one channel
        let taken = a.channels.get(&channel).is_some_and(|(p, _)| *p != peer)
            || a.channel_of.get(&peer).is_some_and(|c| *c != channel);
        if taken {
            return bad(BAD_REQUEST);
        }
        a.channels.insert(channel, (peer, now + CHANNEL_LIFETIME));
        a.channel_of.insert(peer, channel);
        a.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        Self::success(five, method::CHANNEL_BIND, m, key)
    }
}
