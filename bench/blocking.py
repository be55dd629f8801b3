#!/usr/bin/env python3
"""LL-HLS blocking playlist reload fan-out: N clients (default 1000) hold
`media.m3u8?_HLS_msn=M&_HLS_part=P` for the preload-hinted part; the script measures when
each answer arrives relative to the moment the part was produced. Clients keep their
connections alive across rounds, as players do.

"Produced" is taken two ways, both printed:
  * poller: a separate thread polls the plain playlist every 2 ms (keep-alive) and notes when
    the part is first listed (its resolution is ~2 ms plus one request);
  * first answer: the earliest of the N answers (the server wakes waiters when the part lands).

Usage: bench/blocking.py [--clients 1000] [--rounds 5]   (make bench-blocking)
Needs the release binary (cargo build --release -p tidecast) and ffmpeg. Stdlib only.
"""

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def binary():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/tidecast/target"))
    path = os.environ.get("TIDECAST_BIN", os.path.join(target, "release", "tidecast"))
    if not os.access(path, os.X_OK):
        sys.exit(f"build first: cargo build --release -p tidecast ({path} missing)")
    return path


def get(port, path, timeout=5.0):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.read().decode()


def hint(text):
    for line in text.splitlines():
        if line.startswith("#EXT-X-PRELOAD-HINT:"):
            uri = line.split('URI="', 1)[1].split('"', 1)[0]
            msn, part, _ = uri.split(".")
            return int(msn), int(part)
    raise RuntimeError("no preload hint:\n" + text)


def listed(text, msn, part):
    uri = f'URI="{msn}.{part}.m4s"'
    return any(l.startswith("#EXT-X-PART:") and uri in l for l in text.splitlines())


class Poller(threading.Thread):
    """Polls the plain playlist every 2 ms on one keep-alive connection."""

    def __init__(self, port, path, msn, part):
        super().__init__(daemon=True)
        self.port, self.path, self.msn, self.part = port, path, msn, part
        self.seen_ns = None
        self.stop = False

    def run(self):
        s = socket.create_connection(("127.0.0.1", self.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        req = f"GET {self.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        buf = b""
        while not self.stop and self.seen_ns is None:
            s.sendall(req)
            while True:
                head_end = buf.find(b"\r\n\r\n")
                if head_end >= 0:
                    head = buf[:head_end].decode("latin1").lower()
                    length = int(head.split("content-length:")[1].split("\r\n")[0])
                    if len(buf) >= head_end + 4 + length:
                        body = buf[head_end + 4 : head_end + 4 + length].decode()
                        buf = buf[head_end + 4 + length :]
                        break
                buf += s.recv(65536)
            if listed(body, self.msn, self.part):
                self.seen_ns = time.monotonic_ns()
                break
            time.sleep(0.002)
        s.close()


class Waiter(asyncio.Protocol):
    """One keep-alive connection (like a player's); notes when each response starts and ends."""

    def __init__(self):
        self.first_byte_ns = None
        self.buf = b""
        self.done = None
        self.status_ok = False

    def connection_made(self, transport):
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self, req, done):
        self.first_byte_ns, self.buf, self.done, self.status_ok = None, b"", done, False
        self.transport.write(req)

    def data_received(self, data):
        if self.first_byte_ns is None:
            self.first_byte_ns = time.monotonic_ns()
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.done is None or self.done.done():
            return
        head = self.buf[:end].decode("latin1").lower()
        length = int(head.split("content-length:")[1].split("\r\n")[0]) if "content-length:" in head else 0
        if len(self.buf) >= end + 4 + length:
            self.status_ok = head.startswith("http/1.1 200")
            self.done.set_result(None)

    def connection_lost(self, exc):
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


async def run_rounds(port, path, clients, rounds):
    loop = asyncio.get_running_loop()
    waiters = []
    for _ in range(clients):
        _, proto = await loop.create_connection(Waiter, "127.0.0.1", port)
        waiters.append(proto)
    results = []
    for _ in range(rounds):
        msn, part = hint(get(port, path))
        poller = Poller(port, path, msn, part)
        poller.start()
        req = f"GET {path}?_HLS_msn={msn}&_HLS_part={part} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        sent_ns = time.monotonic_ns()
        dones = []
        for w in waiters:
            d = loop.create_future()
            w.request(req, d)
            dones.append(d)
        await asyncio.wait_for(asyncio.gather(*dones), 30)
        poller.stop = True
        poller.join(5)
        answers = [w.first_byte_ns for w in waiters if w.first_byte_ns is not None and w.status_ok]
        results.append((msn, part, sent_ns, poller.seen_ns, answers, clients - len(answers)))
        await asyncio.sleep(0.5)
    for w in waiters:
        w.transport.close()
    return results


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if not shutil.which("ffmpeg"):
        sys.exit("ffmpeg missing: apt-get install ffmpeg")
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.clients + 256)), hard))

    work = tempfile.mkdtemp(prefix="tidecast-bench-")
    rtmp, http = random.randint(20000, 29999), random.randint(30000, 39999)
    log = open(os.path.join(work, "tidecast.log"), "w")
    tc = subprocess.Popen(
        [binary(), "--rtmp-listen", f"127.0.0.1:{rtmp}", "--http-listen", f"127.0.0.1:{http}",
         "--data-dir", os.path.join(work, "data")],
        stderr=log, env={**os.environ, "RUST_LOG": "warn", "TIDECAST_ORIGIN__ARCHIVE": "false"})
    ff = None
    try:
        for _ in range(100):
            try:
                get(http, "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        ff = subprocess.Popen(
            ["ffmpeg", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
             "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(20 + 4 * args.rounds),
             "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-pix_fmt", "yuv420p", "-c:a", "aac",
             "-f", "flv", f"rtmp://127.0.0.1:{rtmp}/live/bench"],
            stdin=subprocess.DEVNULL)
        path = "/live/bench/360p/media.m3u8"
        for _ in range(200):
            try:
                hint(get(http, path))
                break
            except Exception:
                time.sleep(0.1)
        from_prod, from_first, bad_total = [], [], 0
        rounds = asyncio.run(run_rounds(http, path, args.clients, args.rounds))
        for r, (msn, part, sent, seen, answers, bad) in enumerate(rounds):
            bad_total += bad
            first = min(answers)
            from_first += [(a - first) / 1e6 for a in answers]
            if seen is not None:
                from_prod += [(a - seen) / 1e6 for a in answers]
            print(f"round {r + 1}: part {msn}.{part}: {len(answers)} answered, {bad} failed; "
                  f"held {(first - sent) / 1e6:.0f} ms; spread first..last {(max(answers) - first) / 1e6:.1f} ms; "
                  f"poller saw it {'-' if seen is None else f'{(seen - first) / 1e6:+.1f} ms'} from the first answer")
        print(f"\nLL-HLS blocking reload, {args.clients} concurrent clients x {args.rounds} rounds (ms)")
        for name, vals in (("after first answer", from_first), ("after poller saw part", from_prod)):
            if vals:
                print(f"  {name:24s} p50 {pct(vals, 50):7.1f}  p90 {pct(vals, 90):7.1f}  "
                      f"p99 {pct(vals, 99):7.1f}  max {max(vals):7.1f}")
        print(f"  failed requests: {bad_total}  (goal: p99 <= 20 ms after production)")
    finally:
        for p in (ff, tc):
            if p and p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
