#!/usr/bin/env bash
# Archiver throughput and delay: a recorded call of three bots (webrtc-rs, a solid colour each,
# simulcast VP8 + Opus) through the SFU, CALL seconds long (default 60). Prints
#   - tidecast: the call's length / the archiver's wall time to assemble it (× real time),
#     and the delay from the last participant leaving to recording.mp4 being in the store;
#   - the anchor: ffmpeg assembling the same chunks the same way (3 decodes, scale into a
#     1280×720 grid, audio mix, libx264 veryfast + AAC, MP4 faststart), its × real time;
#   - the ratio tidecast / ffmpeg.
#   bench/archiver.sh          (needs the release binary: cargo build --release -p tidecast)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$HOME/.cache/tidecast/target}"
bin="${TIDECAST_BIN:-$target/release/tidecast}"
[ -x "$bin" ] || { echo "build first: cargo build --release -p tidecast" >&2; exit 1; }
command -v ffmpeg >/dev/null || { echo "ffmpeg missing: apt-get install ffmpeg" >&2; exit 1; }
call="${CALL:-60}"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

port() { echo $((20000 + RANDOM % 20000)); }
http=$(port); rooms=$(port); rtmp=$(port); edge=$(port)
RUST_LOG=info NO_COLOR=1 TIDECAST_ROOMS__RECORD=true TIDECAST_ROOMS__MEDIA_LISTEN=127.0.0.1:0 \
  TIDECAST_TURN__LISTEN_UDP=127.0.0.1:$(port) TIDECAST_TURN__LISTEN_TCP=127.0.0.1:$(port) \
  TIDECAST_TURN__LISTEN_TLS=127.0.0.1:$(port) \
  "$bin" --rtmp-listen 127.0.0.1:$rtmp --http-listen 127.0.0.1:$http --edge-listen 127.0.0.1:$edge \
  --rooms-listen 127.0.0.1:$rooms --data-dir "$work/data" 2>"$work/tidecast.log" &
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$rooms/healthz" >/dev/null && break; sleep 0.1; done
RUST_LOG=warn "$bin" bot --server 127.0.0.1:$rooms --room bench --participants 3 --duration "$call" \
  --colours --json >"$work/bots.json"
left=$(date +%s.%N)
for _ in $(seq 600); do grep -q "recording assembled" "$work/tidecast.log" && break; sleep 0.2; done
done_at=$(date +%s.%N)
line=$(grep "recording assembled" "$work/tidecast.log" | tail -n1)
[ -n "$line" ] || { echo "no recording assembled:"; tail -n 30 "$work/tidecast.log"; exit 1; }
dur=$(sed -E 's/.*duration_ms=([0-9]+).*/\1/' <<<"$line")
took=$(sed -E 's/.*assembly_ms=([0-9]+).*/\1/' <<<"$line")
meeting=$(sed -E 's/.*meeting=([0-9a-f]+).*/\1/' <<<"$line")
speed=$(awk -v d="$dur" -v t="$took" 'BEGIN { printf "%.2f", d / t }')
delay=$(awk -v a="$left" -v b="$done_at" 'BEGIN { printf "%.1f", b - a }')
echo "tidecast archiver: ${dur} ms of call assembled in ${took} ms = ${speed}x real time"
echo "tidecast delay: last participant left -> recording.mp4 stored: ${delay} s (${call} s call)"

# the anchor on the same chunks
rec="$work/data/store/recordings/$meeting"
inputs=() ; maps="" ; n=0
for person in "$rec"/*/; do
  for kind in video audio; do
    list="$work/$n-$kind.txt"
    for f in "$person"/"$kind"-*/*.webm; do echo "file '$f'" >>"$list"; done
  done
  inputs+=(-f concat -safe 0 -i "$work/$n-video.txt" -f concat -safe 0 -i "$work/$n-audio.txt")
  n=$((n + 1))
done
[ "$n" = 3 ] || { echo "expected 3 participants, found $n"; exit 1; }
filter="[0:v]scale=640:360,fps=30[v0];[2:v]scale=640:360,fps=30[v1];[4:v]scale=640:360,fps=30[v2];"
filter+="[v0][v1][v2]xstack=inputs=3:layout=0_0|w0_0|0_h0:fill=black,pad=1280:720[v];"
filter+="[1:a][3:a][5:a]amix=inputs=3[a]"
start=$(date +%s.%N)
ffmpeg -loglevel error "${inputs[@]}" -filter_complex "$filter" -map "[v]" -map "[a]" \
  -c:v libx264 -preset veryfast -b:v 2500k -g 60 -c:a aac -movflags +faststart -y "$work/anchor.mp4"
end=$(date +%s.%N)
ff_ms=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%d", (b - a) * 1000 }')
ff_speed=$(awk -v d="$dur" -v t="$ff_ms" 'BEGIN { printf "%.2f", d / t }')
echo "ffmpeg (anchor): the same chunks in ${ff_ms} ms = ${ff_speed}x real time"
awk -v a="$speed" -v b="$ff_speed" 'BEGIN { printf "ratio tidecast/ffmpeg: %.2f (above 1: tidecast faster)\n", a / b }'
