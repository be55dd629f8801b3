#!/usr/bin/env bash
# SFU cost and join time, with `tidecast bot` (webrtc-rs) as the clients, on loopback.
#   1. Forwarding cost: N bots (default 6) each publish simulcast VP8 + Opus and subscribe to all
#      the others (one pinned → 720p, the rest 180p); over a 20 s window after a 15 s warm-up:
#      RTP packets forwarded per second of the SFU's own CPU (user + system of the tidecast
#      process, from /proc), and the bots' loss.
#   2. Join time: 10 times, a subscriber joins a room with two publishers; WebSocket open → first
#      remote video frame. Prints p50 and the spread.
#   3. Glass-to-glass through the SFU in Chromium (bench/g2g_room.mjs): a canvas clock published by
#      one page, read back from presented frames on another. Prints p50/p95 (goal p50 <= 150 ms).
#   bench/sfu.sh [participants]          (make bench-sfu)
# Not in this script yet: the Janus VideoRoom anchor (the ratio) — see the rooms issue notes.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-6}"
target="${CARGO_TARGET_DIR:-$HOME/.cache/tidecast/target}"
bin="${TIDECAST_BIN:-$target/release/tidecast}"
[ -x "$bin" ] || { echo "build first: cargo build --release -p tidecast" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=$((20000 + RANDOM % 10000))
TIDECAST_ROOMS__MEDIA_LISTEN=127.0.0.1:0 RUST_LOG=warn "$bin" rooms --rooms-listen "127.0.0.1:$port" \
  --data-dir "$work/data" 2>"$work/sfu.log" & pids+=($!)
sfu=$!
for _ in $(seq 50); do curl -sf "127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
hz=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "/proc/$sfu/stat"; }
forwarded() { curl -s "127.0.0.1:$port/metrics" | awk '/^tidecast_sfu_forwarded_packets_total/ { print $2 }'; }

echo "== forwarding cost: $n participants, each publishing 3 layers + audio and receiving the others"
RUST_LOG=error "$bin" bot --server "127.0.0.1:$port" --room cost --participants "$n" --duration 40 \
  --schedule 0=high --pin --json >"$work/cost.json" 2>/dev/null & bots=$!
sleep 15
t0=$(ticks); f0=$(forwarded)
sleep 20
t1=$(ticks); f1=$(forwarded)
wait "$bots" || true
python3 - "$work/cost.json" "$t0" "$t1" "$f0" "$f1" "$hz" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
t0, t1, f0, f1, hz = (float(x) for x in sys.argv[2:7])
cpu = (t1 - t0) / hz
pps = (f1 - f0) / 20
tracks = [t for p in report["participants"] for t in p["tracks"]]
lost = sum(t["lost"] for t in tracks)
packets = sum(t["packets"] for t in tracks)
print(f"  forwarded {pps:,.0f} packets/s using {cpu / 20 * 100:.1f} % of a core")
print(f"  => {((f1 - f0) / cpu) if cpu else float('inf'):,.0f} packets per SFU CPU-second "
      f"(goal >= 80,000); bots' loss {lost}/{packets} ({100 * lost / max(packets, 1):.2f} %)")
PY

echo "== join time: WebSocket open -> first remote video frame, 10 joins"
RUST_LOG=error "$bin" bot --server "127.0.0.1:$port" --room join --participants 2 --prefix pub- \
  --duration 120 >/dev/null 2>&1 & pids+=($!)
sleep 5
: >"$work/joins"
for i in $(seq 10); do
  RUST_LOG=error "$bin" bot --server "127.0.0.1:$port" --room join --participants 1 --no-publish \
    --prefix "viewer$i-" --duration 4 --json 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["participants"][0]["join_ms"])' >>"$work/joins"
done
python3 - "$work/joins" <<'PY'
import statistics, sys
v = sorted(float(x) for x in open(sys.argv[1]) if x.strip() not in ("", "None"))
if not v:
    sys.exit("  no join produced a frame")
print(f"  join time p50 {statistics.median(v):.0f} ms (min {v[0]:.0f}, max {v[-1]:.0f}, n={len(v)})")
PY

echo "== glass-to-glass through the SFU (Chromium, canvas clock, 20 s)"
node bench/g2g_room.mjs "http://127.0.0.1:$port/demo/room.html?room=g2g" 20 >"$work/g2g.json"
python3 - "$work/g2g.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"  p50 {r['p50']} ms, p95 {r['p95']} ms over {r['n']} frames at {r.get('height')}p "
      f"(goal p50 <= 150 ms); errors {r['errors']}")
PY
