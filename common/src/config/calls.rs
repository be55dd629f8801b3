//! The calls half's sections: `[turn]` (STUN/TURN) and `[rooms]` (signaling, SFU, nodes,
//! recording, restream).

use serde::Deserialize;

/// STUN/TURN server settings (`tidecast turn`, part of `tidecast all`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// STUN/TURN over UDP (`ip:port`; empty: off).
    pub listen_udp: String,
    /// STUN/TURN over TCP (empty: off).
    pub listen_tcp: String,
    /// TURN over TLS (`turns:`; empty: off).
    pub listen_tls: String,
    /// PEM certificate chain for TLS (empty: a self-signed one made at start, for development).
    pub tls_cert: String,
    /// PEM private key for TLS.
    pub tls_key: String,
    /// Realm of the long-term credentials.
    pub realm: String,
    /// TURN REST API shared secret: usernames `expiry:identity`, passwords
    /// base64(HMAC-SHA1(secret, username)). Empty = development mode: a random secret made at
    /// start, known to the rooms node in the same process only (logged as a warning).
    pub secret: String,
    /// Peers relays may reach although internal (CIDR, e.g. the deployment's SFU `10.0.0.5/32`).
    /// Empty: none — loopback, private, CGNAT, link-local, multicast and reserved ranges are
    /// refused with 403.
    pub allowed_peers: Vec<String>,
    /// Relay ports, `low-high`.
    pub relay_ports: String,
    /// The address relays bind and announce (empty: the listen address, or for 0.0.0.0 the
    /// default route's address, else 127.0.0.1).
    pub relay_address: String,
    /// Allocations one user (credential identity) may hold.
    pub max_allocations_per_user: usize,
    /// Allocations in total.
    pub max_allocations: usize,
    /// Relayed bandwidth per allocation, kbit/s (0: no limit).
    pub bandwidth_kbps: u64,
    /// Lifetime of the credentials rooms hand out, seconds (allocations end with them).
    pub credential_ttl_secs: u64,
    /// The `turn:`/`stun:` host rooms tell clients (empty: the relay address).
    pub public_host: String,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            listen_udp: "0.0.0.0:3478".into(),
            listen_tcp: "0.0.0.0:3478".into(),
            listen_tls: "0.0.0.0:5349".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            realm: "tidecast".into(),
            secret: String::new(),
            allowed_peers: Vec::new(),
            relay_ports: "49152-65535".into(),
            relay_address: String::new(),
            max_allocations_per_user: 10,
            max_allocations: 1000,
            bandwidth_kbps: 0,
            credential_ttl_secs: 600,
            public_host: String::new(),
        }
    }
}

/// Rooms (video calls) settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// HTTP + WebSocket signaling listen address.
    pub http_listen: String,
    /// Signs join tokens (JWT HS256) and authorises `POST /api/rooms/{room}/tokens`
    /// (`Authorization: Bearer <secret>`). Empty = development mode: a random key is made at
    /// start and anyone may mint tokens (logged as a warning).
    pub api_secret: String,
    /// Lifetime of minted join tokens, seconds.
    pub token_ttl_secs: u64,
    /// A participant whose WebSocket drops may reconnect within this many seconds and keep its
    /// place; the others see it leave only after that.
    pub resume_secs: u64,
    /// Participants per room.
    pub max_participants: usize,
    /// ICE servers handed to clients (`stun:host:port` URLs).
    pub ice_servers: Vec<String>,
    /// Group calls: from the third participant on, media goes through the SFU. Off: rooms stay
    /// peer-to-peer (and `max_participants` should be 2).
    pub sfu: bool,
    /// The SFU's one UDP port for every peer (`ip:port`; port 0 = any free one). On 0.0.0.0 it
    /// binds and announces 127.0.0.1 and the address of the default route; set `media_addresses`
    /// to announce others (a public IP behind 1:1 NAT, several interfaces).
    pub media_listen: String,
    /// A range of UDP (and ICE-TCP) ports instead of the one of `media_listen`, e.g.
    /// `"50000-50099"`: every port is bound, each new peer connection is given the next in turn
    /// (for firewalls or load balancers that spread by port). Empty: the one port.
    pub media_ports: String,
    /// Addresses the SFU binds and announces as host candidates (empty: from `media_listen`).
    pub media_addresses: Vec<String>,
    /// Also accept ICE-TCP on the media port (for clients behind UDP-blocking firewalls).
    pub media_tcp: bool,
    /// A STUN server (`host:port`, e.g. a `tidecast turn` outside the NAT) the SFU asks, from
    /// each media socket on a non-loopback address, for the address the world sees; a mapped
    /// address that differs from the socket's own is announced as a server-reflexive candidate.
    /// Empty: no STUN (the host candidates, or `media_addresses`, are the public ones).
    pub stun_server: String,
    /// Every rooms node of the deployment, as base URLs clients can reach
    /// (`http://rooms-a.example:7880`), this one included. A room lives on one node: the one
    /// its name hashes to (rendezvous) among the healthy ones, unless it is already open on
    /// another; a join that reaches another node is redirected there. Empty: one node.
    pub nodes: Vec<String>,
    /// Names (`host:port`) that resolve to the rooms nodes' addresses, looked up every 5 s:
    /// each address of the family of `node_url`'s is a node `http://ADDRESS:port` (`https` when
    /// `node_url` is), beside those of `nodes`. On Kubernetes, a headless Service over the
    /// rooms DaemonSet lists every ready node. A name that does not resolve leaves the members
    /// as they were.
    pub nodes_dns: Vec<String>,
    /// This node's own entry in `nodes` (with `nodes_dns`: its URL by its address).
    pub node_url: String,
    /// Record every call (through the SFU, into the object store of `[store]`); otherwise a
    /// call is recorded from `POST /api/rooms/{room}/recording` on.
    pub record: bool,
    /// Where `POST /api/rooms/{room}/restream` pushes a room unless the request names a URL:
    /// an RTMP application URL, the stream key `room-{room}` is appended. Empty: this
    /// deployment's own ingest (`rtmp://127.0.0.1:{port of ingest.rtmp_listen}/{ingest.app}`).
    pub restream_url: String,
    /// Restream picture width.
    pub restream_width: u32,
    /// Restream picture height.
    pub restream_height: u32,
    /// Restream frames per second.
    pub restream_fps: u32,
    /// Restream H.264 bitrate, kbit/s (the ladder transcodes it again).
    pub restream_kbps: u32,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            http_listen: "0.0.0.0:7880".into(),
            api_secret: String::new(),
            token_ttl_secs: 6 * 3600,
            resume_secs: 15,
            max_participants: 16,
            ice_servers: Vec::new(),
            sfu: true,
            media_listen: "0.0.0.0:50000".into(),
            media_ports: String::new(),
            media_addresses: Vec::new(),
            media_tcp: true,
            stun_server: String::new(),
            record: false,
            restream_url: String::new(),
            restream_width: 1280,
            restream_height: 720,
            restream_fps: 30,
            restream_kbps: 3000,
            nodes: Vec::new(),
            nodes_dns: Vec::new(),
            node_url: String::new(),
        }
    }
}
