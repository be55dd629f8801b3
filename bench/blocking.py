#!/usr/bin/env python3
"""LL-HLS blocking playlist reload fan-out: N clients (default 1000) hold
`media.m3u8?_HLS_msn=M&_HLS_part=P` for the preload-hinted part; bench/loadgen (Rust, one
thread, keep-alive connections as players hold them) measures when each answer arrives
relative to the moment the part was produced, taken two ways, both printed:
  * poller: a connection polls the plain playlist every 2 ms and notes when the part is first
    listed (resolution ~2 ms plus one request);
  * first answer: the earliest of the N answers (the server wakes waiters when the part lands).
This script starts tidecast (release build) and an ffmpeg publisher (640x360, so the ladder
transcodes two rungs on the same cores meanwhile) and runs the load generator.

Usage: bench/blocking.py [--clients 1000] [--rounds 5]   (make bench-blocking)
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import ROOT, binary, target_dir  # noqa: E402 (bench/ is on sys.path)


def get(port, path, timeout=5.0):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.read().decode()


def hint(text):
    for line in text.splitlines():
        if line.startswith("#EXT-X-PRELOAD-HINT:"):
            return line
    raise RuntimeError("no preload hint:\n" + text)


def loadgen():
    """Build (once) and return the Rust load generator in bench/loadgen."""
    target = target_dir()
    subprocess.run(["cargo", "build", "--quiet", "--release", "--manifest-path",
                    os.path.join(ROOT, "bench/loadgen/Cargo.toml"), "--target-dir",
                    os.path.join(target, "loadgen")], check=True)
    return os.path.join(target, "loadgen", "release", "tidecast-loadgen")


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

    gen = loadgen()
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
        subprocess.run([gen, "blocking", str(http), path, str(args.clients), str(args.rounds)], check=True)
    finally:
        for p in (ff, tc):
            if p and p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
