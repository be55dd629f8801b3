//! A minimal HTTP/1.1 JSON client over a fresh TCP connection per request: enough for minting
//! tokens on the rooms node and for Janus's REST API (long polls included).

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::BotError;

/// Largest response body read.
const MAX_RESPONSE: usize = 4 << 20;

/// `method path` on `server` (`host:port`) with an optional JSON body and extra header lines;
/// the status and the JSON body.
pub async fn json(
    server: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), BotError> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {server}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n{headers}Connection: close\r\n\r\n{body}",
        len = body.len(),
    );
    let mut s = TcpStream::connect(server).await?;
    s.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    (&mut s)
        .take(MAX_RESPONSE as u64)
        .read_to_end(&mut response)
        .await?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| BotError::Signaling(format!("{method} {path}: no HTTP response")))?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let raw = &response[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| BotError::Signaling(format!("{method} {path}: bad status line")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| BotError::Signaling(format!("{method} {path}: {e}")))?
    };
    Ok((status, value))
}

/// The body of a `Transfer-Encoding: chunked` response (what is well formed of it).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size.filter(|n| *n > 0) else {
            break;
        };
        let start = eol + 2;
        let Some(chunk) = raw.get(start..start + size) else {
            break;
        };
        out.extend_from_slice(chunk);
        raw = raw.get(start + size + 2..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn chunked_bodies_are_joined_and_truncation_is_harmless() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"), b"abcde");
        assert_eq!(dechunk(b"3\r\nabc\r\nff\r\nde"), b"abc");
        assert_eq!(dechunk(b"zz\r\n"), b"");
    }
}
