//! `tidecast-loadgen blocking PORT PATH CLIENTS ROUNDS`: LL-HLS blocking-reload fan-out.
//!
//! Opens CLIENTS keep-alive connections (as players hold them), then per round reads the
//! preload hint from the plain playlist and sends `PATH?_HLS_msn=M&_HLS_part=P` on every
//! connection at once. A poller on its own connection fetches the plain playlist every 2 ms and
//! notes when the part is first listed ("produced"). Prints, per round and overall, when each
//! answer's first byte arrived after production and after the first answer (ms). One thread, so
//! the client's own cost per answer is a couple of microseconds.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Read one HTTP/1.1 response with a Content-Length body; returns (status, body, first byte).
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, Vec<u8>, Instant), Error> {
    let mut first = None;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let len: usize = head
                .split("content-length:")
                .nth(1)
                .and_then(|r| r.split("\r\n").next())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return Ok((status, body, first.unwrap_or_else(Instant::now)));
            }
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err("connection closed".into());
        }
        first.get_or_insert_with(Instant::now);
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn get(s: &mut TcpStream, buf: &mut Vec<u8>, path: &str) -> Result<(u16, String, Instant), Error> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes()).await?;
    let (status, body, first) = read_response(s, buf).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned(), first))
}

fn hint(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:"))?;
    let uri = line.split("URI=\"").nth(1)?.split('"').next()?;
    let mut it = uri.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn listed(text: &str, msn: u64, part: u64) -> bool {
    let uri = format!("URI=\"{msn}.{part}.m4s\"");
    text.lines().any(|l| l.starts_with("#EXT-X-PART:") && l.contains(&uri))
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn line(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  {name:24} p50 {:7.1}  p90 {:7.1}  p99 {:7.1}  max {:7.1}  (n={})",
        pct(&v, 50.0),
        pct(&v, 90.0),
        pct(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN),
        v.len()
    );
}

async fn blocking(port: u16, path: String, clients: usize, rounds: usize) -> Result<(), Error> {
    let addr = ("127.0.0.1", port);
    let (go_tx, go_rx) = watch::channel::<Option<String>>(None);
    let (res_tx, mut res_rx) = tokio::sync::mpsc::unbounded_channel::<Option<Instant>>();
    for _ in 0..clients {
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let mut go = go_rx.clone();
        let res = res_tx.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while go.changed().await.is_ok() {
                let Some(req) = go.borrow_and_update().clone() else { continue };
                let answered = match get(&mut s, &mut buf, &req).await {
                    Ok((200, _, first)) => Some(first),
                    _ => None,
                };
                if res.send(answered).is_err() {
                    return;
                }
            }
        });
    }
    let mut control = TcpStream::connect(addr).await?;
    let mut cbuf = Vec::new();
    let (mut all_prod, mut all_first, mut failed) = (Vec::new(), Vec::new(), 0usize);
    for round in 1..=rounds {
        let (_, text, _) = get(&mut control, &mut cbuf, &path).await?;
        let (msn, part) = hint(&text).ok_or("no preload hint")?;
        let poll_path = path.clone();
        let poller = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.ok()?;
            s.set_nodelay(true).ok()?;
            let mut buf = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let (_, text, at) = get(&mut s, &mut buf, &poll_path).await.ok()?;
                if listed(&text, msn, part) {
                    return Some(at);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            None
        });
        let sent = Instant::now();
        let _ = go_tx.send(Some(format!("{path}?_HLS_msn={msn}&_HLS_part={part}")));
        let mut answers = Vec::with_capacity(clients);
        for _ in 0..clients {
            match tokio::time::timeout(Duration::from_secs(30), res_rx.recv()).await {
                Ok(Some(Some(t))) => answers.push(t),
                _ => failed += 1,
            }
        }
        let seen = poller.await.ok().flatten();
        let Some(&first) = answers.iter().min() else { continue };
        let last = answers.iter().max().copied().unwrap_or(first);
        let ms = |a: Instant, b: Instant| {
            if a >= b { (a - b).as_secs_f64() * 1e3 } else { -((b - a).as_secs_f64() * 1e3) }
        };
        println!(
            "round {round}: part {msn}.{part}: {} answered; held {:.0} ms; first..last {:.1} ms; poller saw it {} from the first answer",
            answers.len(),
            ms(first, sent),
            ms(last, first),
            seen.map(|s| format!("{:+.1} ms", ms(s, first))).unwrap_or_else(|| "-".into())
        );
        all_first.extend(answers.iter().map(|a| ms(*a, first)));
        if let Some(s) = seen {
            all_prod.extend(answers.iter().map(|a| ms(*a, s)));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("\nLL-HLS blocking reload, {clients} concurrent keep-alive clients x {rounds} rounds (ms)");
    line("after first answer", all_first);
    line("after poller saw part", all_prod);
    println!("  failed requests: {failed}  (goal: p99 <= 20 ms after production)");
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: tidecast-loadgen blocking PORT PATH CLIENTS ROUNDS";
    if args.get(1).map(String::as_str) != Some("blocking") || args.len() != 6 {
        return Err(usage.into());
    }
    let port = args[2].parse()?;
    let clients = args[4].parse()?;
    let rounds = args[5].parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(blocking(port, args[3].clone(), clients, rounds))
}
