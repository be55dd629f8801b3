#!/usr/bin/env python3
"""Glass-to-glass latency: tidecast LL-HLS, plain HLS and LL-DASH against nginx-rtmp's HLS.

One publisher feeds both servers (ffmpeg tee → RTMP, x264 veryfast/zerolatency, 1 s GOP): this
script paints 640x360 frames in real time (30 fps) and writes them to ffmpeg's stdin. Every
`--flip` seconds the picture changes to the next value of a 4-bit counter shown as four
horizontal bars (white = 1), and the wall-clock time the first frame of each value was handed to
the encoder is recorded ("glass"). A player in headless Chromium (tidecast's /demo/ page with
hls.js or dash.js; bench/g2g.mjs reads frames through requestVideoFrameCallback + canvas) notes
the wall-clock time each value is first presented ("glass" again). Latency = shown − painted.

Prints p50/p95 per player over at least 10 flips each. Anchor: nginx with libnginx-mod-rtmp
(`hls on; hls_fragment 1s; hls_playlist_length 4s`), played by the same hls.js page.
Usage: bench/g2g.py [--seconds 25] [--flip 1.0] [--only NAME]      (make bench-g2g)
Needs: release binary, ffmpeg, chromium + tests/browser (npm ci), nginx + libnginx-mod-rtmp.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

from benchlib import ROOT, binary  # noqa: E402 (bench/ is on sys.path)
W, H, FPS = 640, 360, 30
RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"


def need(cond, msg):
    if not cond:
        sys.exit(msg)


def wait_http(url, seconds=30, ok=lambda body: True):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if ok(r.read()):
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def frame(value):
    rows = []
    for b in range(4):
        on = (value >> (3 - b)) & 1
        rows.append((b"\xeb" if on else b"\x10") * (W * (H // 4)))
    return b"".join(rows)


class Painter(threading.Thread):
    """Writes frames to ffmpeg in real time; records when each counter value starts."""

    def __init__(self, sink, flip, seconds):
        super().__init__(daemon=True)
        self.sink, self.flip, self.seconds = sink, flip, seconds
        self.painted = []  # (value, wall time) per flip
        self.frames = [frame(v) for v in range(16)]

    def run(self):
        start = time.monotonic()
        per_flip = max(1, round(self.flip * FPS))
        n = 0
        try:
            while n < self.seconds * FPS:
                due = start + n / FPS
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                k = n // per_flip
                value = k % 16
                if n % per_flip == 0:
                    self.painted.append((value, time.time() * 1000.0))
                self.sink.write(self.frames[value])
                self.sink.flush()
                n += 1
        except (BrokenPipeError, ValueError):
            pass


def latencies(painted, events):
    """Match each shown value to the most recent flip to it painted before it was shown."""
    out = []
    for value, shown in events[1:]:  # the first event is where playback started, not a flip
        before = [t for v, t in painted if v == value and t <= shown]
        if before:
            out.append((shown - before[-1]) / 1000.0)
    return out


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=25, help="each player runs this long")
    ap.add_argument("--flip", type=float, default=1.0, help="seconds between counter flips")
    ap.add_argument("--only", default="", help="run only the players whose name contains this")
    args = ap.parse_args()
    need(shutil.which("ffmpeg"), "ffmpeg missing: apt-get install ffmpeg")
    need(shutil.which("nginx") and os.path.exists(RTMP_MODULE),
         "nginx-rtmp missing: apt-get install nginx-light libnginx-mod-rtmp (infra/bootstrap.sh --bench)")
    need(os.path.exists(os.path.join(ROOT, "tests/browser/node_modules/playwright-core")),
         "playwright-core missing: cd tests/browser && npm ci")
    work = tempfile.mkdtemp(prefix="tidecast-g2g-")
    port = lambda: random.randint(20000, 39999)
    t_rtmp, t_http, t_edge, n_rtmp, n_http = port(), port(), port(), port(), port()
    os.makedirs(os.path.join(work, "hls"))
    # nginx workers run as an unprivileged user: let them write the HLS fragments
    os.chmod(work, 0o755)
    os.chmod(os.path.join(work, "hls"), 0o777)
    with open(os.path.join(work, "nginx.conf"), "w") as f:
        f.write(f"""load_module {RTMP_MODULE};
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
rtmp {{ server {{ listen 127.0.0.1:{n_rtmp}; application live {{
  live on; hls on; hls_path {work}/hls; hls_fragment 1s; hls_playlist_length 4s; }} }} }}
http {{ access_log off; server {{ listen 127.0.0.1:{n_http};
  location /hls/ {{ root {work}; add_header Access-Control-Allow-Origin *; add_header Cache-Control no-cache;
    types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; }} }} }} }}
""")
    procs = []
    log = open(os.path.join(work, "tidecast.log"), "w")
    try:
        procs.append(subprocess.Popen(
            [binary(), "--rtmp-listen", f"127.0.0.1:{t_rtmp}", "--http-listen", f"127.0.0.1:{t_http}",
             "--edge-listen", f"127.0.0.1:{t_edge}", "--data-dir", os.path.join(work, "data")],
            stderr=log, env={**os.environ, "RUST_LOG": "warn", "TIDECAST_ORIGIN__ARCHIVE": "false"}))
        procs.append(subprocess.Popen(["nginx", "-p", work, "-c", os.path.join(work, "nginx.conf")],
                                      stderr=subprocess.DEVNULL))
        need(wait_http(f"http://127.0.0.1:{t_http}/healthz"), "tidecast did not start")
        time.sleep(0.5)
        total = 15 + 7 * (args.seconds + 8)  # one publish outlasts every player below
        ff = subprocess.Popen(
            ["ffmpeg", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{W}x{H}",
             "-r", str(FPS), "-i", "-", "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
             "-g", str(FPS), "-pix_fmt", "yuv420p", "-b:v", "800k", "-flags", "+global_header", "-map", "0:v", "-f", "tee",
             f"[f=flv:onfail=ignore]rtmp://127.0.0.1:{t_rtmp}/live/g2g|"
             f"[f=flv:onfail=ignore]rtmp://127.0.0.1:{n_rtmp}/live/g2g"],
            stdin=subprocess.PIPE)
        procs.append(ff)
        painter = Painter(ff.stdin, args.flip, total)
        painter.start()
        tidecast = f"http://127.0.0.1:{t_http}"
        need(wait_http(f"{tidecast}/live/g2g/master.m3u8", 40), "tidecast stream did not start")
        need(wait_http(f"http://127.0.0.1:{n_http}/hls/g2g.m3u8", 40), "nginx-rtmp HLS did not start")
        edge = f"http://127.0.0.1:{t_edge}"
        # (name, source, format, config): "demo" = the demo page's tuning, "stock" = what
        # integrators write (hls.js {lowLatencyMode: true}, dash.js defaults)
        players = [
            ("tidecast LL-HLS (hls.js demo)", f"{tidecast}/live/g2g/master.m3u8", "ll-hls", "demo"),
            ("tidecast LL-HLS (hls.js stock)", f"{tidecast}/live/g2g/master.m3u8", "ll-hls", "stock"),
            ("edge LL-HLS (hls.js stock)", f"{edge}/live/g2g/master.m3u8", "ll-hls", "stock"),
            ("tidecast HLS (hls.js)", f"{tidecast}/live/g2g/master.m3u8", "hls", "demo"),
            ("tidecast LL-DASH (dash.js demo)", f"{tidecast}/live/g2g/manifest.mpd", "dash", "demo"),
            ("tidecast LL-DASH (dash.js stock)", f"{tidecast}/live/g2g/manifest.mpd", "dash", "stock"),
            ("nginx-rtmp HLS (hls.js)", f"http://127.0.0.1:{n_http}/hls/g2g.m3u8", "hls", "demo"),
        ]
        players = [p for p in players if args.only in p[0]]
        results = []
        for name, src, fmt, config in players:
            page = f"{tidecast}/demo/?" + urllib.parse.urlencode({"src": src, "format": fmt, "config": config})
            run = subprocess.run(["node", os.path.join(ROOT, "bench/g2g.mjs"), page, str(args.seconds)],
                                 capture_output=True, text=True, timeout=args.seconds + 60)
            try:
                report = json.loads(run.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                report = {"events": [], "errors": [run.stderr[-500:]]}
            lat = latencies(painter.painted, report["events"])
            results.append((name, lat, report.get("errors", [])))
            print(f"{name}: {len(lat)} flips measured" + (f"; errors {report['errors'][:3]}" if report.get("errors") else ""),
                  flush=True)
        print(f"\nglass-to-glass latency on loopback (s), flips every {args.flip}s, {args.seconds}s per player")
        anchor = next((pct(l, 50) for n, l, _ in results if n.startswith("nginx") and l), None)
        for name, lat, _ in results:
            if len(lat) < 10:
                print(f"  {name:28s} only {len(lat)} flips seen (need 10)")
                continue
            ratio = f"  ratio to nginx p50 {pct(lat, 50) / anchor:.2f}" if anchor else ""
            print(f"  {name:28s} p50 {pct(lat, 50):5.2f}  p95 {pct(lat, 95):5.2f}  n={len(lat)}{ratio}")
        print("  goal: tidecast LL-HLS p50 <= 2.0 s, with the stock hls.js configuration too")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()  # nginx's master stops its workers on SIGTERM
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
