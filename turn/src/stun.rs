//! STUN messages (RFC 8489) and TURN ChannelData (RFC 8656 §12): a pure codec. Parsing checks
//! every length before it reads; nothing here panics on any input (fuzzed).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The magic cookie of every RFC 5389+ message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Largest message accepted or built.
pub const MAX_MESSAGE: usize = 65_535 + 20;

/// STUN/TURN methods used here.
#[allow(missing_docs)]
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types used here.
#[allow(missing_docs)]
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
}

/// Message class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A request (wants a response).
    Request,
    /// An indication (no response).
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0,
            Class::Indication => 1,
            Class::Success => 2,
            Class::Error => 3,
        }
    }
}

/// Why bytes are not a STUN message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Too short, a length past the end, or not a STUN header.
    #[error("malformed STUN message: {0}")]
    Malformed(&'static str),
}

/// A parsed message: header fields and the attributes as (type, value) slices of the input.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// Method (12 bits).
    pub method: u16,
    /// Class.
    pub class: Class,
    /// Transaction id.
    pub transaction: [u8; 12],
    /// Attributes in order.
    pub attributes: Vec<(u16, &'a [u8])>,
    /// Offset of MESSAGE-INTEGRITY's header in the input, if present.
    integrity_at: Option<usize>,
    raw: &'a [u8],
}

/// Whether `data` starts like a STUN message (first two bits 0 and the cookie).
pub fn is_stun(data: &[u8]) -> bool {
    data.len() >= 20 && data[0] & 0xC0 == 0 && data[4..8] == MAGIC_COOKIE.to_be_bytes()
}

/// Whether `data` starts like a ChannelData message (channel 0x4000-0x7FFF: RFC 8656 narrowed it
/// to 0x4FFF, RFC 5766 clients still use the rest).
pub fn is_channel_data(data: &[u8]) -> bool {
    data.len() >= 4 && (0x40..=0x7F).contains(&data[0])
}

/// The length of the STUN message or ChannelData frame at the start of a stream (TCP/TLS),
/// padding included for ChannelData; `None` when more bytes are needed to tell; an error when
/// the bytes are neither.
pub fn frame_length(data: &[u8]) -> Result<Option<usize>, StunError> {
    if data.len() < 4 {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    if is_channel_data(data) {
        // over streams ChannelData is padded to 4 bytes (RFC 8656 §12.5)
        return Ok(Some(4 + len.div_ceil(4) * 4));
    }
    if data[0] & 0xC0 != 0 {
        return Err(StunError::Malformed("neither STUN nor ChannelData"));
    }
    if len % 4 != 0 {
        return Err(StunError::Malformed("length not a multiple of 4"));
    }
    Ok(Some(20 + len))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

impl<'a> Message<'a> {
    /// Parse one message (the whole of `data`).
    pub fn parse(data: &'a [u8]) -> Result<Message<'a>, StunError> {
        if !is_stun(data) {
            return Err(StunError::Malformed("no STUN header"));
        }
        let kind = u16_at(data, 0).ok_or(StunError::Malformed("short header"))?;
        let len = usize::from(u16_at(data, 2).ok_or(StunError::Malformed("short header"))?);
        if len % 4 != 0 || 20 + len != data.len() {
            return Err(StunError::Malformed("length does not match"));
        }
        let method = (kind & 0x000F) | ((kind & 0x00E0) >> 1) | ((kind & 0x3E00) >> 2);
        let class = match ((kind >> 7) & 2) | ((kind >> 4) & 1) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };
        let mut transaction = [0u8; 12];
        transaction.copy_from_slice(&data[8..20]);
        let mut attributes = Vec::new();
        let mut integrity_at = None;
        let mut at = 20;
        while at < data.len() {
            let t = u16_at(data, at).ok_or(StunError::Malformed("short attribute"))?;
            let l =
                usize::from(u16_at(data, at + 2).ok_or(StunError::Malformed("short attribute"))?);
            let value = data
                .get(at + 4..at + 4 + l)
                .ok_or(StunError::Malformed("attribute past the end"))?;
            if integrity_at.is_some() && t != attr::FINGERPRINT {
                // only FINGERPRINT may follow MESSAGE-INTEGRITY; the rest is ignored (§14.5)
                break;
            }
            if t == attr::MESSAGE_INTEGRITY {
                integrity_at = Some(at);
            }
            attributes.push((t, value));
            at += 4 + l.div_ceil(4) * 4;
        }
        Ok(Message {
            method,
            class,
            transaction,
            attributes,
            integrity_at,
            raw: data,
        })
    }

    /// The first attribute of type `t`.
    pub fn get(&self, t: u16) -> Option<&'a [u8]> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == t)
            .map(|(_, v)| *v)
    }

    /// A string attribute (USERNAME, REALM, NONCE).
    pub fn text(&self, t: u16) -> Option<&'a str> {
        self.get(t).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// A 32-bit attribute (LIFETIME).
    pub fn u32(&self, t: u16) -> Option<u32> {
        let v = self.get(t)?;
        Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
    }

    /// An XOR-…-ADDRESS attribute.
    pub fn xor_address(&self, t: u16) -> Option<SocketAddr> {
        decode_xor_address(self.get(t)?, &self.transaction)
    }

    /// Every XOR-PEER-ADDRESS (CreatePermission may carry several).
    pub fn xor_addresses(&self, t: u16) -> Vec<Option<SocketAddr>> {
        self.attributes
            .iter()
            .filter(|(k, _)| *k == t)
            .map(|(_, v)| decode_xor_address(v, &self.transaction))
            .collect()
    }

    /// Types of comprehension-required attributes (below 0x8000) this server does not know.
    pub fn unknown_required(&self, known: &[u16]) -> Vec<u16> {
        self.attributes
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| *t < 0x8000 && !known.contains(t))
            .collect()
    }

    /// Whether MESSAGE-INTEGRITY is present and right for `key` (HMAC-SHA1, §14.5).
    pub fn integrity_ok(&self, key: &[u8]) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        let Some(given) = self.raw.get(at + 4..at + 24) else {
            return false;
        };
        let Some(head) = self.raw.get(..at) else {
            return false;
        };
        let mut covered = head.to_vec();
        // the length as if the message ended after MESSAGE-INTEGRITY
        let len = (at + 24 - 20) as u16;
        covered[2..4].copy_from_slice(&len.to_be_bytes());
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
            return false;
        };
        mac.update(&covered);
        mac.verify_slice(given).is_ok()
    }
}

fn decode_xor_address(v: &[u8], transaction: &[u8; 12]) -> Option<SocketAddr> {
    let family = *v.get(1)?;
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match family {
        1 => {
            let b: [u8; 4] = v.get(4..8)?.try_into().ok()?;
            let mut ip = [0u8; 4];
            for i in 0..4 {
                ip[i] = b[i] ^ cookie[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        2 => {
            let b: [u8; 16] = v.get(4..20)?.try_into().ok()?;
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&cookie);
            mask[4..].copy_from_slice(transaction);
            let mut ip = [0u8; 16];
            for i in 0..16 {
                ip[i] = b[i] ^ mask[i];
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

/// Builds a message attribute by attribute.
#[derive(Debug, Clone)]
pub struct Builder {
    buf: Vec<u8>,
    transaction: [u8; 12],
}

impl Builder {
    /// A message of `method` and `class` with `transaction`.
    pub fn new(method: u16, class: Class, transaction: [u8; 12]) -> Builder {
        let c = class.bits();
        let kind = (method & 0x000F)
            | ((method & 0x0070) << 1)
            | ((method & 0x0F80) << 2)
            | ((c & 1) << 4)
            | ((c & 2) << 7);
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&kind.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction);
        Builder { buf, transaction }
    }

    fn set_length(&mut self, len: usize) {
        let len = (len - 20) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    /// Add an attribute (padded to 4 bytes).
    pub fn add(mut self, t: u16, value: &[u8]) -> Builder {
        let value = &value[..value.len().min(0xFFFF)];
        self.buf.extend_from_slice(&t.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = value.len().div_ceil(4) * 4 - value.len();
        self.buf.extend(std::iter::repeat_n(0, pad));
        let len = self.buf.len();
        self.set_length(len);
        self
    }

    /// Add a 32-bit attribute.
    pub fn add_u32(self, t: u16, v: u32) -> Builder {
        self.add(t, &v.to_be_bytes())
    }

    /// Add an XOR-…-ADDRESS attribute.
    pub fn add_xor_address(self, t: u16, addr: SocketAddr) -> Builder {
        let tid = self.transaction;
        self.add(t, &encode_xor_address(addr, &tid))
    }

    /// Add ERROR-CODE.
    pub fn add_error(self, code: u16, reason: &str) -> Builder {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.add(attr::ERROR_CODE, &v)
    }

    /// Add MESSAGE-INTEGRITY (HMAC-SHA1 with `key`).
    pub fn integrity(mut self, key: &[u8]) -> Builder {
        let len = self.buf.len() + 24;
        self.set_length(len);
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
            return self;
        };
        mac.update(&self.buf);
        let tag = mac.finalize().into_bytes();
        self.add(attr::MESSAGE_INTEGRITY, &tag)
    }

    /// Add FINGERPRINT and return the bytes.
    pub fn fingerprint(mut self) -> Vec<u8> {
        let len = self.buf.len() + 8;
        self.set_length(len);
        let crc = crc32fast::hash(&self.buf) ^ FINGERPRINT_XOR;
        self.add_u32(attr::FINGERPRINT, crc).buf
    }

    /// The bytes, without FINGERPRINT.
    pub fn build(self) -> Vec<u8> {
        self.buf
    }
}

fn encode_xor_address(addr: SocketAddr, transaction: &[u8; 12]) -> Vec<u8> {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut v = Vec::with_capacity(20);
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.extend_from_slice(&[0, 1]);
            v.extend_from_slice(&port.to_be_bytes());
            for (b, c) in ip.octets().iter().zip(cookie) {
                v.push(b ^ c);
            }
        }
        IpAddr::V6(ip) => {
            v.extend_from_slice(&[0, 2]);
            v.extend_from_slice(&port.to_be_bytes());
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&cookie);
            mask[4..].copy_from_slice(transaction);
            for (b, m) in ip.octets().iter().zip(mask) {
                v.push(b ^ m);
            }
        }
    }
    v
}

/// A ChannelData message: channel number and payload.
pub fn parse_channel_data(data: &[u8]) -> Option<(u16, &[u8])> {
    if !is_channel_data(data) {
        return None;
    }
    let channel = u16_at(data, 0)?;
    let len = usize::from(u16_at(data, 2)?);
    Some((channel, data.get(4..4 + len)?))
}

/// ChannelData for `payload` on `channel`, padded to 4 bytes when `padded` (streams).
pub fn channel_data(channel: u16, payload: &[u8], padded: bool) -> Vec<u8> {
    let payload = &payload[..payload.len().min(0xFFFF)];
    let mut v = Vec::with_capacity(payload.len() + 8);
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    if padded {
        v.extend(std::iter::repeat_n(
            0,
            payload.len().div_ceil(4) * 4 - payload.len(),
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn a_built_message_parses_back_with_integrity_and_fingerprint() {
        let peer: SocketAddr = "192.0.2.7:3479".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::5]:40000".parse().unwrap();
        let bytes = Builder::new(method::CREATE_PERMISSION, Class::Request, TID)
            .add(attr::USERNAME, b"1700000000:alice")
            .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            .add_xor_address(attr::XOR_PEER_ADDRESS, v6)
            .integrity(b"key")
            .fingerprint();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.method, method::CREATE_PERMISSION);
        assert_eq!(m.class, Class::Request);
        assert_eq!(m.transaction, TID);
        assert_eq!(m.text(attr::USERNAME), Some("1700000000:alice"));
        assert_eq!(
            m.xor_addresses(attr::XOR_PEER_ADDRESS),
            vec![Some(peer), Some(v6)]
        );
        assert!(m.integrity_ok(b"key"));
        assert!(!m.integrity_ok(b"other"));
        let crc = m.u32(attr::FINGERPRINT).unwrap();
        let covered = &bytes[..bytes.len() - 8];
        let mut c = covered.to_vec();
        c[2..4].copy_from_slice(&((bytes.len() - 20) as u16).to_be_bytes());
        assert_eq!(crc, crc32fast::hash(&c) ^ FINGERPRINT_XOR);
    }

    #[test]
    fn rfc5769_sample_request_checks_out() {
        // RFC 5769 §2.1 (the SOFTWARE value with its padding of spaces)
        let hex = "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e2074657374\
                   20636c69656e74002400046e0001ff80290008932ff9b151263b36000600096576\
                   746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571\
                   a280280004e57a3bcf";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.method, method::BINDING);
        assert_eq!(m.text(attr::USERNAME), Some("evtj:h6vY"));
        assert!(m.integrity_ok(b"VOkJxbRl1RmTxUk/WvJxBt"));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(Message::parse(&[]).is_err());
        let mut b = Builder::new(method::BINDING, Class::Request, TID).build();
        b[3] = 8; // claims 8 bytes of attributes that are not there
        assert!(Message::parse(&b).is_err());
        let mut b = Builder::new(method::BINDING, Class::Request, TID)
            .add(attr::SOFTWARE, b"x")
            .build();
        b[23] = 200; // attribute length past the end
        assert!(Message::parse(&b).is_err());
        assert_eq!(frame_length(&[0x40, 0, 0, 5]), Ok(Some(12)));
        assert!(frame_length(&[0xFF, 0, 0, 0]).is_err());
        assert_eq!(parse_channel_data(&[0x40, 1, 0, 9, 1]), None);
    }

    #[test]
    fn channel_data_round_trips_with_and_without_padding() {
        let v = channel_data(0x4001, b"hello", true);
        assert_eq!(v.len(), 12);
        assert_eq!(parse_channel_data(&v), Some((0x4001, &b"hello"[..])));
        assert_eq!(channel_data(0x4001, b"hello", false).len(), 9);
    }
}
