//! The TURN server's state as a pure core (time passed in, no sockets): authentication,
//! allocations with their permissions, channels, lifetimes and quotas, and the peer filter.
//! The shell feeds it what clients and peers send and carries out what it returns: requests
//! in [`requests`] (the control plane), relayed data in [`data`].

mod data;
mod requests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::auth::Credentials;
use crate::filter::PeerFilter;
use crate::stun::{attr, method, parse_channel_data, Builder, Class, Message};

/// How a client reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

/// A client's 5-tuple (the transport fixes the protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// The client's address.
    pub client: SocketAddr,
    /// The server address it reached.
    pub server: SocketAddr,
    /// UDP, TCP or TLS.
    pub transport: Transport,
}

/// Limits and timings.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Allocations one user may hold.
    pub per_user: usize,
    /// Allocations in total.
    pub total: usize,
    /// Relayed bytes per second one allocation may use (both directions); 0: no limit.
    pub bandwidth_bps: u64,
    /// Lifetime given when the client asks for none.
    pub default_lifetime: Duration,
    /// Longest lifetime given.
    pub max_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_user: 10,
            total: 1000,
            bandwidth_bps: 0,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
        }
    }
}

const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
const SOFTWARE: &[u8] = b"tidecast turn";
const KNOWN: &[u16] = &[
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::CHANNEL_NUMBER,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::REALM,
    attr::NONCE,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::REQUESTED_TRANSPORT,
    attr::DONT_FRAGMENT,
    attr::EVEN_PORT,
    attr::RESERVATION_TOKEN,
    attr::FINGERPRINT,
    attr::SOFTWARE,
];

/// Why a request was refused, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refused {
    /// 401: no, wrong or expired credentials.
    Unauthorized,
    /// 438: stale nonce.
    StaleNonce,
    /// 403: peer address not allowed.
    Forbidden,
    /// 486: quota.
    Quota,
    /// 437: allocation mismatch.
    Mismatch,
    /// 400 / 420 / 442 / 440 / 508: malformed or unsupported.
    BadRequest,
}

impl Refused {
    /// Every reason, for metric series made at start.
    pub const ALL: [Refused; 6] = [
        Refused::Unauthorized,
        Refused::StaleNonce,
        Refused::Forbidden,
        Refused::Quota,
        Refused::Mismatch,
        Refused::BadRequest,
    ];

    /// Label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Unauthorized => "unauthorized",
            Refused::StaleNonce => "stale_nonce",
            Refused::Forbidden => "forbidden_peer",
            Refused::Quota => "quota",
            Refused::Mismatch => "allocation_mismatch",
            Refused::BadRequest => "bad_request",
        }
    }
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Send these bytes to the client on its 5-tuple.
    Client(FiveTuple, Vec<u8>),
    /// Send `data` from relay address `relay` to `peer`.
    Peer {
        /// The allocation's relayed address (which socket).
        relay: SocketAddr,
        /// Where to.
        peer: SocketAddr,
        /// The payload.
        data: Vec<u8>,
    },
    /// Bind a relay socket (IPv6 when `ipv6`) and call [`TurnCore::allocated`] with it.
    Bind(PendingAllocation),
    /// The allocation on this relayed address ended: close its socket.
    Release(SocketAddr),
    /// A request was refused (for metrics and logs).
    Refused(Refused, FiveTuple),
    /// Data that could not be relayed was dropped (RFC 8656 drops it silently; for metrics).
    Dropped(Dropped),
}

/// Why relayed data was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// No allocation on that 5-tuple or relayed address.
    NoAllocation,
    /// ChannelData on a channel not bound (or expired).
    NoChannel,
    /// No permission for the peer's address.
    NoPermission,
    /// Over the allocation's bandwidth quota.
    Bandwidth,
    /// From a client, neither a STUN message nor ChannelData.
    Malformed,
}

impl Dropped {
    /// Label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Dropped::NoAllocation => "no_allocation",
            Dropped::NoChannel => "no_channel",
            Dropped::NoPermission => "no_permission",
            Dropped::Bandwidth => "bandwidth",
            Dropped::Malformed => "malformed",
        }
    }
}

/// An authorised Allocate waiting for its relay socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAllocation {
    /// The client.
    pub five: FiveTuple,
    /// An IPv6 relay wanted.
    pub ipv6: bool,
    /// An even port wanted (EVEN-PORT).
    pub even: bool,
    transaction: [u8; 12],
    user: String,
    key: [u8; 16],
    lifetime: Duration,
    credentials_expire_unix: u64,
}

struct Allocation {
    user: String,
    relay: SocketAddr,
    transaction: [u8; 12],
    expires: Instant,
    credentials_expire_unix: u64,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    channel_of: HashMap<SocketAddr, u16>,
    /// bytes relayed in the current second and when it began
    window: (Instant, u64),
}

impl Allocation {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|t| *t > now)
    }

    /// Within the bandwidth quota (counting `bytes`)?
    fn spend(&mut self, bytes: usize, limit_bps: u64, now: Instant) -> bool {
        if limit_bps == 0 {
            return true;
        }
        if now.saturating_duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        self.window.1 += bytes as u64;
        self.window.1 * 8 <= limit_bps
    }
}

/// See the module docs.
pub struct TurnCore {
    credentials: Credentials,
    filter: PeerFilter,
    limits: Limits,
    allocations: HashMap<FiveTuple, Allocation>,
    by_relay: HashMap<SocketAddr, FiveTuple>,
    pending: usize,
    /// the relay address family (what REQUESTED-ADDRESS-FAMILY may ask for)
    relay_ipv6: bool,
}

fn error(m: &Message, code: u16, reason: &str) -> Builder {
    Builder::new(m.method, Class::Error, m.transaction)
        .add_error(code, reason)
        .add(attr::SOFTWARE, SOFTWARE)
}

impl TurnCore {
    /// A core with these credentials, peer filter and limits.
    pub fn new(credentials: Credentials, filter: PeerFilter, limits: Limits) -> TurnCore {
        TurnCore {
            credentials,
            filter,
            limits,
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            pending: 0,
            relay_ipv6: false,
        }
    }

    /// Relays are IPv6 (IPv4 by default): requests for the other family get 440.
    pub fn with_ipv6_relays(mut self, ipv6: bool) -> TurnCore {
        self.relay_ipv6 = ipv6;
        self
    }

    /// Allocations now.
    pub fn allocations(&self) -> usize {
        self.allocations.len()
    }

    /// A datagram (or stream frame) from a client.
    pub fn client(&mut self, five: FiveTuple, data: &[u8], now: Instant, unix: u64) -> Vec<Out> {
        if let Some((channel, payload)) = parse_channel_data(data) {
            return self.channel_data(five, channel, payload, now);
        }
        let Ok(m) = Message::parse(data) else {
            return vec![Out::Dropped(Dropped::Malformed)]; // neither STUN nor ChannelData
        };
        match (m.class, m.method) {
            (Class::Request, method::BINDING) => {
                let reply = Builder::new(method::BINDING, Class::Success, m.transaction)
                    .add_xor_address(attr::XOR_MAPPED_ADDRESS, five.client)
                    .add(attr::SOFTWARE, SOFTWARE)
                    .fingerprint();
                vec![Out::Client(five, reply)]
            }
            (Class::Indication, method::SEND) => self.send_indication(five, &m, now),
            (
                Class::Request,
                method::ALLOCATE
                | method::REFRESH
                | method::CREATE_PERMISSION
                | method::CHANNEL_BIND,
            ) => {
                let unknown = m.unknown_required(KNOWN);
                if !unknown.is_empty() {
                    let mut list = Vec::new();
                    for t in unknown {
                        list.extend_from_slice(&t.to_be_bytes());
                    }
                    let reply = error(&m, 420, "Unknown Attribute")
                        .add(attr::UNKNOWN_ATTRIBUTES, &list)
                        .fingerprint();
                    return vec![
                        Out::Client(five, reply),
                        Out::Refused(Refused::BadRequest, five),
                    ];
                }
                let (user, key, expires_unix) = match self.authenticate(five, &m, unix) {
                    Ok(v) => v,
                    Err(out) => return out,
                };
                match m.method {
                    method::ALLOCATE => self.allocate(five, &m, user, key, expires_unix),
                    method::REFRESH => self.refresh(five, &m, &key, now),
                    method::CREATE_PERMISSION => self.create_permission(five, &m, &key, now),
                    _ => self.channel_bind(five, &m, &key, now),
                }
            }
            _ => Vec::new(), // responses and other indications: ignored
        }
    }

    /// Expire what is due: allocations past their lifetime or credentials (released),
    /// permissions and channels past theirs.
    pub fn expire(&mut self, now: Instant, unix: u64) -> Vec<Out> {
        let mut out = Vec::new();
        let ended: Vec<FiveTuple> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now || a.credentials_expire_unix <= unix)
            .map(|(k, _)| *k)
            .collect();
        for five in ended {
            if let Some(a) = self.allocations.remove(&five) {
                self.by_relay.remove(&a.relay);
                out.push(Out::Release(a.relay));
            }
        }
        for a in self.allocations.values_mut() {
            a.permissions.retain(|_, t| *t > now);
            let stale: Vec<(u16, SocketAddr)> = a
                .channels
                .iter()
                .filter(|(_, (_, t))| *t <= now)
                .map(|(c, (p, _))| (*c, *p))
                .collect();
            for (c, p) in stale {
                a.channels.remove(&c);
                a.channel_of.remove(&p);
            }
        }
        out
    }

    /// The client's connection closed (TCP/TLS): its allocation ends.
    pub fn closed(&mut self, five: FiveTuple) -> Vec<Out> {
        match self.allocations.remove(&five) {
            Some(a) => {
                self.by_relay.remove(&a.relay);
                vec![Out::Release(a.relay)]
            }
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Cidr;
    use crate::stun::channel_data;

    const UNIX: u64 = 1_800_000_000;

    struct Client {
        five: FiveTuple,
        user: String,
        key: [u8; 16],
        nonce: String,
        realm: String,
        n: u8,
    }

    impl Client {
        fn new(core: &mut TurnCore, creds: &Credentials, ttl: u64, now: Instant) -> Client {
            let five = FiveTuple {
                client: "198.51.100.9:50000".parse().unwrap(),
                server: "192.0.2.1:3478".parse().unwrap(),
                transport: Transport::Udp,
            };
            // unauthenticated first: a challenge with realm and nonce
            let req = Builder::new(method::ALLOCATE, Class::Request, [9; 12])
                .add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .fingerprint();
            let out = core.client(five, &req, now, UNIX);
            let Out::Client(_, bytes) = &out[0] else {
                panic!("{out:?}")
            };
            let m = Message::parse(bytes).unwrap();
            assert_eq!(m.get(attr::ERROR_CODE).unwrap()[2..4], [4, 1]);
            let (user, _) = creds.mint("alice", UNIX, ttl);
            Client {
                five,
                key: creds.key(&user),
                user,
                nonce: m.text(attr::NONCE).unwrap().to_string(),
                realm: m.text(attr::REALM).unwrap().to_string(),
                n: 0,
            }
        }

        fn request(&mut self, method: u16, add: impl FnOnce(Builder) -> Builder) -> Vec<u8> {
            self.n += 1;
            let b = Builder::new(method, Class::Request, [self.n; 12])
                .add(attr::USERNAME, self.user.as_bytes())
                .add(attr::REALM, self.realm.as_bytes())
                .add(attr::NONCE, self.nonce.as_bytes());
            add(b).integrity(&self.key).fingerprint()
        }
    }

    fn code(out: &[Out]) -> Option<u16> {
        let Some(Out::Client(_, bytes)) = out.first() else {
            return None;
        };
        let m = Message::parse(bytes).ok()?;
        let v = m.get(attr::ERROR_CODE)?;
        Some(u16::from(v[2]) * 100 + u16::from(v[3]))
    }

    fn setup(limits: Limits) -> (TurnCore, Credentials, Instant) {
        let creds = Credentials::new("secret", "tidecast");
        let core = TurnCore::new(
            creds.clone(),
            PeerFilter::new(vec![Cidr::parse("10.9.0.0/16").unwrap()]),
            limits,
        );
        (core, creds, Instant::now())
    }

    fn allocate(core: &mut TurnCore, c: &mut Client, now: Instant) -> SocketAddr {
        let req = c.request(method::ALLOCATE, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        });
        let out = core.client(c.five, &req, now, UNIX);
        let Some(Out::Bind(p)) = out.into_iter().next() else {
            panic!("no bind")
        };
        let relay: SocketAddr = "192.0.2.1:49152".parse().unwrap();
        let out = core.allocated(p, Some(relay), now);
        let Out::Client(_, bytes) = &out[0] else {
            panic!()
        };
        let m = Message::parse(bytes).unwrap();
        assert!(m.integrity_ok(&c.key));
        assert_eq!(m.xor_address(attr::XOR_RELAYED_ADDRESS), Some(relay));
        relay
    }

    #[test]
    fn allocate_permit_relay_both_ways_and_channels() {
        let (mut core, creds, now) = setup(Limits::default());
        let mut c = Client::new(&mut core, &creds, 600, now);
        let relay = allocate(&mut core, &mut c, now);
        let peer: SocketAddr = "203.0.114.5:7000".parse().unwrap();
        // no permission yet: a peer's datagram is dropped
        assert_eq!(
            core.peer(relay, peer, b"x", now),
            Some(Out::Dropped(Dropped::NoPermission))
        );
        // ChannelData on a channel never bound is dropped
        assert_eq!(
            core.client(c.five, &channel_data(0x4001, b"early", false), now, UNIX),
            vec![Out::Dropped(Dropped::NoChannel)]
        );
        let req = c.request(method::CREATE_PERMISSION, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        });
        assert_eq!(code(&core.client(c.five, &req, now, UNIX)), None);
        let send = Builder::new(method::SEND, Class::Indication, [7; 12])
            .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            .add(attr::DATA, b"hello")
            .build();
        assert_eq!(
            core.client(c.five, &send, now, UNIX),
            vec![Out::Peer {
                relay,
                peer,
                data: b"hello".to_vec()
            }]
        );
        let Some(Out::Client(_, data)) = core.peer(relay, peer, b"back", now) else {
            panic!()
        };
        let m = Message::parse(&data).unwrap();
        assert_eq!(
            (m.method, m.get(attr::DATA)),
            (method::DATA, Some(&b"back"[..]))
        );
        // a channel: ChannelData both ways
        let req = c.request(method::CHANNEL_BIND, |b| {
            b.add(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0])
                .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        });
        assert_eq!(code(&core.client(c.five, &req, now, UNIX)), None);
        assert_eq!(
            core.client(c.five, &channel_data(0x4001, b"ch", false), now, UNIX),
            vec![Out::Peer {
                relay,
                peer,
                data: b"ch".to_vec()
            }]
        );
        assert_eq!(
            core.peer(relay, peer, b"in", now),
            Some(Out::Client(c.five, channel_data(0x4001, b"in", false)))
        );
        // permissions lapse after 5 minutes without refresh
        let later = now + Duration::from_secs(301);
        core.expire(later, UNIX + 301);
        assert_eq!(
            core.peer(relay, peer, b"late", later),
            Some(Out::Dropped(Dropped::NoPermission))
        );
        // refresh with lifetime 0 ends it
        let req = c.request(method::REFRESH, |b| b.add_u32(attr::LIFETIME, 0));
        let out = core.client(c.five, &req, now, UNIX);
        assert!(out.contains(&Out::Release(relay)));
        assert_eq!(core.allocations(), 0);
    }

    #[test]
    fn internal_peers_are_forbidden_unless_allow_listed() {
        let (mut core, creds, now) = setup(Limits::default());
        let mut c = Client::new(&mut core, &creds, 600, now);
        allocate(&mut core, &mut c, now);
        for bad in [
            "127.0.0.1:9",
            "10.0.0.1:9",
            "169.254.169.254:80",
            "100.64.1.1:9",
        ] {
            let peer: SocketAddr = bad.parse().unwrap();
            let req = c.request(method::CREATE_PERMISSION, |b| {
                b.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            });
            let out = core.client(c.five, &req, now, UNIX);
            assert_eq!(code(&out), Some(403), "{bad}");
            assert!(out.contains(&Out::Refused(Refused::Forbidden, c.five)));
            let req = c.request(method::CHANNEL_BIND, |b| {
                b.add(attr::CHANNEL_NUMBER, &[0x40, 0x02, 0, 0])
                    .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            });
            assert_eq!(
                code(&core.client(c.five, &req, now, UNIX)),
                Some(403),
                "{bad}"
            );
        }
        let ok: SocketAddr = "10.9.1.1:9".parse().unwrap();
        let req = c.request(method::CREATE_PERMISSION, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, ok)
        });
        assert_eq!(code(&core.client(c.five, &req, now, UNIX)), None);
    }

    #[test]
    fn malformed_mismatched_and_conflicting_requests_are_refused_with_their_codes() {
        let (mut core, creds, now) = setup(Limits::default());
        let mut c = Client::new(&mut core, &creds, 600, now);
        // Refresh and CreatePermission before any allocation: 437
        let req = c.request(method::REFRESH, |b| b.add_u32(attr::LIFETIME, 600));
        let out = core.client(c.five, &req, now, UNIX);
        assert_eq!(code(&out), Some(437));
        assert!(out.contains(&Out::Refused(Refused::Mismatch, c.five)));
        allocate(&mut core, &mut c, now);
        // a second Allocate on the same 5-tuple (another transaction): 437
        let req = c.request(method::ALLOCATE, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        });
        assert_eq!(code(&core.client(c.five, &req, now, UNIX)), Some(437));
        // no peer address at all: 400
        let req = c.request(method::CREATE_PERMISSION, |b| b);
        let out = core.client(c.five, &req, now, UNIX);
        assert_eq!(code(&out), Some(400));
        assert!(out.contains(&Out::Refused(Refused::BadRequest, c.five)));
        // an IPv6 peer on an IPv4 relay: 443, for permissions and channels alike
        let v6: SocketAddr = "[2606:4700::1111]:7000".parse().unwrap();
        let req = c.request(method::CREATE_PERMISSION, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, v6)
        });
        assert_eq!(code(&core.client(c.five, &req, now, UNIX)), Some(443));
        let bind = |c: &mut Client, channel: u16, peer: SocketAddr| {
            c.request(method::CHANNEL_BIND, |b| {
                let [hi, lo] = channel.to_be_bytes();
                b.add(attr::CHANNEL_NUMBER, &[hi, lo, 0, 0])
                    .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            })
        };
        let req = bind(&mut c, 0x4001, v6);
        assert_eq!(code(&core.client(c.five, &req, now, UNIX)), Some(443));
        // a channel number outside 0x4000-0x7FFF: 400
        let peer: SocketAddr = "203.0.114.5:7000".parse().unwrap();
        let req = bind(&mut c, 0x3FFF, peer);
        assert_eq!(code(&core.client(c.five, &req, now, UNIX)), Some(400));
        // bound once; the same channel to another peer, or the peer to another channel: 400
        let req = bind(&mut c, 0x4001, peer);
        assert_eq!(code(&core.client(c.five, &req, now, UNIX)), None);
        let other: SocketAddr = "203.0.114.6:7000".parse().unwrap();
        let req = bind(&mut c, 0x4001, other);
        assert_eq!(code(&core.client(c.five, &req, now, UNIX)), Some(400));
        let req = bind(&mut c, 0x4002, peer);
        assert_eq!(code(&core.client(c.five, &req, now, UNIX)), Some(400));
        // rebinding the same pair refreshes it
        let req = bind(&mut c, 0x4001, peer);
        assert_eq!(code(&core.client(c.five, &req, now, UNIX)), None);
        // a Refresh is granted its lifetime, authenticated
        let req = c.request(method::REFRESH, |b| b.add_u32(attr::LIFETIME, 600));
        let out = core.client(c.five, &req, now, UNIX);
        let Some(Out::Client(_, bytes)) = out.first() else {
            panic!("{out:?}")
        };
        let m = Message::parse(bytes).unwrap();
        assert!(m.integrity_ok(&c.key));
        assert_eq!(
            (m.class, m.u32(attr::LIFETIME)),
            (Class::Success, Some(600))
        );
    }

    #[test]
    fn expired_or_tampered_credentials_get_401_and_quotas_486() {
        let (mut core, creds, now) = setup(Limits {
            per_user: 1,
            ..Limits::default()
        });
        let mut c = Client::new(&mut core, &creds, 600, now);
        // tampered: integrity with the wrong key
        let mut bad = Client::new(&mut core, &creds, 600, now);
        bad.key = [0; 16];
        let req = bad.request(method::ALLOCATE, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        });
        let out = core.client(bad.five, &req, now, UNIX);
        assert_eq!(code(&out), Some(401));
        assert!(out.contains(&Out::Refused(Refused::Unauthorized, bad.five)));
        // expired: a username whose expiry has passed
        let (user, _) = creds.mint("alice", UNIX - 100, 10);
        let mut old = Client::new(&mut core, &creds, 600, now);
        old.key = creds.key(&user);
        old.user = user;
        let req = old.request(method::ALLOCATE, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        });
        assert_eq!(code(&core.client(old.five, &req, now, UNIX)), Some(401));
        // an IPv6 relay from an IPv4-only server: 440
        let req = c.request(method::ALLOCATE, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .add(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
        });
        assert_eq!(code(&core.client(c.five, &req, now, UNIX)), Some(440));
        // quota: one allocation per user
        allocate(&mut core, &mut c, now);
        let mut second = Client::new(&mut core, &creds, 600, now);
        second.five.client = "198.51.100.9:50001".parse().unwrap();
        let req = second.request(method::ALLOCATE, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        });
        assert_eq!(code(&core.client(second.five, &req, now, UNIX)), Some(486));
        // the allocation ends when its credentials do
        let out = core.expire(now + Duration::from_secs(1), UNIX + 600);
        assert_eq!(out.len(), 1);
        assert_eq!(core.allocations(), 0);
    }
}
