//! `tidecast --check-config`: what a configuration gets wrong, key by key, before any role
//! starts with it. Pure: nothing is bound, read or resolved; each problem names its key.
//!
//! The parsers here ([`listen_addr`], [`port_range`]) are the ones the roles use at start,
//! so the check and the roles cannot disagree about what a value means.

use std::net::SocketAddr;

use super::{BusKind, Config, StoreKind};

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key, e.g. `ingest.rtmp_listen`.
    pub key: String,
    /// What is wrong with its value.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A listen address: empty for none, else `ip:port`.
pub fn listen_addr(value: &str) -> Result<Option<SocketAddr>, String> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| format!("{value:?} is not ip:port (e.g. 0.0.0.0:8080)"))
}

/// A port range `first-last` (both non-zero, first ≤ last, at most `max_span` ports).
pub fn port_range(value: &str, max_span: u32) -> Result<(u16, u16), String> {
    let bad = || format!("{value:?}: want first-last, e.g. 50000-50099");
    let (a, b) = value.trim().split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    if u32::from(b - a) >= max_span {
        return Err(format!("{value:?} spans more than {max_span} ports"));
    }
    Ok((a, b))
}

/// Shortest secret accepted (bytes): a shorter one can be guessed.
pub const MIN_SECRET_LEN: usize = 16;

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn check(&mut self, key: &str, result: Result<impl Sized, String>) {
        if let Err(message) = result {
            self.add(key, message);
        }
    }

    fn required_listen(&mut self, key: &str, value: &str) {
        match listen_addr(value) {
            Ok(Some(_)) => {}
            Ok(None) => self.add(key, "empty: an ip:port is needed"),
            Err(m) => self.add(key, m),
        }
    }

    fn url(&mut self, key: &str, value: &str, schemes: &[&str]) {
        let v = value.trim();
        let Some((scheme, rest)) = v.split_once("://") else {
            self.add(key, format!("{value:?} is not a URL ({}://…)", schemes[0]));
            return;
        };
        if !schemes.contains(&scheme) {
            self.add(
                key,
                format!(
                    "{value:?}: the scheme must be one of {}",
                    schemes.join(", ")
                ),
            );
        } else if rest.is_empty() || rest.starts_with('/') || v.chars().any(char::is_whitespace) {
            self.add(key, format!("{value:?} has no host"));
        }
    }

    fn secret(&mut self, key: &str, value: &str) {
        if !value.is_empty() && value.len() < MIN_SECRET_LEN {
            self.add(
                key,
                format!("shorter than {MIN_SECRET_LEN} characters: too easy to guess"),
            );
        }
    }

    fn positive(&mut self, key: &str, value: u64) {
        if value == 0 {
            self.add(key, "must be more than 0");
        }
    }

    fn even_size(&mut self, key: &str, width: u32, height: u32) {
        if width < 16 || height < 16 || !width.is_multiple_of(2) || !height.is_multiple_of(2) {
            self.add(
                key,
                format!("{width}x{height}: both sides even and at least 16"),
            );
        }
    }
}

impl Config {
    /// Everything wrong with this configuration (empty: it is fine). Values the schema
    /// already enforces (types, unknown keys) were refused when it was loaded.
    pub fn check(&self) -> Vec<Problem> {
        let mut p = Problems(Vec::new());
        if self.listen_backlog == 0 {
            p.add("listen_backlog", "must be more than 0");
        }
        if self.drain_delay_secs >= self.drain_timeout_secs {
            p.add(
                "drain_delay_secs",
                format!(
                    "{} leaves no time to drain within drain_timeout_secs ({})",
                    self.drain_delay_secs, self.drain_timeout_secs
                ),
            );
        }

        let i = &self.ingest;
        p.required_listen("ingest.rtmp_listen", &i.rtmp_listen);
        if !crate::keys::is_valid_stream_name(&i.app) {
            p.add(
                "ingest.app",
                format!("{:?}: 1-64 characters of A-Z a-z 0-9 _ -", i.app),
            );
        }
        for (key, stream) in &i.keys {
            if !crate::keys::is_valid_stream_name(stream) {
                p.add(
                    &format!("ingest.keys.{key}"),
                    format!("stream {stream:?}: 1-64 characters of A-Z a-z 0-9 _ -"),
                );
            }
            if key.len() < 8 {
                p.add(
                    &format!("ingest.keys.{key}"),
                    "a stream key shorter than 8 characters is too easy to guess",
                );
            }
        }
        if !i.origin_url.trim().is_empty() {
            p.url("ingest.origin_url", &i.origin_url, &["http", "https"]);
        }
        p.secret("ingest.origin_token", &i.origin_token);

        let l = &self.ladder;
        p.positive("ladder.segment_ms", l.segment_ms);
        if l.part_ms > 0 && l.part_ms >= l.segment_ms {
            p.add(
                "ladder.part_ms",
                format!(
                    "{} is not shorter than ladder.segment_ms ({})",
                    l.part_ms, l.segment_ms
                ),
            );
        }
        const PRESETS: [&str; 10] = [
            "ultrafast",
            "superfast",
            "veryfast",
            "faster",
            "fast",
            "medium",
            "slow",
            "slower",
            "veryslow",
            "placebo",
        ];
        if !PRESETS.contains(&l.x264_preset.as_str()) {
            p.add(
                "ladder.x264_preset",
                format!("{:?}: one of {}", l.x264_preset, PRESETS.join(", ")),
            );
        }
        if l.rungs.is_empty() && !l.passthrough {
            p.add(
                "ladder.rungs",
                "no rungs and no passthrough: nothing to play",
            );
        }
        for (n, r) in l.rungs.iter().enumerate() {
            let key = format!("ladder.rungs[{n}]");
            if !crate::keys::is_valid_stream_name(&r.name) || r.name == "source" {
                p.add(
                    &key,
                    format!(
                        "name {:?}: 1-64 characters of A-Z a-z 0-9 _ -, not `source`",
                        r.name
                    ),
                );
            }
            if l.rungs[..n].iter().any(|o| o.name == r.name) {
                p.add(&key, format!("name {:?} is used twice", r.name));
            }
            if r.height < 16 || !r.height.is_multiple_of(2) {
                p.add(&key, format!("height {}: even and at least 16", r.height));
            }
            p.positive(&format!("{key}.video_kbps"), u64::from(r.video_kbps));
        }

        let o = &self.origin;
        p.required_listen("origin.http_listen", &o.http_listen);
        if o.window_segments < 3 {
            p.add(
                "origin.window_segments",
                "at least 3 (HLS players start three segments from the end)",
            );
        }
        p.secret("origin.push_token", &o.push_token);

        if self.store.kind == StoreKind::S3 {
            let s3 = &self.store.s3;
            if s3.bucket.trim().is_empty() {
                p.add(
                    "store.s3.bucket",
                    "empty: store.kind = \"s3\" needs a bucket",
                );
            }
            if !s3.endpoint.trim().is_empty() {
                p.url("store.s3.endpoint", &s3.endpoint, &["http", "https"]);
            }
        }

        let e = &self.edge;
        p.required_listen("edge.http_listen", &e.http_listen);
        if e.role != "edge" && e.role != "shield" {
            p.add("edge.role", format!("{:?}: `edge` or `shield`", e.role));
        }
        for (n, u) in e.upstreams.iter().enumerate() {
            p.url(&format!("edge.upstreams[{n}]"), u, &["http", "https"]);
        }
        p.positive("edge.cache_mb", e.cache_mb);
        p.positive("edge.upstream_timeout_ms", e.upstream_timeout_ms);
        p.secret("edge.signing_secret", &e.signing_secret);
        if !e.signed_streams.is_empty() && e.signing_secret.is_empty() {
            p.add(
                "edge.signed_streams",
                "set, but edge.signing_secret is empty: nothing could be played",
            );
        }
        let mut regions = Vec::new();
        for (n, d) in e.director.iter().enumerate() {
            let key = format!("edge.director[{n}]");
            match d.split_once('=') {
                Some((region, url)) if !region.trim().is_empty() => {
                    regions.push(region.trim());
                    p.url(&key, url, &["http", "https"]);
                }
                _ => p.add(&key, format!("{d:?}: want REGION=URL")),
            }
        }
        for (region, near) in &e.nearest {
            for r in near {
                if !regions.contains(&r.as_str()) {
                    p.add(
                        &format!("edge.nearest.{region}"),
                        format!("{r:?} is not a region of edge.director"),
                    );
                }
            }
        }

        let r = &self.rooms;
        p.required_listen("rooms.http_listen", &r.http_listen);
        p.secret("rooms.api_secret", &r.api_secret);
        p.positive("rooms.token_ttl_secs", r.token_ttl_secs);
        if r.max_participants < 2 {
            p.add("rooms.max_participants", "at least 2");
        }
        if r.sfu {
            p.required_listen("rooms.media_listen", &r.media_listen);
            if !r.media_ports.trim().is_empty() {
                p.check("rooms.media_ports", port_range(&r.media_ports, 1024));
            }
            for (n, a) in r.media_addresses.iter().enumerate() {
                if a.trim().parse::<std::net::IpAddr>().is_err() {
                    p.add(
                        &format!("rooms.media_addresses[{n}]"),
                        format!("{a:?} is not an IP address"),
                    );
                }
            }
        }
        for (n, s) in r.ice_servers.iter().enumerate() {
            if !["stun:", "turn:", "turns:"]
                .iter()
                .any(|s2| s.starts_with(s2))
            {
                p.add(
                    &format!("rooms.ice_servers[{n}]"),
                    format!("{s:?}: a stun:, turn: or turns: URL"),
                );
            }
        }
        for (n, node) in r.nodes.iter().enumerate() {
            p.url(&format!("rooms.nodes[{n}]"), node, &["http", "https"]);
        }
        for (n, name) in r.nodes_dns.iter().enumerate() {
            let port = name
                .trim()
                .rsplit_once(':')
                .map(|(_, port)| port.parse::<u16>());
            if !matches!(port, Some(Ok(p)) if p != 0) {
                p.add(
                    &format!("rooms.nodes_dns[{n}]"),
                    format!("{name:?} is not host:port"),
                );
            }
        }
        if !r.nodes_dns.is_empty() {
            p.url("rooms.node_url", &r.node_url, &["http", "https"]);
            // the names give addresses: by name this node would be a member twice
            let host_port = r.node_url.trim().split_once("://").map(|(_, rest)| {
                rest.split('/')
                    .next()
                    .unwrap_or_default()
                    .parse::<std::net::SocketAddr>()
            });
            if matches!(host_port, Some(Err(_))) {
                p.add(
                    "rooms.node_url",
                    format!(
                        "{:?}: with rooms.nodes_dns, this node's URL by its IP address and port \
                         (http://ADDRESS:PORT), as the names resolve to",
                        r.node_url
                    ),
                );
            }
        }
        if !r.nodes.is_empty() || !r.nodes_dns.is_empty() {
            let me = r.node_url.trim().trim_end_matches('/');
            let listed = r.nodes.iter().any(|n| n.trim().trim_end_matches('/') == me);
            if r.nodes_dns.is_empty() && !listed {
                p.add(
                    "rooms.node_url",
                    format!("{:?} is not one of rooms.nodes", r.node_url),
                );
            }
            if r.api_secret.is_empty() {
                p.add(
                    "rooms.api_secret",
                    "empty: rooms nodes ask each other where a room lives with it",
                );
            }
        }
        if !r.restream_url.trim().is_empty() {
            p.url("rooms.restream_url", &r.restream_url, &["rtmp", "rtmps"]);
        }
        p.even_size("rooms.restream_width", r.restream_width, r.restream_height);
        p.positive("rooms.restream_fps", u64::from(r.restream_fps));
        p.positive("rooms.restream_kbps", u64::from(r.restream_kbps));

        let t = &self.turn;
        for (key, v) in [
            ("turn.listen_udp", &t.listen_udp),
            ("turn.listen_tcp", &t.listen_tcp),
            ("turn.listen_tls", &t.listen_tls),
        ] {
            p.check(key, listen_addr(v));
        }
        p.check("turn.relay_ports", port_range(&t.relay_ports, 65536));
        if !t.relay_address.trim().is_empty()
            && t.relay_address.trim().parse::<std::net::IpAddr>().is_err()
        {
            p.add(
                "turn.relay_address",
                format!("{:?} is not an IP address", t.relay_address),
            );
        }
        if t.tls_cert.is_empty() != t.tls_key.is_empty() {
            p.add("turn.tls_key", "turn.tls_cert and turn.tls_key go together");
        }
        p.secret("turn.secret", &t.secret);
        p.positive("turn.credential_ttl_secs", t.credential_ttl_secs);

        if self.bus.kind == BusKind::Kafka && self.bus.brokers.trim().is_empty() {
            p.add(
                "bus.brokers",
                "empty: bus.kind = \"kafka\" needs host:port of its brokers",
            );
        }
        if self.bus.topic.trim().is_empty() {
            p.add("bus.topic", "empty");
        }

        let a = &self.archiver;
        if a.group.trim().is_empty() {
            p.add("archiver.group", "empty");
        }
        p.positive("archiver.max_attempts", u64::from(a.max_attempts));
        p.even_size("archiver.width", a.width, a.height);
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(config: &Config) -> Vec<String> {
        config.check().into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn the_embedded_defaults_are_fine() {
        assert_eq!(Config::default().check(), vec![]);
    }

    #[test]
    fn each_problem_names_its_key() {
        let c = Config::from_toml(
            r#"
            [ingest]
            rtmp_listen = "1935"
            origin_url = "ftp://origin"
            [ingest.keys]
            short = "main"
            [ladder]
            part_ms = 2000
            x264_preset = "quick"
            rungs = [{ name = "a", height = 720, video_kbps = 1 }, { name = "a", height = 361, video_kbps = 0 }]
            [edge]
            role = "cache"
            upstreams = ["http://origin:8080", "origin:8080"]
            director = ["eu=http://edge-eu:8081", "us"]
            nearest = { eu = ["ap"] }
            [rooms]
            api_secret = "s3cret"
            media_ports = "50099-50000"
            [turn]
            relay_ports = "49152"
            [store]
            kind = "s3"
            [bus]
            kind = "kafka"
            brokers = ""
            "#,
        )
        .expect("parses");
        assert_eq!(
            keys(&c),
            [
                "ingest.rtmp_listen",
                "ingest.keys.short",
                "ingest.origin_url",
                "ladder.part_ms",
                "ladder.x264_preset",
                "ladder.rungs[1]",
                "ladder.rungs[1]",
                "ladder.rungs[1].video_kbps",
                "store.s3.bucket",
                "edge.role",
                "edge.upstreams[1]",
                "edge.director[1]",
                "edge.nearest.eu",
                "rooms.api_secret",
                "rooms.media_ports",
                "turn.relay_ports",
                "bus.brokers",
            ]
        );
    }

    #[test]
    fn rooms_nodes_by_list_or_by_name() {
        let rooms = |extra: &str| {
            let c = Config::from_toml(&format!(
                "[rooms]\napi_secret = \"{}\"\n{extra}",
                "k".repeat(32)
            ))
            .expect("parses");
            keys(&c)
        };
        let none: [&str; 0] = [];
        assert_eq!(
            rooms(r#"nodes = ["http://a:7880", "http://b:7880"]"#),
            ["rooms.node_url"],
            "this node is not one of the list"
        );
        assert_eq!(
            rooms("nodes = [\"http://a:7880\"]\nnode_url = \"http://a:7880/\""),
            none
        );
        assert_eq!(
            rooms("nodes_dns = [\"rooms-nodes:7880\"]\nnode_url = \"http://10.0.0.7:7880\""),
            none,
            "found by name: this node need not be listed"
        );
        assert_eq!(
            rooms(r#"nodes_dns = ["rooms-nodes", "rooms-nodes:0"]"#),
            ["rooms.nodes_dns[0]", "rooms.nodes_dns[1]", "rooms.node_url"]
        );
        assert_eq!(
            rooms("nodes_dns = [\"rooms-nodes:7880\"]\nnode_url = \"http://rooms-a:7880\""),
            ["rooms.node_url"],
            "by name it would be a member twice: by its address"
        );
        assert_eq!(
            rooms("nodes_dns = [\"rooms-nodes:7880\"]\nnode_url = \"http://[fd00::7]:7880\""),
            none
        );
    }

    #[test]
    fn listen_addresses_and_port_ranges() {
        assert_eq!(listen_addr(""), Ok(None));
        assert_eq!(
            listen_addr(" 127.0.0.1:80 "),
            Ok(Some(([127, 0, 0, 1], 80).into()))
        );
        assert!(listen_addr("[::1]:443").is_ok());
        assert!(listen_addr("localhost:80").is_err());
        assert_eq!(port_range("50000-50099", 1024), Ok((50000, 50099)));
        assert!(port_range("0-10", 1024).is_err());
        assert!(port_range("10-5", 1024).is_err());
        assert!(port_range("1-2000", 1024).is_err());
        assert_eq!(port_range("1-65535", 65536), Ok((1, 65535)));
    }
}
