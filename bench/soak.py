#!/usr/bin/env python3
"""Soak: tidecast (release build, `all`) with 2 RTMP streams and 50 LL-HLS players through its
edge for --minutes (default 60), sampling the process's RSS and open file descriptors and the
edge cache's share of the heap (`tidecast_edge_cache_bytes` less its bodies' memfd copies,
`tidecast_edge_cache_file_bytes`, which are shared memory outside RSS) every minute. Passes when
RSS plateaus: growth over the last half of the run under 5 %. Not in the test command (it takes
an hour). Also prints the ladder's real-time factor each minute (the slowest rendition's media
seconds output per wall second; the source itself is slower than real time when this machine is
saturated, and then every rendition, audio too, shows it).

Each player does what hls.js does in low-latency mode: a blocking playlist reload for the next
part (`_HLS_msn`/`_HLS_part`), then that part, then the next, on one keep-alive connection.

Usage: bench/soak.py [--minutes 60] [--players 50] [--streams 2]   (make bench-soak)
"""

import argparse
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import binary  # noqa: E402 (bench/ is on sys.path)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def series(port, name):
    """The values of every series of metric `name`."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
    except OSError:
        return []
    return [float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
            if l.startswith(name) and not l.startswith("#")]


def metric(port, name):
    return sum(series(port, name))


def player(port, stream, stop, counters):
    """One LL-HLS player: blocking reloads for the next part, then the part."""
    conn = None
    msn = part = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            path = f"/live/{stream}/360p/media.m3u8"
            if msn is not None:
                path += f"?_HLS_msn={msn}&_HLS_part={part}"
            conn.request("GET", path)
            r = conn.getresponse()
            text = r.read().decode()
            if r.status != 200:
                time.sleep(0.5)
                continue
            hint = re.search(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="(\d+)\.(\d+)\.m4s"', text)
            if not hint:
                time.sleep(0.5)
                continue
            msn, part = int(hint.group(1)), int(hint.group(2))
            conn.request("GET", f"/live/{stream}/360p/{msn}.{part}.m4s")
            r = conn.getresponse()
            body = r.read()
            counters["parts"] += 1
            counters["bytes"] += len(body)
        except (OSError, http.client.HTTPException):
            counters["errors"] += 1
            conn = None
            msn = part = None
            time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=int, default=60)
    ap.add_argument("--players", type=int, default=50)
    ap.add_argument("--streams", type=int, default=2)
    args = ap.parse_args()
    if not shutil.which("ffmpeg"):
        sys.exit("ffmpeg missing: apt-get install ffmpeg")
    minutes = max(2, min(args.minutes, 24 * 60))
    work = tempfile.mkdtemp(prefix="tidecast-soak-")
    rtmp, http_port, edge = 21935, 28080, 28081
    env = dict(os.environ, RUST_LOG="warn", TIDECAST_ROOMS__MEDIA_LISTEN="127.0.0.1:0",
               TIDECAST_TURN__LISTEN_UDP="", TIDECAST_TURN__LISTEN_TCP="",
               TIDECAST_TURN__LISTEN_TLS="")
    server = subprocess.Popen(
        [binary(), "all", "--rtmp-listen", f"127.0.0.1:{rtmp}", "--http-listen",
         f"127.0.0.1:{http_port}", "--edge-listen", f"127.0.0.1:{edge}", "--rooms-listen",
         "127.0.0.1:0", "--data-dir", os.path.join(work, "data")],
        env=env, stderr=open(os.path.join(work, "tidecast.log"), "w"))
    publishers = []
    stop = threading.Event()
    try:
        time.sleep(2)
        for i in range(args.streams):
            publishers.append(subprocess.Popen(
                ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
                 "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
                 "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
                 "-t", str(minutes * 60 + 60), "-c:v", "libx264", "-preset", "veryfast",
                 "-g", "60", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k",
                 "-f", "flv", f"rtmp://127.0.0.1:{rtmp}/live/soak{i}"]))
        time.sleep(10)
        counters = {"parts": 0, "bytes": 0, "errors": 0}
        threads = [threading.Thread(target=player, daemon=True,
                                    args=(edge, f"soak{n % args.streams}", stop, counters))
                   for n in range(args.players)]
        for t in threads:
            t.start()
        print(f"soak: {args.streams} streams, {args.players} LL-HLS players through the edge, "
              f"{minutes} min (log: {work}/tidecast.log)")
        print("min    RSS MB   fds   cache heap MB   RSS - cache MB   parts   errors   ladder RTF")
        samples = []
        ladder = "tidecast_ladder_output_milliseconds_total"
        ladder_before = series(http_port, ladder)
        started = time.monotonic()
        for minute in range(1, minutes + 1):
            time.sleep(max(0.0, started + minute * 60 - time.monotonic()))
            if server.poll() is not None:
                sys.exit(f"tidecast exited ({server.returncode}); see {work}/tidecast.log")
            rss = rss_kb(server.pid) / 1024
            # the cache's share of RSS: its weighted size counts each body's memfd copy (shared
            # memory, outside RSS) as well
            cache = (metric(edge, "tidecast_edge_cache_bytes")
                     - metric(edge, "tidecast_edge_cache_file_bytes")) / 1e6
            samples.append((minute, rss, fds(server.pid), cache))
            # media seconds each rendition output over the minute: 1.0 keeps up with real time
            ladder_now = series(http_port, ladder)
            rtf = min((b - a) / 60_000 for a, b in zip(ladder_before, ladder_now)) \
                if ladder_now and len(ladder_now) == len(ladder_before) else float("nan")
            ladder_before = ladder_now
            print(f"{minute:3d} {rss:9.1f} {samples[-1][2]:5d} {cache:15.1f} {rss - cache:16.1f} "
                  f"{counters['parts']:7d} {counters['errors']:8d}   {rtf:10.3f}", flush=True)
        half = samples[len(samples) // 2]
        last = samples[-1]
        growth = (last[1] - half[1]) / half[1] * 100
        growth_ex = ((last[1] - last[3]) - (half[1] - half[3])) / max(1.0, half[1] - half[3]) * 100
        verdict = "PASS" if growth < 5 else "FAIL"
        print(f"RSS over the last {len(samples) - len(samples) // 2} min: {half[1]:.1f} -> "
              f"{last[1]:.1f} MB ({growth:+.1f} %), without the edge cache {growth_ex:+.1f} %; "
              f"fds {half[2]} -> {last[2]}: {verdict} (plateau: < 5 %)")
    finally:
        stop.set()
        for p in publishers:
            p.kill()
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
