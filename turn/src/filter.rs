//! Which peers a relay may reach: by default nothing internal (loopback, private, CGNAT,
//! link-local with the cloud metadata address, multicast, unspecified, documentation, reserved;
//! IPv6 ULA/link-local/loopback, and all IPv4 ranges again in IPv4-mapped, -compatible and
//! NAT64 form), unless an explicit allow-list names it (the deployment's own SFU).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address block `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `10.0.0.0/8`, `::1/128` or a bare address (a single host).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (a, p) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| format!("{text:?}: not an address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: bad prefix length"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

const DENIED_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network", unspecified
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // RFC 1918
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // CGNAT
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, 169.254.169.254 metadata
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // RFC 1918
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // TEST-NET-1
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // RFC 1918
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
];

const DENIED_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128), // unspecified
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128), // loopback
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF assignments, Teredo
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16), // 6to4 (embeds IPv4)
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // ULA
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), // site-local
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), // multicast
];

/// Why a peer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An internal, reserved or special-purpose address.
    Internal,
}

/// The relay's peer filter.
#[derive(Debug, Clone, Default)]
pub struct PeerFilter {
    allowed: Vec<Cidr>,
}

impl PeerFilter {
    /// A filter letting `allowed` through on top of the public internet.
    pub fn new(allowed: Vec<Cidr>) -> PeerFilter {
        PeerFilter { allowed }
    }

    /// Whether the relay may send to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.allowed.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        if is_internal(ip) {
            return Err(Refusal::Internal);
        }
        Ok(())
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    DENIED_V4.iter().any(|(net, p)| {
        Cidr {
            addr: IpAddr::V4(*net),
            prefix: *p,
        }
        .contains(IpAddr::V4(ip))
    })
}

/// Whether `ip` is one no relay may reach without an allow-list entry.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // IPv4-mapped ::ffff:a.b.c.d, IPv4-compatible ::a.b.c.d, NAT64 64:ff9b::a.b.c.d
            let embedded = (s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0))
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            if embedded {
                let o = v6.octets();
                return internal_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            DENIED_V6.iter().any(|(net, p)| {
                Cidr {
                    addr: IpAddr::V6(*net),
                    prefix: *p,
                }
                .contains(ip)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_in_every_form() {
        let f = PeerFilter::default();
        for bad in [
            "127.0.0.1",
            "10.0.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.251",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2001:db8::1",
        ] {
            assert_eq!(f.check(ip(bad)), Err(Refusal::Internal), "{bad}");
        }
        for good in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(f.check(ip(good)), Ok(()), "{good}");
        }
    }

    #[test]
    fn the_allow_list_lets_named_blocks_through() {
        let f = PeerFilter::new(vec![
            Cidr::parse("10.1.0.0/16").unwrap(),
            Cidr::parse("127.0.0.1").unwrap(),
        ]);
        assert_eq!(f.check(ip("10.1.2.3")), Ok(()));
        assert_eq!(f.check(ip("127.0.0.1")), Ok(()));
        assert!(f.check(ip("10.2.0.1")).is_err());
        assert!(f.check(ip("127.0.0.2")).is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
    }
}
