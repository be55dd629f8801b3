#!/usr/bin/env python3
"""A network link with a fixed one-way delay, in user space, for kernels without sch_netem.

    delay_link.py DEV_A NETNS_A DEV_B NETNS_B DELAY_MS [RATE_FILE]

Creates the TAP devices DEV_A and DEV_B, moves them into the network namespaces NETNS_A and
NETNS_B, then (in the background) relays Ethernet frames between them, delivering each one
DELAY_MS after it was sent: in order, no loss, no rate limit, like `tc netem delay` on both
ends of a veth pair. Returns once both devices exist in their namespaces, so the caller can
address them straight away. The relay ends when either device goes away (its namespace deleted)
or on SIGTERM. Used by regions.sh; needs root and /dev/net/tun.

RATE_FILE (optional) caps the link's rate in each direction, like `tc tbf`: the file holds kbit/s
(0 or empty: no cap) and is re-read twice a second, so a test can tighten or lift the cap while
traffic flows. A capped direction queues frames behind each other at the rate and drops what would
wait longer than QUEUE_LIMIT (a router's buffer), so senders see queueing delay, then loss.
"""

import collections
import fcntl
import os
import select
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
BURST = 64  # frames read from one device before looking at the other
QUEUE_LIMIT = 0.25  # seconds a frame may wait behind others on a capped link before it is dropped


def read_rate(path):
    """kbit/s from the rate file, 0 for no cap."""
    try:
        with open(path) as f:
            text = f.read().strip()
        return max(0.0, float(text)) if text else 0.0
    except (OSError, ValueError):
        return 0.0


def open_tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def relay(a, b, delay, rate_file=None):
    """Frames read from one fd are written to the other `delay` seconds later (and, on a capped
    link, no sooner than the rate allows after the frame before)."""
    pending = {a: collections.deque(), b: collections.deque()}  # frames due on that fd
    peer = {a: b, b: a}
    free_at = {a: 0.0, b: 0.0}  # when the capped wire towards fd is free again
    rate = read_rate(rate_file) if rate_file else 0.0
    rate_checked = time.monotonic()
    while True:
        now = time.monotonic()
        if rate_file and now - rate_checked >= 0.5:
            rate, rate_checked = read_rate(rate_file), now
        timeout = None
        for fd, queue in pending.items():
            while queue and queue[0][0] <= now:
                try:
                    os.write(fd, queue.popleft()[1])
                except (BlockingIOError, OSError):
                    pass  # device down or its queue full: the frame is lost, as on a wire
            if queue:
                wait = queue[0][0] - now
                timeout = wait if timeout is None else min(timeout, wait)
        ready, _, _ = select.select([a, b], [], [], timeout)
        for fd in ready:
            for _ in range(BURST):
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    return  # the device is gone (namespace deleted)
                if not frame:
                    return
                to = peer[fd]
                now = time.monotonic()
                if rate > 0:
                    start = max(now, free_at[to])
                    if start - now > QUEUE_LIMIT:
                        continue  # the queue is full: drop, as a router would
                    free_at[to] = start + len(frame) * 8 / (rate * 1000.0)
                    pending[to].append((free_at[to] + delay, frame))
                else:
                    pending[to].append((now + delay, frame))


def main():
    if len(sys.argv) not in (6, 7):
        sys.exit(__doc__)
    dev_a, ns_a, dev_b, ns_b, delay_ms = sys.argv[1:6]
    rate_file = sys.argv[6] if len(sys.argv) == 7 else None
    delay = float(delay_ms.removesuffix("ms")) / 1000.0
    try:
        a, b = open_tap(dev_a), open_tap(dev_b)
    except OSError as e:
        sys.exit(f"delay_link.py: cannot create TAP devices ({e}): needs root and /dev/net/tun")
    for dev, ns in ((dev_a, ns_a), (dev_b, ns_b)):
        subprocess.run(["ip", "link", "set", dev, "netns", ns], check=True)
    if os.fork():
        os._exit(0)  # the caller goes on; the child keeps the devices open and relays
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(devnull, std)
    relay(a, b, delay, rate_file)


if __name__ == "__main__":
    main()
