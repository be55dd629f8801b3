#!/usr/bin/env bash
# Multi-region lab on one machine (root): network namespaces and veth links
#
#   player-eu ── edge-eu ──(40 ms RTT)──┐
#                                        shield ── origin
#   player-us ── edge-us ──(120 ms RTT)─┘
#
#   infra/lab/regions.sh up | down | status
#
# Addresses: origin 10.10.0.1 · shield 10.10.0.2 / 10.10.1.1 / 10.10.2.1 · edge-eu 10.10.1.2
# (players reach it at 10.10.3.1) · edge-us 10.10.2.2 (10.10.4.1) · player-eu 10.10.3.2 ·
# player-us 10.10.4.2. Shield and edges forward, so every namespace reaches every other.
# Interfaces: link K's ends are {prefix}vKa / {prefix}vKb, in the order below (the shield's end
# of the long us link is {prefix}v3a).
# Link delays use `tc netem`; on a kernel without sch_netem the delayed links are user-space
# links instead (delay_link.py: TAP devices and a relay holding each frame for the delay).
# LAB_PREFIX (default `tc-`) prefixes namespace names.
set -euo pipefail
prefix="${LAB_PREFIX:-tc-}"
names=(origin shield edge-eu edge-us player-eu player-us)
ns() { echo "${prefix}$1"; }

need_root() {
  [ "$(id -u)" = 0 ] || { echo "regions.sh: needs root (ip netns)" >&2; exit 2; }
  command -v ip >/dev/null || { echo "regions.sh: ip missing: apt-get install iproute2" >&2; exit 2; }
}

# Can this kernel delay packets (sch_netem)? Tried once on a throwaway veth pair.
netem_ok() {
  if [ -z "${netem_checked:-}" ]; then
    netem_checked=1 netem=no
    local probe="${prefix}netem"
    ip netns add "$probe"
    if ip -n "$probe" link add p0 type veth peer name p1 2>/dev/null \
       && ip netns exec "$probe" tc qdisc add dev p0 root netem delay 1ms 2>/dev/null; then
      netem=yes
    fi
    ip netns del "$probe"
  fi
  [ "$netem" = yes ]
}

# link A B ADDR_A ADDR_B [ONE_WAY_DELAY]: {prefix}v{K}a in A, {prefix}v{K}b in B, K = 1, 2, …
# A veth pair, delayed with netem; without sch_netem, a user-space link (delay_link.py: two TAP
# devices and a relay that holds every frame ONE_WAY_DELAY) with the same names.
links=0
link() {
  links=$((links + 1))
  local a=$1 b=$2 ia="${prefix}v${links}a" ib="${prefix}v${links}b"
  if [ -n "${5:-}" ] && ! netem_ok; then
    python3 "$(dirname "$0")/delay_link.py" "$ia" "$(ns "$a")" "$ib" "$(ns "$b")" "$5"
    echo "link $a <-> $b: delay $5 each way (user-space link: this kernel has no sch_netem)"
  else
    ip link add "$ia" type veth peer name "$ib"
    ip link set "$ia" netns "$(ns "$a")"
    ip link set "$ib" netns "$(ns "$b")"
  fi
  ip -n "$(ns "$a")" addr add "$3/30" dev "$ia"
  ip -n "$(ns "$b")" addr add "$4/30" dev "$ib"
  ip -n "$(ns "$a")" link set "$ia" up
  ip -n "$(ns "$b")" link set "$ib" up
  if [ -n "${5:-}" ] && netem_ok; then
    ip netns exec "$(ns "$a")" tc qdisc add dev "$ia" root netem delay "$5"
    ip netns exec "$(ns "$b")" tc qdisc add dev "$ib" root netem delay "$5"
    echo "link $a <-> $b: netem delay $5 each way"
  fi
}

up() {
  need_root
  down >/dev/null 2>&1 || true
  for n in "${names[@]}"; do
    ip netns add "$(ns "$n")"
    ip -n "$(ns "$n")" link set lo up
  done
  link origin shield 10.10.0.1 10.10.0.2 2ms
  link shield edge-eu 10.10.1.1 10.10.1.2 20ms
  link shield edge-us 10.10.2.1 10.10.2.2 60ms
  link edge-eu player-eu 10.10.3.1 10.10.3.2
  link edge-us player-us 10.10.4.1 10.10.4.2
  for n in shield edge-eu edge-us; do ip netns exec "$(ns "$n")" sysctl -qw net.ipv4.ip_forward=1; done
  ip -n "$(ns origin)" route add default via 10.10.0.2
  ip -n "$(ns edge-eu)" route add default via 10.10.1.1
  ip -n "$(ns edge-us)" route add default via 10.10.2.1
  ip -n "$(ns player-eu)" route add default via 10.10.3.1
  ip -n "$(ns player-us)" route add default via 10.10.4.1
  ip -n "$(ns shield)" route add 10.10.3.0/30 via 10.10.1.2
  ip -n "$(ns shield)" route add 10.10.4.0/30 via 10.10.2.2
  echo "lab up: ${names[*]} (prefix ${prefix})"
}

down() {
  for n in "${names[@]}"; do ip netns del "$(ns "$n")" 2>/dev/null || true; done
  # user-space links end with their devices; make sure
  pkill -f "delay_link.py ${prefix}v" 2>/dev/null || true
  echo "lab down"
}

status() {
  for n in "${names[@]}"; do
    printf '%-12s ' "$n"; ip -n "$(ns "$n")" -br addr 2>/dev/null | awk '$1 != "lo" { printf "%s %s  ", $1, $3 }'; echo
  done
}

case "${1:-}" in
  up) up ;;
  down) need_root; down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
