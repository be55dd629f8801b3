#!/usr/bin/env bash
# TURN relay cost: the same turnutils_uclient load (same clients, message size, rate, count)
# against coturn (Debian's turnserver with the TURN REST API secret, as deployed, but for
# ports and allowing the loopback peer) and against `tidecast turn`, one after the other:
# relayed packets, loss, the server's CPU-seconds (user + system, all threads, from /proc) and
# relayed packets per server CPU-second, then the ratio (goal: >= 1.2x coturn at zero loss).
# Both servers run side by side and the loads alternate, RUNS=3 rounds; the ratio is of the
# medians (single runs on a 2-core VM vary by ±10 %).
#   bench/turn.sh [clients] [messages]        (make bench-turn; needs coturn: bootstrap --test)
set -euo pipefail
cd "$(dirname "$0")/.."
clients="${1:-50}"
messages="${2:-2000}"
runs="${RUNS:-3}"
target="${CARGO_TARGET_DIR:-$HOME/.cache/tidecast/target}"
bin="${TIDECAST_BIN:-$target/release/tidecast}"
[ -x "$bin" ] || { echo "build first: cargo build --release -p tidecast" >&2; exit 1; }
command -v turnserver >/dev/null || { echo "coturn missing: apt-get install coturn" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
secret=bench-secret
base=$((20000 + RANDOM % 9000))
peer_port=$((base + 9))
hz=$(getconf CLK_TCK)
turnutils_peer -L 127.0.0.1 -p "$peer_port" >/dev/null 2>&1 & pids+=($!)

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# run KEY LABEL PID PORT: the uclient load against the server PID listening on PORT
run() {
  local key=$1 label=$2 pid=$3 port=$4
  sleep 1
  local t0 t1
  t0=$(ticks "$pid")
  # -c: no RTCP pair; -z 20: one message every 20 ms per client (50 packets/s, like audio)
  turnutils_uclient -W "$secret" -u "bench-$key" -p "$port" -e 127.0.0.1 -r "$peer_port" \
    -m "$clients" -n "$messages" -l 200 -z 20 -c 127.0.0.1 >"$work/$key.out" 2>&1 || true
  t1=$(ticks "$pid")
  python3 - "$label" "$work/$key.out" "$t0" "$t1" "$hz" <<'PY'
import re, sys
label, path, t0, t1, hz = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
text = open(path).read()
sent = [int(x) for x in re.findall(r"tot_send_msgs=(\d+)", text)]
recv = [int(x) for x in re.findall(r"tot_recv_msgs=(\d+)", text)]
lost = re.findall(r"Total lost packets (\d+)", text)
sent, recv = (sent[-1] if sent else 0), (recv[-1] if recv else 0)
cpu = (t1 - t0) / hz
# each message crosses the relay twice: client -> peer and the echo peer -> client
relayed = sent + recv
per_cpu = relayed / cpu if cpu else float("inf")
print(f"  {label}: {recv}/{sent} echoed, lost {lost[-1] if lost else '?'}; {relayed:,} relayed "
      f"packets using {cpu:.2f} CPU-s => {per_cpu:,.0f} relayed packets per CPU-second")
open(path + ".figure", "w").write(f"{per_cpu}")
PY
}

echo "== TURN relay: $clients clients x $messages messages of 200 bytes every 20 ms, UDP, channels; $runs rounds"
cport=$((base + 1))
turnserver --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port "$cport" \
  --min-port $((base + 100)) --max-port $((base + 2100)) --use-auth-secret \
  --static-auth-secret "$secret" --realm tidecast --allow-loopback-peers --no-tls --no-dtls \
  --no-cli --fingerprint --log-file stdout --simple-log >"$work/coturn.log" 2>&1 & pids+=($!)
coturn=$!
tport=$((base + 3))
TIDECAST_TURN__SECRET="$secret" TIDECAST_TURN__LISTEN_UDP="127.0.0.1:$tport" \
  TIDECAST_TURN__LISTEN_TCP="127.0.0.1:$tport" TIDECAST_TURN__LISTEN_TLS= \
  TIDECAST_TURN__RELAY_ADDRESS=127.0.0.1 TIDECAST_TURN__ALLOWED_PEERS='["127.0.0.1/32"]' \
  TIDECAST_TURN__RELAY_PORTS="$((base + 2200))-$((base + 4200))" \
  TIDECAST_TURN__MAX_ALLOCATIONS_PER_USER=1000 TIDECAST_ORIGIN__HTTP_LISTEN="127.0.0.1:$((base + 4))" \
  RUST_LOG=warn "$bin" turn 2>"$work/tidecast.log" & pids+=($!)
tc=$!
coturn_label="coturn $(dpkg-query -W -f '${Version}' coturn 2>/dev/null || echo '?')"
for r in $(seq 1 "$runs"); do
  echo " round $r"
  run "coturn-$r" "$coturn_label" "$coturn" "$cport"
  run "tidecast-$r" tidecast "$tc" "$tport"
done
python3 - "$work" "$runs" <<'PY'
import statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
fig = lambda k: [float(open(f"{work}/{k}-{r}.out.figure").read()) for r in range(1, runs + 1)]
c, t = statistics.median(fig("coturn")), statistics.median(fig("tidecast"))
print(f"  => medians: tidecast {t:,.0f} vs coturn {c:,.0f} relayed packets per CPU-second: "
      f"{t / c:.2f}x (goal >= 1.2x at zero loss)")
PY
