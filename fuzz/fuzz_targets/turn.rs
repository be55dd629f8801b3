//! STUN/TURN: the codec on raw bytes, and the TURN core on raw bytes and on fuzzed messages
//! re-signed with a valid session's credentials (so requests reach past authentication into
//! allocations, permissions and channels), from a client and from a peer.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tidecast_turn::auth::Credentials;
use tidecast_turn::core::{FiveTuple, Limits, Out, Transport, TurnCore};
use tidecast_turn::filter::PeerFilter;
use tidecast_turn::stun::{
    attr, frame_length, method, parse_channel_data, Builder, Class, Message,
};

const UNIX: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let _ = frame_length(data);
    let _ = parse_channel_data(data);
    if let Ok(m) = Message::parse(data) {
        let _ = m.integrity_ok(b"key");
        let _ = m.xor_addresses(attr::XOR_PEER_ADDRESS);
        let _ = m.u32(attr::LIFETIME);
        let _ = m.text(attr::USERNAME);
    }
    let creds = Credentials::new("secret", "fuzz");
    let mut core = TurnCore::new(creds.clone(), PeerFilter::default(), Limits::default());
    let now = Instant::now();
    let transport = if data.first().is_some_and(|b| b & 1 == 1) {
        Transport::Tcp
    } else {
        Transport::Udp
    };
    let five = FiveTuple {
        client: SocketAddr::from(([198, 51, 100, 1], 5000)),
        server: SocketAddr::from(([192, 0, 2, 1], 3478)),
        transport,
    };
    // raw bytes, unauthenticated
    let _ = core.client(five, data, now, UNIX);
    // a valid allocation, then the input re-signed as this session's request
    let (user, _) = creds.mint("fuzz", UNIX, 600);
    let key = creds.key(&user);
    let nonce = creds.nonce(UNIX);
    let sign = |b: Builder| {
        b.add(attr::USERNAME, user.as_bytes())
            .add(attr::REALM, b"fuzz")
            .add(attr::NONCE, nonce.as_bytes())
            .integrity(&key)
            .fingerprint()
    };
    let allocate = sign(
        Builder::new(method::ALLOCATE, Class::Request, [1; 12])
            .add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
    );
    let relay = SocketAddr::from(([192, 0, 2, 1], 50000));
    for out in core.client(five, &allocate, now, UNIX) {
        if let Out::Bind(p) = out {
            let _ = core.allocated(p, Some(relay), now);
        }
    }
    if let Ok(m) = Message::parse(data) {
        let mut b = Builder::new(m.method, m.class, m.transaction);
        for (t, v) in &m.attributes {
            if ![
                attr::MESSAGE_INTEGRITY,
                attr::FINGERPRINT,
                attr::USERNAME,
                attr::REALM,
                attr::NONCE,
            ]
            .contains(t)
            {
                b = b.add(*t, v);
            }
        }
        let signed = sign(b);
        let _ = core.client(five, &signed, now, UNIX);
    }
    let _ = core.client(five, data, now, UNIX);
    let peer = SocketAddr::from(([203, 0, 114, 7], 7000));
    let _ = core.peer(relay, peer, data, now);
    let _ = core.expire(now, UNIX + 1);
});
