//! Bad input closes only the offending connection, with the reason logged, while a real
//! publisher keeps streaming without a gap. Also: wrong keys and a second publisher are refused.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{heavy, Publisher, Tidecast};
use crate::live_spine::media;

/// True when the server closes the connection within `within`.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

/// A client-side RTMP handshake (C0/C1, read S0/S1/S2, send C2).
fn handshake(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut c1 = vec![0u8; 1537];
    c1[0] = 3;
    for (i, b) in c1.iter_mut().enumerate().skip(9) {
        *b = (i * 7 % 251) as u8;
    }
    s.write_all(&c1).expect("C0C1");
    let mut s0s1s2 = vec![0u8; 1 + 1536 * 2];
    s.read_exact(&mut s0s1s2).expect("S0S1S2");
    s.write_all(&s0s1s2[1..1537]).expect("C2");
    s
}

/// One RTMP message in a single type-0 chunk on chunk stream 3.
fn message(type_id: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut v = vec![3, 0, 0, 0];
    v.extend_from_slice(&len.to_be_bytes()[1..]);
    v.push(type_id);
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(payload);
    v
}

#[test]
fn bad_input_closes_only_that_connection() {
    let _guard = heavy();
    let t = Tidecast::start(
        &["--stream-key", "s3cret=main"],
        &[("TIDECAST_INGEST__HANDSHAKE_TIMEOUT_SECS", "3")],
    );
    let mut good = Publisher::start(&t.rtmp_url("s3cret"), 40, "640x360");
    t.wait_master("main");
    let (start, _) = media(&t, "main", "360p");
    let start_msn = start.media_sequence;

    // wrong key: refused
    let (ok, err) =
        Publisher::start(&t.rtmp_url("wrong"), 5, "320x240").wait(Duration::from_secs(20));
    assert!(!ok, "publishing with a wrong key must fail: {err}");
    // second publisher on the live key: refused, the first keeps the stream
    let (ok, err) =
        Publisher::start(&t.rtmp_url("s3cret"), 5, "320x240").wait(Duration::from_secs(20));
    assert!(
        !ok,
        "a second publisher on a live key must be refused: {err}"
    );

    // garbage instead of a handshake
    let mut s = TcpStream::connect(("127.0.0.1", t.rtmp_port)).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert!(
        closed_by_server(&mut s, Duration::from_secs(5)),
        "garbage: connection stays open"
    );

    // truncated handshake: C0 and half of C1, then silence
    let mut s = TcpStream::connect(("127.0.0.1", t.rtmp_port)).expect("connect");
    let mut partial = vec![3u8];
    partial.extend_from_slice(&[0u8; 700]);
    s.write_all(&partial).expect("write");
    assert!(
        closed_by_server(&mut s, Duration::from_secs(8)),
        "truncated handshake: still open"
    );

    // absurd chunk size
    let mut s = handshake(t.rtmp_port);
    let mut set_chunk = message(1, &0x7fff_ffffu32.to_be_bytes());
    set_chunk[0] = 2; // protocol control messages use chunk stream 2
    s.write_all(&set_chunk).expect("write");
    assert!(
        closed_by_server(&mut s, Duration::from_secs(5)),
        "absurd chunk size: still open"
    );

    // malformed AMF0 command: a string marker whose length runs past the message
    let mut s = handshake(t.rtmp_port);
    s.write_all(&message(20, &[0x02, 0xff, 0xf0, b'c', b'o']))
        .expect("write");
    assert!(
        closed_by_server(&mut s, Duration::from_secs(5)),
        "malformed AMF: still open"
    );

    // a message restarted mid-way with a shorter length (rml_rtmp's `capacity overflow`
    // panic): a 256-byte video message, its first 128-byte chunk, then a new type-0 header
    let mut s = handshake(t.rtmp_port);
    let mut restart = vec![6, 0, 0, 0, 0, 1, 0, 9, 1, 0, 0, 0];
    restart.extend_from_slice(&[0x17; 128]);
    restart.extend_from_slice(&[6, 0, 0, 0, 0, 0, 2, 9, 1, 0, 0, 0, 0x17, 0]);
    s.write_all(&restart).expect("write");
    assert!(
        closed_by_server(&mut s, Duration::from_secs(5)),
        "restarted message: still open"
    );

    // AMF0 objects nested 5,000 deep (a stack overflow in a recursive decoder)
    let mut s = handshake(t.rtmp_port);
    let mut set_chunk = message(1, &65_536u32.to_be_bytes());
    set_chunk[0] = 2;
    let mut bomb = vec![0x02, 0x00, 0x07];
    bomb.extend_from_slice(b"connect");
    for _ in 0..5_000 {
        bomb.extend_from_slice(&[0x03, 0x00, 0x01, b'a']);
    }
    s.write_all(&[set_chunk, message(20, &bomb)].concat())
        .expect("write");
    assert!(
        closed_by_server(&mut s, Duration::from_secs(5)),
        "AMF nesting bomb: still open"
    );

    // each refusal is logged with its reason (the log line follows the close closely)
    let reasons = [
        "invalid stream key",
        "already being published",
        "rtmp handshake failed",
        "handshake not completed",
        "absurd chunk size",
        "malformed AMF0: truncated value",
        "chunk interrupts an incomplete message",
        "malformed AMF0: nested too deeply",
    ];
    t.wait_for("every reason in the log", Duration::from_secs(5), || {
        let log = t.log();
        reasons.iter().all(|r| log.contains(r)).then_some(())
    });

    // the good publisher kept streaming: no discontinuity, no gap in program date time
    assert!(good.is_running(), "the good publisher was disturbed");
    let (p, text) = t.wait_for("more segments", Duration::from_secs(15), || {
        let (p, text) = media(&t, "main", "360p");
        (p.media_sequence + p.segments.len() as u64 > start_msn + 6).then_some((p, text))
    });
    assert!(!text.contains("#EXT-X-DISCONTINUITY\n"), "{text}");
    assert!(!text.contains("ENDLIST"), "{text}");
    for w in p.segments.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let (pa, pb) = (
            a.program_date_time.expect("PDT"),
            b.program_date_time.expect("PDT"),
        );
        let gap = (pb - pa).num_milliseconds() as f64 / 1000.0 - f64::from(a.duration);
        assert!(gap.abs() < 0.1, "gap of {gap}s between segments:\n{text}");
    }
    let metrics = t.get("/metrics").text();
    assert!(
        metrics.contains("tidecast_ingest_connections_closed_total{reason=\"refused\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("reason=\"panic\""),
        "a connection task panicked:\n{metrics}"
    );
}
