#!/usr/bin/env bash
# Ladder cost: tidecast vs ffmpeg on the same 20 s 720p30 H.264+AAC input, same rungs and the
# same x264 settings (veryfast, zerolatency, High profile, per-rung bitrate with GStreamer
# x264enc's default CBR: maxrate = bitrate, VBV buffer 600 ms, keyframe every 2 s).
# Prints CPU-seconds per media-second for both (median of RUNS=3 interleaved runs) and the ratio
# tidecast/ffmpeg. TIDECAST_LADDER__X264_THREADS applies to both (0 = x264's auto).
#   bench/ladder.sh            (make bench-ladder builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$HOME/.cache/tidecast/target}"
bin="${TIDECAST_BIN:-$target/release/tidecast}"
[ -x "$bin" ] || { echo "build first: cargo build --release -p tidecast" >&2; exit 1; }
command -v ffmpeg >/dev/null || { echo "ffmpeg missing: apt-get install ffmpeg" >&2; exit 1; }

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
secs=20
input="$work/input.flv"
ffmpeg -loglevel error -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000" \
  -t $secs -c:v libx264 -preset veryfast -g 60 -pix_fmt yuv420p -b:v 4000k -c:a aac -b:a 128k -ac 2 -f flv "$input"

ticks=$(getconf CLK_TCK)
cpu_of() { awk -v t="$ticks" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }

# tidecast: publish the file in real time, CPU of the process until every playlist has ENDLIST
run_tidecast() {
  local rtmp=$((20000 + RANDOM % 10000)) http=$((30000 + RANDOM % 10000)) edge=$((40000 + RANDOM % 10000))
  RUST_LOG=warn TIDECAST_ORIGIN__ARCHIVE=false "$bin" --rtmp-listen 127.0.0.1:$rtmp --http-listen 127.0.0.1:$http \
    --edge-listen 127.0.0.1:$edge --data-dir "$work/data" 2>"$work/tidecast.log" &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done
  local before; before=$(cpu_of $pid)
  ffmpeg -loglevel error -re -i "$input" -c copy -f flv "rtmp://127.0.0.1:$rtmp/live/bench"
  for _ in $(seq 200); do
    if curl -sf "http://127.0.0.1:$http/live/bench/240p/media.m3u8" | grep -q ENDLIST \
       && curl -sf "http://127.0.0.1:$http/live/bench/720p/media.m3u8" | grep -q ENDLIST; then break; fi
    sleep 0.1
  done
  local after; after=$(cpu_of $pid)
  kill $pid; wait $pid 2>/dev/null || true
  awk -v a="$after" -v b="$before" 'BEGIN { printf "%.3f", a - b }'
}

# ffmpeg: decode once, split, scale, x264 per rung, the same x264 settings and thread count
threads="${TIDECAST_LADDER__X264_THREADS:-0}"
x264="-preset veryfast -tune zerolatency -profile:v high -threads $threads -force_key_frames expr:gte(t,n_forced*2) -sc_threshold 0"
run_ffmpeg() { # $1 = "-re" for a live (real-time) run, empty for batch
  local TIMEFORMAT="%U %S"
  { time ffmpeg -loglevel error $1 -i "$input" -filter_complex \
    "[0:v]split=4[a][b][c][d];[a]scale=1280:720[v1];[b]scale=854:480[v2];[c]scale=640:360[v3];[d]scale=426:240[v4]" \
    -map "[v1]" $x264 -c:v libx264 -b:v 2800k -maxrate 2800k -bufsize 1680k -f mp4 -movflags frag_keyframe+empty_moov -y "$work/o1.mp4" \
    -map "[v2]" $x264 -c:v libx264 -b:v 1400k -maxrate 1400k -bufsize 840k -f mp4 -movflags frag_keyframe+empty_moov -y "$work/o2.mp4" \
    -map "[v3]" $x264 -c:v libx264 -b:v 800k -maxrate 800k -bufsize 480k -f mp4 -movflags frag_keyframe+empty_moov -y "$work/o3.mp4" \
    -map "[v4]" $x264 -c:v libx264 -b:v 400k -maxrate 400k -bufsize 240k -f mp4 -movflags frag_keyframe+empty_moov -y "$work/o4.mp4" \
    -map 0:a -c:a copy -f mp4 -movflags frag_keyframe+empty_moov -y "$work/oa.mp4" ; } 2> "$work/ff.time"
  tail -n1 "$work/ff.time" | awk '{ printf "%.3f", $1 + $2 }'
}

# CPU time on a shared 2-core VM varies by ±10 % run to run: interleave runs, compare medians
runs="${RUNS:-3}"
tcs=(); ffs=(); ffr=()
for i in $(seq "$runs"); do
  tcs+=("$(run_tidecast)"); ffs+=("$(run_ffmpeg "")"); ffr+=("$(run_ffmpeg -re)")
  echo "  run $i: tidecast ${tcs[-1]} CPU-s, ffmpeg batch ${ffs[-1]}, ffmpeg live (-re) ${ffr[-1]}" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
tc=$(median "${tcs[@]}"); ff=$(median "${ffs[@]}"); fr=$(median "${ffr[@]}")

printf 'ladder 720p30 -> 720p/480p/360p/240p, %ss input, x264 threads %s, median of %s runs\n' $secs "$threads" "$runs"
# tidecast is a live transcoder (input paced by the publisher); ffmpeg is measured both as a
# live transcoder (-re, like for like) and as a batch job (its best case)
awk -v tc="$tc" -v ff="$ff" -v fr="$fr" -v s="$secs" 'BEGIN {
  printf "  tidecast (live):    %6.2f CPU-s  %.3f CPU-s per media-s\n", tc, tc / s
  printf "  ffmpeg live (-re):  %6.2f CPU-s  %.3f CPU-s per media-s\n", fr, fr / s
  printf "  ffmpeg batch:       %6.2f CPU-s  %.3f CPU-s per media-s\n", ff, ff / s
  printf "  ratio tidecast/ffmpeg live: %.2f   tidecast/ffmpeg batch: %.2f\n", tc / fr, tc / ff
}'
