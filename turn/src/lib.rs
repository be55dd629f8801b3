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
pub mod core;
pub mod filter;
pub mod stun;
