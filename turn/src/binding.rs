//! The client side of a STUN Binding (RFC 8489 §3): what a server behind NAT — tidecast's SFU —
//! sends to learn the address the world sees for its socket, and how it reads the answer. Pure:
//! the caller owns the socket, the retries and the clock.

use std::net::SocketAddr;

use crate::stun::{attr, method, Builder, Class, Message};

/// A Binding request with `transaction` (and FINGERPRINT, as RFC 8489 clients send it).
pub fn request(transaction: [u8; 12]) -> Vec<u8> {
    Builder::new(method::BINDING, Class::Request, transaction).fingerprint()
}

/// The mapped address in `response` if it is the success answer to `transaction`
/// (XOR-MAPPED-ADDRESS, or the old MAPPED-ADDRESS of RFC 3489 servers); `None` for anything
/// else (another transaction, an error response, not STUN).
pub fn mapped_address(response: &[u8], transaction: &[u8; 12]) -> Option<SocketAddr> {
    let m = Message::parse(response).ok()?;
    if m.method != method::BINDING || m.class != Class::Success || m.transaction != *transaction {
        return None;
    }
    m.xor_address(attr::XOR_MAPPED_ADDRESS)
        .or_else(|| plain_address(m.get(attr::MAPPED_ADDRESS)?))
}

fn plain_address(v: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes(v.get(2..4)?.try_into().ok()?);
    let ip: std::net::IpAddr = match v.get(1)? {
        1 => <[u8; 4]>::try_from(v.get(4..8)?).ok()?.into(),
        2 => <[u8; 16]>::try_from(v.get(4..20)?).ok()?.into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_answer_to_our_transaction_gives_the_mapped_address() {
        let tid = [7u8; 12];
        let req = request(tid);
        let parsed = Message::parse(&req).expect("request parses");
        assert_eq!(
            (parsed.method, parsed.class),
            (method::BINDING, Class::Request)
        );
        let public: SocketAddr = "203.0.113.20:50000".parse().unwrap();
        let answer = Builder::new(method::BINDING, Class::Success, tid)
            .add_xor_address(attr::XOR_MAPPED_ADDRESS, public)
            .fingerprint();
        assert_eq!(mapped_address(&answer, &tid), Some(public));
        let v6: SocketAddr = "[2001:db8::5]:3478".parse().unwrap();
        let answer = Builder::new(method::BINDING, Class::Success, tid)
            .add_xor_address(attr::XOR_MAPPED_ADDRESS, v6)
            .build();
        assert_eq!(mapped_address(&answer, &tid), Some(v6));
        // an RFC 3489 server's plain MAPPED-ADDRESS
        let answer = Builder::new(method::BINDING, Class::Success, tid)
            .add(attr::MAPPED_ADDRESS, &[0, 1, 0xC3, 0x50, 203, 0, 113, 20])
            .build();
        assert_eq!(mapped_address(&answer, &tid), Some(public));
    }

    #[test]
    fn other_transactions_errors_and_garbage_give_nothing() {
        let tid = [7u8; 12];
        let public: SocketAddr = "203.0.113.20:50000".parse().unwrap();
        let other = Builder::new(method::BINDING, Class::Success, [8u8; 12])
            .add_xor_address(attr::XOR_MAPPED_ADDRESS, public)
            .build();
        assert_eq!(mapped_address(&other, &tid), None);
        let error = Builder::new(method::BINDING, Class::Error, tid)
            .add_error(400, "Bad Request")
            .build();
        assert_eq!(mapped_address(&error, &tid), None);
        assert_eq!(mapped_address(b"\x00\x01\x00", &tid), None);
        let truncated = Builder::new(method::BINDING, Class::Success, tid)
            .add(attr::MAPPED_ADDRESS, &[0, 1, 0xC3])
            .build();
        assert_eq!(mapped_address(&truncated, &tid), None);
    }
}
