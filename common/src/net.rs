//! Which local addresses a media or relay socket announces.

use std::net::IpAddr;

/// The address of the default route (found without sending anything), if there is one that is
/// neither loopback nor unspecified.
pub fn default_route_ip() -> Option<IpAddr> {
    let ip = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .ok()?
        .ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// The addresses to bind for a listen address of `ip`: itself, or for an unspecified one the
/// loopback and the address of the default route.
pub fn addresses_for(ip: IpAddr) -> Vec<IpAddr> {
    if !ip.is_unspecified() {
        return vec![ip];
    }
    let mut v = vec![IpAddr::from([127, 0, 0, 1])];
    v.extend(default_route_ip());
    v
}
