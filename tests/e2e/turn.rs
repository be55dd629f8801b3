//! `tidecast turn` against coturn's own clients (Debian `coturn`: turnutils_stunclient,
//! turnutils_uclient, turnutils_peer) and a STUN client written from the RFC for the refusals.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tidecast_turn::auth::Credentials;
use tidecast_turn::stun::{attr, frame_length, method, Builder, Class, Message};

use crate::harness::{free_port, require_tool, Tidecast};

const SECRET: &str = "e2e-turn-secret";
const HINT: &str = "apt-get install coturn";

fn turn(env: &[(&str, &str)]) -> Tidecast {
    let mut all = vec![
        ("TIDECAST_TURN__SECRET", SECRET),
        ("TIDECAST_TURN__RELAY_ADDRESS", "127.0.0.1"),
    ];
    all.extend_from_slice(env);
    Tidecast::start_role("turn", &[], &all)
}

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn uclient(t: &Tidecast, args: &[&str]) -> String {
    // -S: TLS (to the TLS port)
    let port = if args.contains(&"-S") {
        t.turn_tls_port
    } else {
        t.turn_port
    };
    let out = Command::new("timeout")
        .arg("60")
        .arg("turnutils_uclient")
        .args(["-W", SECRET, "-p", &port.to_string()])
        .args(args)
        .arg("127.0.0.1")
        .stdin(Stdio::null())
        .output()
        .expect("turnutils_uclient");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `tot_send_msgs` and `tot_recv_msgs` of uclient's final line, and whether it lost nothing.
fn relayed(out: &str) -> (u64, u64, bool) {
    let field = |name: &str| {
        out.lines()
            .rev()
            .find_map(|l| {
                let rest = l.split(&format!("{name}=")).nth(1)?;
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    (
        field("tot_send_msgs"),
        field("tot_recv_msgs"),
        out.contains("Total lost packets 0 ("),
    )
}

#[test]
fn coturn_clients_get_the_mapped_address_and_relay_over_udp_tcp_and_tls_without_loss() {
    require_tool("turnutils_uclient", HINT);
    let t = turn(&[("TIDECAST_TURN__ALLOWED_PEERS", "[\"127.0.0.1/32\"]")]);
    let stun = Command::new("timeout")
        .args([
            "10",
            "turnutils_stunclient",
            "-p",
            &t.turn_port.to_string(),
            "127.0.0.1",
        ])
        .output()
        .expect("turnutils_stunclient");
    let text = String::from_utf8_lossy(&stun.stdout).to_string();
    assert!(
        text.contains("UDP reflexive addr: 127.0.0.1:"),
        "stunclient: {text}{}\n{}",
        String::from_utf8_lossy(&stun.stderr),
        t.log()
    );
    let peer_port = free_port();
    let _peer = Peer(
        Command::new("turnutils_peer")
            .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnutils_peer"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let peer = peer_port.to_string();
    for (name, extra) in [
        ("UDP", vec![]),
        ("TCP", vec!["-t"]),
        ("TLS", vec!["-t", "-S"]),
    ] {
        let mut args = vec![
            "-e",
            "127.0.0.1",
            "-r",
            &peer,
            "-n",
            "100",
            "-m",
            "4",
            "-l",
            "170",
            "-c",
        ];
        args.extend(extra);
        let out = uclient(&t, &args);
        let (sent, received, lossless) = relayed(&out);
        assert!(
            sent == 400 && received == sent && lossless,
            "{name}: uclient relayed {received}/{sent} (lossless {lossless}):\n{out}\n{}",
            t.log()
        );
    }
    let relayed = |direction: &str| {
        Tidecast::metric(
            t.http_port,
            "tidecast_turn_relayed_packets_total",
            &format!("direction=\"{direction}\""),
        )
    };
    let (to_peer, to_client) = (relayed("to_peer"), relayed("to_client"));
    eprintln!("relayed to peers {to_peer}, to clients {to_client}");
    // every message (400 on each of UDP, TCP and TLS) went out to its peer and came back
    assert!(
        to_peer >= 1200 && to_client >= 1200,
        "relayed packets metric: to peers {to_peer}, to clients {to_client}"
    );
    assert!(Tidecast::metric(t.http_port, "tidecast_turn_allocations_total", "") >= 8);
}

/// A STUN client on UDP or TCP.
enum Client {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

impl Client {
    fn udp(port: u16) -> Client {
        let s = UdpSocket::bind("127.0.0.1:0").expect("udp");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        Client::Udp(s, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn tcp(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("tcp");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        Client::Tcp(s)
    }

    fn ask(&mut self, request: &[u8]) -> Vec<u8> {
        match self {
            Client::Udp(s, to) => {
                s.send_to(request, *to).expect("send");
                let mut buf = vec![0u8; 2048];
                let (n, _) = s.recv_from(&mut buf).expect("a STUN response");
                buf.truncate(n);
                buf
            }
            Client::Tcp(s) => {
                s.write_all(request).expect("write");
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                loop {
                    if let Ok(Some(len)) = frame_length(&buf) {
                        if buf.len() >= len {
                            buf.truncate(len);
                            return buf;
                        }
                    }
                    let n = s.read(&mut chunk).expect("a STUN response");
                    assert!(n > 0, "TURN closed the connection");
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
}

/// The error code of a response (None for success).
fn code(response: &[u8]) -> Option<u16> {
    let m = Message::parse(response).expect("a STUN response");
    let v = m.get(attr::ERROR_CODE)?;
    Some(u16::from(v[2]) * 100 + u16::from(v[3]))
}

struct Session {
    user: String,
    key: [u8; 16],
    nonce: String,
    n: u8,
}

impl Session {
    /// The realm and nonce from an unauthenticated Allocate's 401, and credentials for `user`.
    fn start(c: &mut Client, user: String, key: [u8; 16]) -> Session {
        let req = Builder::new(method::ALLOCATE, Class::Request, [200; 12])
            .add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .fingerprint();
        let r = c.ask(&req);
        assert_eq!(
            code(&r),
            Some(401),
            "an unauthenticated Allocate is challenged"
        );
        let m = Message::parse(&r).expect("challenge");
        Session {
            user,
            key,
            nonce: m.text(attr::NONCE).expect("nonce").to_string(),
            n: 0,
        }
    }

    fn request(&mut self, method: u16, add: impl FnOnce(Builder) -> Builder) -> Vec<u8> {
        self.n += 1;
        let b = Builder::new(method, Class::Request, [self.n; 12])
            .add(attr::USERNAME, self.user.as_bytes())
            .add(attr::REALM, b"tidecast")
            .add(attr::NONCE, self.nonce.as_bytes());
        add(b).integrity(&self.key).fingerprint()
    }

    fn allocate(&mut self, c: &mut Client) -> Option<u16> {
        let req = self.request(method::ALLOCATE, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        });
        code(&c.ask(&req))
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[test]
fn internal_peers_bad_credentials_and_quotas_are_refused_on_udp_and_tcp() {
    require_tool("turnutils_uclient", HINT);
    let t = turn(&[("TIDECAST_TURN__MAX_ALLOCATIONS_PER_USER", "2")]);
    let creds = Credentials::new(SECRET, "tidecast");
    for (i, transport) in ["udp", "tcp"].into_iter().enumerate() {
        let connect = || match transport {
            "udp" => Client::udp(t.turn_port),
            _ => Client::tcp(t.turn_port),
        };
        let user = |name: &str, ttl: i64| {
            let (u, _) = creds.mint(
                name,
                (now_unix() as i64 + ttl.min(0)) as u64,
                ttl.max(1) as u64,
            );
            let key = creds.key(&u);
            (u, key)
        };
        // tampered: the right username, a key from another secret
        let mut c = connect();
        let (u, _) = user(&format!("tampered{i}"), 300);
        let wrong = Credentials::new("not-the-secret", "tidecast").key(&u);
        assert_eq!(
            Session::start(&mut c, u, wrong).allocate(&mut c),
            Some(401),
            "{transport}: tampered"
        );
        // expired: signed right, but its expiry has passed
        let mut c = connect();
        let (u, k) = user(&format!("expired{i}"), -120);
        assert_eq!(
            Session::start(&mut c, u, k).allocate(&mut c),
            Some(401),
            "{transport}: expired"
        );
        // good credentials: an allocation, and internal peers refused with 403
        let mut c = connect();
        let (u, k) = user(&format!("alice{i}"), 300);
        let mut s = Session::start(&mut c, u.clone(), k);
        assert_eq!(s.allocate(&mut c), None, "{transport}: allocate");
        for peer in [
            "127.0.0.1:5000",
            "10.0.0.1:5000",
            "169.254.169.254:80",
            "[::1]:5000",
            "[::ffff:127.0.0.1]:5000",
        ] {
            let peer: SocketAddr = peer.parse().expect("peer");
            let req = s.request(method::CREATE_PERMISSION, |b| {
                b.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            });
            assert_eq!(
                code(&c.ask(&req)),
                Some(403),
                "{transport}: CreatePermission {peer}"
            );
            let req = s.request(method::CHANNEL_BIND, |b| {
                b.add(attr::CHANNEL_NUMBER, &[0x40, 0x10, 0, 0])
                    .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            });
            assert_eq!(
                code(&c.ask(&req)),
                Some(403),
                "{transport}: ChannelBind {peer}"
            );
        }
        // a public peer is fine
        let public: SocketAddr = "8.8.8.8:53".parse().expect("peer");
        let req = s.request(method::CREATE_PERMISSION, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, public)
        });
        assert_eq!(
            code(&c.ask(&req)),
            None,
            "{transport}: CreatePermission {public}"
        );
        // malformed input from another client is dropped (UDP) or ends that connection (TCP),
        // and this allocation keeps working
        let mut huge = Builder::new(method::BINDING, Class::Request, [3; 12]);
        for _ in 0..2000 {
            huge = huge.add(attr::SOFTWARE, b"x");
        }
        let mut wrong_length = Builder::new(method::ALLOCATE, Class::Request, [4; 12])
            .add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .build();
        wrong_length[3] = 200;
        let mut past_end = Builder::new(method::ALLOCATE, Class::Request, [5; 12])
            .add(attr::USERNAME, b"abcd")
            .build();
        past_end[23] = 0xff;
        let garbage: Vec<Vec<u8>> = vec![
            vec![0, 1, 0],
            wrong_length,
            past_end,
            huge.build(),
            vec![0x40, 0x01, 0x01, 0xf4, 1, 2, 3], // ChannelData claiming 500 bytes
            vec![0xff; 64],
        ];
        match transport {
            "udp" => {
                let bad = UdpSocket::bind("127.0.0.1:0").expect("udp");
                for g in &garbage {
                    bad.send_to(g, ("127.0.0.1", t.turn_port)).expect("send");
                }
            }
            _ => {
                let mut bad = TcpStream::connect(("127.0.0.1", t.turn_port)).expect("tcp");
                bad.set_read_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                let _ = bad.write_all(&[0xff; 64]);
                let mut buf = [0u8; 64];
                assert!(
                    matches!(bad.read(&mut buf), Ok(0) | Err(_)),
                    "a stream of garbage is closed"
                );
            }
        }
        let req = s.request(method::REFRESH, |b| b.add_u32(attr::LIFETIME, 600));
        assert_eq!(
            code(&c.ask(&req)),
            None,
            "{transport}: the allocation outlives bad input"
        );
        // quota: two allocations per user, so a third connection of the same user gets 486
        let mut second = connect();
        let mut s2 = Session::start(&mut second, u.clone(), k);
        assert_eq!(
            s2.allocate(&mut second),
            None,
            "{transport}: second allocation"
        );
        let mut third = connect();
        let mut s3 = Session::start(&mut third, u, k);
        assert_eq!(
            s3.allocate(&mut third),
            Some(486),
            "{transport}: over quota"
        );
        // Refresh 0 ends them, so the next round starts clean
        for (s, c) in [(&mut s, &mut c), (&mut s2, &mut second)] {
            let req = s.request(method::REFRESH, |b| b.add_u32(attr::LIFETIME, 0));
            assert_eq!(code(&c.ask(&req)), None);
        }
    }
    // coturn's client sees the same refusal for an internal peer
    let out = uclient(
        &t,
        &["-e", "10.0.0.1", "-r", "5000", "-n", "5", "-m", "1", "-c"],
    );
    assert!(out.contains("error 403"), "uclient to 10.0.0.1:\n{out}");
    let forbidden = Tidecast::metric(t.http_port, "tidecast_turn_refused_total", "forbidden_peer");
    assert!(forbidden >= 20, "refusals counted: {forbidden}");
    assert!(Tidecast::metric(t.http_port, "tidecast_turn_auth_failures_total", "") >= 4);
    assert!(Tidecast::metric(t.http_port, "tidecast_turn_refused_total", "quota") >= 2);
}

/// A burst of ChannelData larger than the server takes from its UDP listener per wake-up (64)
/// arrives whole at the peer, and nothing is counted as dropped: the relay once read one
/// datagram past its batch and lost it (1 in 75,000 under bench/turn.sh's load).
#[test]
fn bursts_of_channel_data_are_relayed_without_loss() {
    let t = turn(&[("TIDECAST_TURN__ALLOWED_PEERS", "[\"127.0.0.1/32\"]")]);
    let creds = Credentials::new(SECRET, "tidecast");
    let (user, _) = creds.mint("burst", now_unix(), 300);
    let key = creds.key(&user);
    let mut c = Client::udp(t.turn_port);
    let mut s = Session::start(&mut c, user, key);
    assert_eq!(s.allocate(&mut c), None, "allocate\n{}", t.log());
    let peer = UdpSocket::bind("127.0.0.1:0").expect("peer socket");
    let peer_addr = peer.local_addr().expect("peer address");
    let bind = s.request(method::CHANNEL_BIND, |b| {
        b.add(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0])
            .add_xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
    });
    assert_eq!(code(&c.ask(&bind)), None, "channel bind\n{}", t.log());
    // the peer counts what arrives until 1 s of silence
    peer.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0u32;
        while peer.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    let Client::Udp(socket, server) = &c else {
        unreachable!()
    };
    const BURSTS: u32 = 20;
    const PER_BURST: u32 = 100;
    for _ in 0..BURSTS {
        for i in 0..PER_BURST {
            let mut frame = vec![0x40, 0x00, 0, 200];
            frame.extend(std::iter::repeat_n(i as u8, 200));
            socket.send_to(&frame, server).expect("send ChannelData");
        }
        // a burst fits in the listener's kernel buffer with room to spare (Debian's rmem_max
        // is 208 KiB) and is handled long before the next one
        std::thread::sleep(Duration::from_millis(50));
    }
    let received = counter.join().expect("peer thread");
    let dropped = Tidecast::metric(t.http_port, "tidecast_turn_dropped_total", "");
    assert_eq!(
        (received, dropped),
        (BURSTS * PER_BURST, 0),
        "datagrams at the peer, dropped by the relay\n{}",
        t.log()
    );
}
