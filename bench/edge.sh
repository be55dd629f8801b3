#!/usr/bin/env bash
# Edge cache throughput: wrk against `tidecast edge` and against nginx proxy_cache, same upstream
# (nginx serving static files with origin-like Cache-Control), same warmed objects — a 1 MB
# segment, a 40 KB part, a 2 KB playlist (max-age=1, so both refresh it once a second) — same
# connections and duration, in one run. Prints requests/s, p99 latency and tidecast/nginx, each
# the median of RUNS=3 interleaved runs (single runs on a 2-core VM vary by ±20 %).
#   bench/edge.sh [connections] [seconds]      (make bench-edge)
set -euo pipefail
cd "$(dirname "$0")/.."
conns="${1:-64}"; secs="${2:-10}"; runs="${RUNS:-3}"
target="${CARGO_TARGET_DIR:-$HOME/.cache/tidecast/target}"
bin="${TIDECAST_BIN:-$target/release/tidecast}"
[ -x "$bin" ] || { echo "build first: cargo build --release -p tidecast" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk missing: infra/bootstrap.sh --bench (apt-get install wrk)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx missing: infra/bootstrap.sh --bench" >&2; exit 1; }

work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { echo $((20000 + RANDOM % 20000)); }
up=$(port); ng=$(port); tc=$(port)

mkdir -p "$work/www/live/bench/720p" "$work/cache" && chmod -R 777 "$work/www" "$work/cache"
head -c 1048576 /dev/urandom > "$work/www/live/bench/720p/100.m4s"
head -c 40960 /dev/urandom > "$work/www/live/bench/720p/101.2.m4s"
{ echo "#EXTM3U"; for i in $(seq 1 40); do echo "#EXTINF:2.000,"; echo "$((60 + i)).m4s"; done; } \
  | head -c 2048 > "$work/www/live/bench/720p/media.m3u8"

cat > "$work/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  # as Debian's /etc/nginx/nginx.conf deploys it
  sendfile on;
  tcp_nopush on;
  access_log off;
  types { video/mp4 m4s; application/vnd.apple.mpegurl m3u8; }
  proxy_cache_path $work/cache levels=1:2 keys_zone=live:64m max_size=1g inactive=10m use_temp_path=off;
  # the upstream: static files with the origin's cache headers
  server {
    listen 127.0.0.1:$up;
    root $work/www;
    location ~ \.m3u8\$ { add_header Cache-Control "public, max-age=1"; }
    location ~ \.m4s\$ { add_header Cache-Control "public, max-age=86400, immutable"; }
  }
  # the anchor: nginx proxy_cache in front of it
  server {
    listen 127.0.0.1:$ng;
    location / {
      proxy_pass http://127.0.0.1:$up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache live;
      proxy_cache_lock on;
      proxy_cache_use_stale error timeout updating;
      proxy_cache_background_update on;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
EOF
nginx -p "$work" -c "$work/nginx.conf" & pids+=($!)
RUST_LOG=warn "$bin" edge --edge-listen 127.0.0.1:$tc --upstream http://127.0.0.1:$up --data-dir "$work/data" \
  2>"$work/tidecast.log" & pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$tc/healthz" >/dev/null && curl -sf "http://127.0.0.1:$up/live/bench/720p/media.m3u8" >/dev/null && break
  sleep 0.1
done

objects=("/live/bench/720p/100.m4s:1 MB segment" "/live/bench/720p/101.2.m4s:40 KB part" "/live/bench/720p/media.m3u8:2 KB playlist")
for o in "${objects[@]}"; do  # warm both caches
  p="${o%%:*}"; curl -sf -o /dev/null "http://127.0.0.1:$tc$p"; curl -sf -o /dev/null "http://127.0.0.1:$ng$p"
done

# server CPU (user + system ticks of the tidecast process, of nginx's workers) over a run: how much
# of the machine each server needs per request, apart from wrk's own share of the 2 cores
ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done; echo "$t"; }
tc_pid=${pids[1]}; read -r -a ng_pids <<<"$(pgrep -P "${pids[0]}" -f "worker process" | tr '\n' ' ')"
hz=$(getconf CLK_TCK)
run() { # url pids... → "rps p99_ms cpu_us_per_request"
  local url=$1; shift; local t0 out
  t0=$(ticks "$@")
  out=$(wrk -t2 -c"$conns" -d"${secs}s" --latency "$url" 2>/dev/null)
  awk -v cpu="$(( $(ticks "$@") - t0 ))" -v hz="$hz" -v secs="$secs" '
    /Requests\/sec/ { rps = $2 }
    /^ +99%/ { v = $2; if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms/, "", v) } else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 }; p99 = v }
    END { printf "%s %s %.1f", rps, p99, (rps > 0 ? cpu / hz * 1e6 / (rps * secs) : 0) }' <<<"$out"
}

printf 'edge cache, wrk -t2 -c%s -d%ss, warmed objects (tidecast edge vs nginx proxy_cache), median of %s runs\n' "$conns" "$secs" "$runs"
printf '  %-16s %13s %8s %9s %13s %8s %9s %10s %10s\n' object "tidecast rps" "p99 ms" "cpu us/r" "nginx rps" "p99 ms" "cpu us/r" "rps ratio" "cpu ratio"
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for o in "${objects[@]}"; do
  p="${o%%:*}"; name="${o#*:}"
  t_rps=""; t_p99=""; t_cpu=""; n_rps=""; n_p99=""; n_cpu=""
  for _ in $(seq "$runs"); do  # interleaved, so a noisy moment hits both sides
    read -r a b c <<<"$(run "http://127.0.0.1:$tc$p" "$tc_pid")"; t_rps+="$a "; t_p99+="$b "; t_cpu+="$c "
    read -r a b c <<<"$(run "http://127.0.0.1:$ng$p" "${ng_pids[@]}")"; n_rps+="$a "; n_p99+="$b "; n_cpu+="$c "
  done
  awk -v n="$name" -v a="$(median <<<"$t_rps")" -v b="$(median <<<"$t_p99")" -v c="$(median <<<"$t_cpu")" \
    -v d="$(median <<<"$n_rps")" -v e="$(median <<<"$n_p99")" -v f="$(median <<<"$n_cpu")" \
    'BEGIN { printf "  %-16s %13.0f %8.2f %9.1f %13.0f %8.2f %9.1f %10.2f %10.2f\n", n, a, b, c, d, e, f, a / d, (c > 0 ? f / c : 0) }'
done
echo "  rps ratio: tidecast/nginx requests/s; cpu ratio: nginx/tidecast server CPU per request"
echo "  (wrk shares the 2 cores: at small objects its own cost per request caps the rps ratio)"
echo "  goal: >= 1.2x nginx requests/s with a lower p99"
