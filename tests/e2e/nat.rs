//! The NAT scenarios, for real (`ip netns` + iptables NAT): tidecast on the lab's "public"
//! subnet 203.0.113.0/24 (a bridge in its namespace), two room clients — Chromium, each started
//! inside its own client namespace — each behind a NAT router namespace of its own:
//!
//! ```text
//!   cli-a 192.168.10.2 ── nat-a (192.168.10.1 | 203.0.113.10) ─┐
//!                                                               ├─ pub: sw0 203.0.113.1 (tidecast)
//!   cli-b 192.168.20.2 ── nat-b (192.168.20.1 | 203.0.113.20) ─┘
//! ```
//!
//! (a) endpoint-independent NATs (`MASQUERADE`): the call connects peer to peer on the address
//! tidecast's STUN reflected; (b) endpoint-dependent ones (`MASQUERADE --random-fully`, i.e.
//! symmetric): direct checks fail and the call goes through tidecast's TURN relay; (c) all UDP
//! dropped at A's router: A reaches the TURN server over TCP; (d) UDP and TCP 3478 dropped there:
//! over TLS (5349), with a certificate from a lab CA the browsers' NSS databases trust. The relay addresses are in the
//! public subnet, which the test's TURN config allow-lists as a deployment allows its own.
//! Skipped, with the reason, where network namespaces or iptables are unavailable.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{binary, heavy, require_tool};
use crate::lab::{ip, require_netns, wait_until, Lab};

const PUBLIC: &str = "203.0.113.1";

fn in_ns(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "{ns}: {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// veth `a` in namespace `na` ↔ `b` in `nb`, both up.
fn veth(a: &str, na: &str, b: &str, nb: &str) {
    ip(&[
        "link", "add", a, "netns", na, "type", "veth", "peer", "name", b, "netns", nb,
    ]);
    ip(&["-n", na, "link", "set", a, "up"]);
    ip(&["-n", nb, "link", "set", b, "up"]);
}

/// What a side's router lets out.
#[derive(Clone, Copy, PartialEq)]
enum Firewall {
    Open,
    /// every UDP datagram is dropped (only TCP gets out)
    NoUdp,
    /// no UDP and no TCP to port 3478: TURN gets through only over TLS (5349)
    TlsOnly,
}

/// One side's NAT rules: `symmetric` picks the endpoint-dependent mapping; `firewall` what the
/// router forwards.
fn nat_rules(lab: &Lab, side: &str, symmetric: bool, firewall: Firewall) {
    let ns = lab.ns(&format!("nat-{side}"));
    in_ns(&ns, &["iptables", "-t", "nat", "-F"]);
    in_ns(&ns, &["iptables", "-F", "FORWARD"]);
    in_ns(&ns, &["iptables", "-F", "INPUT"]);
    // unsolicited datagrams to the router itself are dropped, as home routers do: answered with
    // port-unreachable they would leave a conntrack entry holding the very port the inside host's
    // mapping needs, and the NAT would pick another one (behaving symmetric)
    in_ns(
        &ns,
        &[
            "iptables", "-A", "INPUT", "-i", "wan0", "-p", "udp", "-j", "DROP",
        ],
    );
    let mut masq = vec![
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "wan0",
        "-j",
    ];
    masq.push("MASQUERADE");
    if symmetric {
        masq.push("--random-fully");
    }
    in_ns(&ns, &masq);
    if firewall != Firewall::Open {
        in_ns(
            &ns,
            &["iptables", "-A", "FORWARD", "-p", "udp", "-j", "DROP"],
        );
    }
    if firewall == Firewall::TlsOnly {
        in_ns(
            &ns,
            &[
                "iptables", "-A", "FORWARD", "-p", "tcp", "--dport", "3478", "-j", "DROP",
            ],
        );
    }
}

fn run(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA of the lab's own and a certificate it signed for the TURN server's public address:
/// (certificate, key) paths. The CA is `dir/ca.pem`.
fn lab_ca(dir: &std::path::Path) -> (String, String) {
    let at = |f: &str| dir.join(f).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(
        "openssl: the lab CA",
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args([
                "-keyout",
                &at("ca.key"),
                "-out",
                &at("ca.pem"),
                "-days",
                "2",
            ])
            .args(["-subj", "/CN=tidecast NAT lab CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
    );
    run(
        "openssl: the TURN server's request",
        Command::new("openssl")
            .arg("req")
            .args(ec)
            .args(["-keyout", &at("turn.key"), "-out", &at("turn.csr")])
            .args(["-subj", &format!("/CN={PUBLIC}")]),
    );
    std::fs::write(
        dir.join("turn.ext"),
        format!(
            "subjectAltName=IP:{PUBLIC}\nextendedKeyUsage=serverAuth\n\
             keyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n"
        ),
    )
    .expect("turn.ext");
    run(
        "openssl: the TURN server's certificate",
        Command::new("openssl")
            .args(["x509", "-req", "-in", &at("turn.csr")])
            .args([
                "-CA",
                &at("ca.pem"),
                "-CAkey",
                &at("ca.key"),
                "-CAcreateserial",
            ])
            .args([
                "-out",
                &at("turn.pem"),
                "-days",
                "2",
                "-extfile",
                &at("turn.ext"),
            ]),
    );
    (at("turn.pem"), at("turn.key"))
}

/// A home directory whose NSS database (where Chromium on Linux looks for the roots a user
/// added) trusts the lab CA.
fn home_trusting_lab_ca(dir: &std::path::Path, side: &str) -> PathBuf {
    let home = dir.join(format!("home-{side}"));
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).expect("nssdb dir");
    let db = format!("sql:{}", db.display());
    run(
        "certutil: a new NSS database",
        Command::new("certutil").args(["-N", "--empty-password", "-d", &db]),
    );
    run(
        "certutil: trust the lab CA",
        Command::new("certutil")
            .args(["-A", "-n", "tidecast-nat-lab", "-t", "C,,", "-d", &db, "-i"])
            .arg(dir.join("ca.pem")),
    );
    home
}

/// A 1:1 call between page A (in cli-a) and page B (in cli-b): room.mjs's report.
fn call(lab: &Lab, room: &str, wrappers: &(PathBuf, PathBuf), direct: bool) -> Value {
    let clip = crate::rooms::camera_clip(&lab.dir);
    let url = format!(
        "http://{PUBLIC}:7880/demo/room.html?room={room}-{}",
        std::process::id()
    );
    let out = Command::new("node")
        .arg(crate::browser::browser_dir().join("room.mjs"))
        .args([
            &url,
            &clip.display().to_string(),
            "60",
            "-",
            "2",
            "udp",
            "-",
        ])
        .env("CHROMIUM_A", &wrappers.0)
        .env("CHROMIUM_B", &wrappers.1)
        .env("ROOM_WANT_DIRECT", if direct { "1" } else { "0" })
        .output()
        .expect("node room.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {stdout} {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            lab.logs()
        )
    });
    eprintln!(
        "{room}: connected {} then A {} B {}",
        report["steps"]["connected"], report["steps"]["pair"], report["steps"]["pair_b"]
    );
    assert_eq!(report["ok"], true, "{room}: {report}\n{}", lab.logs());
    assert_eq!(report["steps"]["connected"]["mode"], "p2p", "{report}");
    report
}

/// [`call`] where the media must go through tidecast's TURN: asserts the relay carried it.
fn call_through_turn(lab: &Lab, room: &str, wrappers: &(PathBuf, PathBuf)) -> Value {
    let before = turn_relayed(lab);
    let report = call(lab, room, wrappers, false);
    let relayed = turn_relayed(lab) - before;
    assert!(relayed > 200, "{room}: TURN relayed only {relayed} packets");
    report
}

fn turn_relayed(lab: &Lab) -> u64 {
    let text = lab.curl("pub", &["http://127.0.0.1:8080/metrics"]);
    text.lines()
        .find(|l| l.starts_with("tidecast_turn_relayed_packets_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// The lab's namespaces and links (see the module docs), no NAT rules yet; `tag` keeps two
/// tests' namespaces apart.
fn topology(tag: &str) -> Lab {
    let prefix = format!("n{}{tag}-", std::process::id() % 100_000);
    let dir = std::env::temp_dir().join(format!("tidecast-natlab{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("lab dir");
    let names = ["pub", "nat-a", "nat-b", "cli-a", "cli-b"];
    let lab = Lab {
        prefix: prefix.clone(),
        script: None,
        namespaces: names.iter().map(|n| format!("{prefix}{n}")).collect(),
        procs: Vec::new(),
        dir: dir.clone(),
    };
    for ns in &lab.namespaces {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    let ns = |n: &str| format!("{prefix}{n}");
    // the public subnet: a bridge in `pub` with tidecast's address, the routers' WAN ports on it
    ip(&["-n", &ns("pub"), "link", "add", "sw0", "type", "bridge"]);
    ip(&[
        "-n",
        &ns("pub"),
        "addr",
        "add",
        &format!("{PUBLIC}/24"),
        "dev",
        "sw0",
    ]);
    ip(&["-n", &ns("pub"), "link", "set", "sw0", "up"]);
    for (side, octet) in [("a", "10"), ("b", "20")] {
        let (nat, cli) = (ns(&format!("nat-{side}")), ns(&format!("cli-{side}")));
        veth("wan0", &nat, &format!("port-{side}"), &ns("pub"));
        ip(&[
            "-n",
            &ns("pub"),
            "link",
            "set",
            &format!("port-{side}"),
            "master",
            "sw0",
        ]);
        ip(&[
            "-n",
            &nat,
            "addr",
            "add",
            &format!("203.0.113.{octet}/24"),
            "dev",
            "wan0",
        ]);
        veth("lan0", &nat, "eth0", &cli);
        ip(&[
            "-n",
            &nat,
            "addr",
            "add",
            &format!("192.168.{octet}.1/24"),
            "dev",
            "lan0",
        ]);
        ip(&[
            "-n",
            &cli,
            "addr",
            "add",
            &format!("192.168.{octet}.2/24"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &cli,
            "route",
            "add",
            "default",
            "via",
            &format!("192.168.{octet}.1"),
        ]);
        in_ns(&nat, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    }
    lab
}

#[test]
fn calls_cross_cone_nats_directly_symmetric_nats_through_turn_and_udp_blocking_firewalls_over_tcp_and_tls(
) {
    require_netns("NAT lab");
    crate::browser::browser_dir();
    require_tool("iptables", "apt-get install iptables (or: make test)");
    require_tool("certutil", "apt-get install libnss3-tools (or: make test)");
    require_tool("openssl", "apt-get install openssl (or: make test)");
    let _guard = heavy();
    let mut lab = topology("");
    let (prefix, dir) = (lab.prefix.clone(), lab.dir.clone());
    let ns = |n: &str| format!("{prefix}{n}");
    // each page's browser runs inside its client's namespace; the page is not on localhost, so
    // its origin is declared secure (camera access needs a secure context)
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let (cert, key) = lab_ca(&dir);
    let wrapper = |side: &str| {
        let path = dir.join(format!("chromium-{side}"));
        let home = home_trusting_lab_ca(&dir, side);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nHOME={} exec ip netns exec {} {chromium} \
                 --unsafely-treat-insecure-origin-as-secure=http://{PUBLIC}:7880 \"$@\"\n",
                home.display(),
                ns(&format!("cli-{side}"))
            ),
        )
        .expect("wrapper");
        let _ = Command::new("chmod").arg("+x").arg(&path).status();
        path
    };
    let wrappers = (wrapper("a"), wrapper("b"));

    // TURN over TLS with the certificate of the lab CA the browsers trust
    let bin = binary().display().to_string();
    let data = dir.join("data").display().to_string();
    lab.spawn(
        "pub",
        &[
            "env",
            "TIDECAST_TURN__SECRET=nat-lab-secret",
            "TIDECAST_TURN__LISTEN_UDP=0.0.0.0:3478",
            "TIDECAST_TURN__LISTEN_TCP=0.0.0.0:3478",
            "TIDECAST_TURN__LISTEN_TLS=0.0.0.0:5349",
            &format!("TIDECAST_TURN__TLS_CERT={cert}"),
            &format!("TIDECAST_TURN__TLS_KEY={key}"),
            &format!("TIDECAST_TURN__RELAY_ADDRESS={PUBLIC}"),
            &format!("TIDECAST_TURN__PUBLIC_HOST={PUBLIC}"),
            "TIDECAST_TURN__ALLOWED_PEERS=[\"203.0.113.0/24\"]",
            &format!("TIDECAST_ROOMS__MEDIA_LISTEN={PUBLIC}:50000"),
            &bin,
            "all",
            "--data-dir",
            &data,
            "--rooms-listen",
            "0.0.0.0:7880",
            "--http-listen",
            "127.0.0.1:8080",
        ],
    );
    wait_until("tidecast", &lab, Duration::from_secs(30), || {
        lab.curl("pub", &[&format!("http://{PUBLIC}:7880/healthz")])
            .contains("ok")
    });

    // (a) cone NATs: peer to peer, on the other side's NAT-mapped (server-reflexive) address
    nat_rules(&lab, "a", false, Firewall::Open);
    nat_rules(&lab, "b", false, Firewall::Open);
    let relayed_before = turn_relayed(&lab);
    let r = call(&lab, "cone", &wrappers, true);
    let (pa, pb) = (&r["steps"]["pair"], &r["steps"]["pair_b"]);
    for (pair, other) in [(pa, "203.0.113.20"), (pb, "203.0.113.10")] {
        assert_ne!(
            pair["local"]["type"], "relay",
            "cone NAT call relayed: {pair}"
        );
        assert_ne!(
            pair["remote"]["type"], "relay",
            "cone NAT call relayed: {pair}"
        );
        assert!(
            matches!(pair["remote"]["type"].as_str(), Some("srflx" | "prflx")),
            "the other side is reached on its NAT mapping: {pair}"
        );
        // Chromium hides a peer-reflexive candidate's address
        let address = pair["remote"]["address"].as_str().unwrap_or("");
        assert!(address.is_empty() || address == other, "{pair}");
    }
    let relayed_cone = turn_relayed(&lab) - relayed_before;
    assert!(
        relayed_cone < 50,
        "TURN relayed {relayed_cone} packets of a direct call"
    );

    // (b) symmetric NATs: the mappings differ per destination, only the relay gets through
    nat_rules(&lab, "a", true, Firewall::Open);
    nat_rules(&lab, "b", true, Firewall::Open);
    let r = call_through_turn(&lab, "symmetric", &wrappers);
    for side in ["a", "b"] {
        let pair = &r["steps"]["connected"][side];
        assert!(
            pair["local"]["type"] == "relay" || pair["remote"]["type"] == "relay",
            "symmetric NATs: {side}'s pair has no relay end: {pair}"
        );
    }

    // (c) no UDP out of A's network: A's relay is reached over TCP
    nat_rules(&lab, "a", false, Firewall::NoUdp);
    nat_rules(&lab, "b", false, Firewall::Open);
    let r = call_through_turn(&lab, "tcp-only", &wrappers);
    let pa = &r["steps"]["connected"]["a"];
    assert_eq!(pa["local"]["type"], "relay", "A without UDP: {pa}");
    assert!(
        matches!(pa["local"]["relayProtocol"].as_str(), Some("tcp" | "tls")),
        "A reaches its relay over TCP/TLS: {pa}"
    );

    // (d) neither UDP nor TCP 3478 out of A's network: only TURN over TLS gets through, with
    // the certificate checked against the CA the browser trusts
    nat_rules(&lab, "a", false, Firewall::TlsOnly);
    let r = call_through_turn(&lab, "tls-only", &wrappers);
    let pa = &r["steps"]["connected"]["a"];
    assert_eq!(pa["local"]["type"], "relay", "A with only TLS: {pa}");
    assert_eq!(
        pa["local"]["relayProtocol"], "tls",
        "A reaches its relay over TLS: {pa}"
    );
}

/// An SFU behind NAT learns its public address from tidecast's STUN: the rooms node runs in
/// cli-b behind nat-b, a 1:1 NAT as cloud hosts have (everything to 203.0.113.20 is forwarded
/// to 192.168.20.2), with `rooms.stun_server` pointing at a `tidecast turn` on the public
/// subnet. Three bots behind nat-a (a cone NAT) join a room: they can reach the SFU only at
/// the server-reflexive address it announces (its host address is private and unrouted) — and
/// every bot receives the two others.
#[test]
fn an_sfu_behind_nat_announces_the_public_address_tidecasts_stun_reports() {
    require_netns("NAT lab (SFU behind NAT)");
    require_tool("iptables", "apt-get install iptables (or: make test)");
    let _guard = heavy();
    let mut lab = topology("s");
    let prefix = lab.prefix.clone();
    let ns = |n: &str| format!("{prefix}{n}");
    nat_rules(&lab, "a", false, Firewall::Open);
    nat_rules(&lab, "b", false, Firewall::Open);
    in_ns(
        &ns("nat-b"),
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-i",
            "wan0",
            "-d",
            "203.0.113.20",
            "-j",
            "DNAT",
            "--to-destination",
            "192.168.20.2",
        ],
    );
    in_ns(&ns("nat-b"), &["iptables", "-F", "INPUT"]);

    let bin = binary().display().to_string();
    let data = lab.dir.join("data").display().to_string();
    lab.spawn(
        "pub",
        &[
            "env",
            "TIDECAST_TURN__LISTEN_UDP=0.0.0.0:3478",
            "TIDECAST_TURN__LISTEN_TCP=0.0.0.0:3478",
            "TIDECAST_TURN__LISTEN_TLS=",
            "TIDECAST_ORIGIN__HTTP_LISTEN=127.0.0.1:8080",
            &bin,
            "turn",
            "--data-dir",
            &format!("{data}-turn"),
        ],
    );
    let stun = format!("{PUBLIC}:3478");
    let ice = format!("TIDECAST_ROOMS__ICE_SERVERS=[\"stun:{stun}\"]");
    lab.spawn(
        "cli-b",
        &[
            "env",
            "TIDECAST_ROOMS__MEDIA_LISTEN=192.168.20.2:50000",
            "TIDECAST_ROOMS__MEDIA_TCP=false",
            &format!("TIDECAST_ROOMS__STUN_SERVER={stun}"),
            &ice,
            &bin,
            "rooms",
            "--rooms-listen",
            "0.0.0.0:7880",
            "--data-dir",
            &data,
        ],
    );
    wait_until(
        "the rooms node behind NAT",
        &lab,
        Duration::from_secs(30),
        || {
            lab.curl("cli-a", &["http://203.0.113.20:7880/healthz"])
                .contains("ok")
        },
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &ns("cli-a"), &bin, "bot"])
        .args(["--server", "203.0.113.20:7880", "--room", "behind-nat"])
        .args(["--participants", "3", "--duration", "12", "--json"])
        .env("RUST_LOG", "error")
        .output()
        .expect("tidecast bot");
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "no bot report ({e}): {text} {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            lab.logs()
        )
    });
    let logs = lab.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("SFU public address (STUN)") && l.contains("203.0.113.20:50000")),
        "the SFU did not learn its public address\n{logs}"
    );
    assert_eq!(report["failures"], serde_json::json!([]), "{report}");
    let participants = report["participants"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(participants.len(), 3, "{report}");
    for p in &participants {
        let video: Vec<&Value> = p["tracks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["kind"] == "video" && t["packets"].as_u64().unwrap_or(0) > 50)
            .collect();
        assert_eq!(
            video.len(),
            2,
            "{} receives the two others: {p}",
            p["identity"]
        );
    }
}
