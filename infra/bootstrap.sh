#!/usr/bin/env bash
# Installs every system package tidecast needs to build, run and test, on Debian 12. Idempotent:
# packages already present are not reinstalled and apt is not touched when nothing is missing.
#   infra/bootstrap.sh          # build + run dependencies (GStreamer 1.22, ffmpeg)
#   infra/bootstrap.sh --test   # plus test tools (Chromium, Node/npm, s3s-fs, tansu, cargo-fuzz, iproute2, python3,
#                               # kubectl, kubernetes-validate)
#   infra/bootstrap.sh --bench  # plus benchmark anchors (nginx with the RTMP module, wrk; Janus for the SFU)
set -euo pipefail

want_test=0
want_bench=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    --bench) want_test=1; want_bench=1 ;;
    *) echo "usage: $0 [--test] [--bench]" >&2; exit 2 ;;
  esac
done

packages=(
  ca-certificates pkg-config build-essential curl
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
  ffmpeg
)
if [ "$want_test" = 1 ]; then
  packages+=(chromium iproute2 python3)  # the browser tests; the regions lab (ip netns, delay_link.py)
  packages+=(coturn)  # coturn's turnutils_* clients for the TURN tests (its server stays off)
  packages+=(iptables)  # the NAT lab (MASQUERADE / --random-fully routers in network namespaces)
  packages+=(libnss3-tools openssl)  # the NAT lab trusts its own CA for TURN over TLS (certutil)
  packages+=(podman runc debootstrap)  # the container image test (infra/container/build.sh)
  packages+=(python3-venv)  # kubernetes-validate for the manifests test (infra/k8s/check.py)
  # `kubectl kustomize` renders the manifests (kubectl >= 1.27; Debian 12 ships 1.20 as
  # kubernetes-client, whose kustomize is too old for them: install a current kubectl then)
  command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)
  command -v node >/dev/null 2>&1 || packages+=(nodejs)
  command -v npm >/dev/null 2>&1 || packages+=(npm)
fi
if [ "$want_bench" = 1 ]; then
  packages+=(nginx-light libnginx-mod-rtmp wrk janus)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "bootstrap: system packages present"
fi
# Debian starts coturn's own server on install; only its client tools are wanted, and its
# server would hold port 3478 that `tidecast all` uses
if [ "$want_test" = 1 ] && command -v systemctl >/dev/null 2>&1 && systemctl is-enabled coturn >/dev/null 2>&1; then
  sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" systemctl disable --now coturn >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "bootstrap: cargo not found. Install the Rust toolchain (rustup, stable >= 1.95) and re-run." >&2
  exit 1
fi

if [ "$want_test" = 1 ]; then
  # S3 API server for the archive tests (a real S3 implementation over a directory)
  if ! command -v s3s-fs >/dev/null 2>&1; then
    echo "bootstrap: installing s3s-fs (cargo install, ~2 min)"
    cargo install s3s-fs@0.14.1 --locked --features binary --quiet
  fi
  # Kafka-protocol broker for the event-bus tests (a real Kafka API implementation in Rust)
  if ! command -v tansu >/dev/null 2>&1; then
    echo "bootstrap: installing tansu (cargo install, ~15 min on 2 cores)"
    cargo install tansu@0.6.0 --locked --features dynostore --quiet \
      --target-dir "${HOME}/.cache/tidecast/tansu-target"
  fi
  # the Kubernetes schemas, offline, for the manifests test (PyPI, in a venv of our own)
  venv="${HOME}/.cache/tidecast/venv"
  if [ ! -x "${venv}/bin/kubernetes-validate" ]; then
    echo "bootstrap: installing kubernetes-validate (PyPI, into ${venv})"
    /usr/bin/python3 -m venv "${venv}"
    "${venv}/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
  fi
  # libFuzzer driver for the fuzz targets (fuzz/run.sh)
  if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "bootstrap: installing cargo-fuzz (cargo install, ~2 min)"
    cargo install cargo-fuzz@0.13.2 --locked --quiet
  fi
fi
