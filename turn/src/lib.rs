//! `tidecast turn`: the NAT-traversal server rooms hand to clients — STUN binding (RFC 8489)
//! and TURN relaying (RFC 8656) over UDP, with the TURN REST API credential scheme and a peer
//! filter that keeps relays away from internal addresses.
//!
//! * [`stun`]: the message codec (pure, fuzzed).
//! * [`auth`]: REST-API credentials, long-term keys, nonces.
//! * [`filter`]: which peers a relay may reach.
//! * [`core`]: allocations, permissions, channels, lifetimes, quotas (pure, time passed in).
//! * [`server`]: the sockets around the core.
#![deny(missing_docs)]

pub mod auth;
pub mod binding;
pub mod core;
pub mod filter;
pub mod server;
pub mod stun;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tidecast_common::config::TurnConfig;

/// A bad `[turn]` setting.
#[derive(Debug, thiserror::Error)]
#[error("turn.{key}: {why}")]
pub struct TurnConfigError {
    /// The key.
    pub key: &'static str,
    /// What is wrong.
    pub why: String,
}

/// Everything `[turn]` configures, parsed.
#[derive(Debug, Clone)]
pub struct TurnSetup {
    /// Sockets to open.
    pub listeners: server::Listeners,
    /// REST-API credentials (the secret, or a random one in development mode).
    pub credentials: auth::Credentials,
    /// The peer filter.
    pub filter: filter::PeerFilter,
    /// Quotas and lifetimes.
    pub limits: core::Limits,
    /// No secret was configured: a random one was made.
    pub dev_secret: bool,
    /// No TLS certificate was configured: a self-signed one was made.
    pub self_signed: bool,
    /// Host clients are told to use.
    pub public_host: String,
    /// Lifetime of handed-out credentials.
    pub credential_ttl: Duration,
}

fn listen(key: &'static str, v: &str) -> Result<Option<SocketAddr>, TurnConfigError> {
    tidecast_common::config::check::listen_addr(v).map_err(|why| TurnConfigError { key, why })
}

/// Parse `[turn]` (and load or make the TLS certificate).
pub fn setup(cfg: &TurnConfig) -> Result<TurnSetup, TurnConfigError> {
    let udp = listen("listen_udp", &cfg.listen_udp)?;
    let tcp = listen("listen_tcp", &cfg.listen_tcp)?;
    let tls_at = listen("listen_tls", &cfg.listen_tls)?;
    let ports =
        tidecast_common::config::check::port_range(&cfg.relay_ports, 65536).map_err(|why| {
            TurnConfigError {
                key: "relay_ports",
                why,
            }
        })?;
    let relay_ip: IpAddr = if cfg.relay_address.trim().is_empty() {
        let listen_ip = udp.or(tcp).map(|a| a.ip());
        match listen_ip {
            Some(ip) if !ip.is_unspecified() => ip,
            _ => tidecast_common::net::default_route_ip().unwrap_or(IpAddr::from([127, 0, 0, 1])),
        }
    } else {
        cfg.relay_address
            .trim()
            .parse()
            .map_err(|_| TurnConfigError {
                key: "relay_address",
                why: format!("{:?} is not an IP address", cfg.relay_address),
            })?
    };
    let allowed = cfg
        .allowed_peers
        .iter()
        .map(|c| filter::Cidr::parse(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|why| TurnConfigError {
            key: "allowed_peers",
            why,
        })?;
    let dev_secret = cfg.secret.is_empty();
    let secret = if dev_secret {
        tidecast_common::keys::random_hex(32)
    } else {
        cfg.secret.clone()
    };
    let public_host = if cfg.public_host.trim().is_empty() {
        match relay_ip {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    } else {
        cfg.public_host.trim().to_string()
    };
    let mut self_signed = false;
    let tls = match tls_at {
        Some(at) => {
            let names = vec![
                public_host.trim_matches(['[', ']']).to_string(),
                "localhost".into(),
            ];
            let (acceptor, generated) =
                tls::acceptor(&cfg.tls_cert, &cfg.tls_key, names).map_err(|e| TurnConfigError {
                    key: "tls_cert",
                    why: e.to_string(),
                })?;
            self_signed = generated;
            Some((at, acceptor))
        }
        None => None,
    };
    Ok(TurnSetup {
        self_signed,
        listeners: server::Listeners {
            udp,
            tcp,
            tls,
            relay_ip,
            relay_ports: ports,
        },
        credentials: auth::Credentials::new(&secret, &cfg.realm),
        filter: filter::PeerFilter::new(allowed),
        limits: core::Limits {
            per_user: cfg.max_allocations_per_user.max(1),
            total: cfg.max_allocations.max(1),
            bandwidth_bps: cfg.bandwidth_kbps.saturating_mul(1000),
            ..core::Limits::default()
        },
        dev_secret,
        public_host,
        credential_ttl: Duration::from_secs(cfg.credential_ttl_secs.clamp(60, 86_400)),
    })
}

impl TurnSetup {
    /// The URLs clients are given for the listeners that are on (with the running ports).
    pub fn urls(
        &self,
        udp: Option<SocketAddr>,
        tcp: Option<SocketAddr>,
        tls: Option<SocketAddr>,
    ) -> Vec<String> {
        let host = &self.public_host;
        let mut v = Vec::new();
        if let Some(a) = udp {
            v.push(format!("stun:{host}:{}", a.port()));
            v.push(format!("turn:{host}:{}?transport=udp", a.port()));
        }
        if let Some(a) = tcp {
            v.push(format!("turn:{host}:{}?transport=tcp", a.port()));
        }
        // browsers check the certificate: a self-signed one is of no use to them
        if let Some(a) = tls.filter(|_| !self.self_signed) {
            v.push(format!("turns:{host}:{}?transport=tcp", a.port()));
        }
        v
    }
}
