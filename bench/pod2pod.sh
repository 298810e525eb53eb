#!/usr/bin/env bash
# Pod-to-pod TCP through Ciliate's datapath vs. the same namespaces joined by plain veths and
# /32 routes through a node namespace with no BPF at all (the same topology Ciliate builds,
# minus our programs). Prints request/response and connection rates side by side with their
# ratio, then the agent's RSS with 100 endpoints.
#
#   sudo bench/pod2pod.sh [--secs N] [--runs N]
#
# Needs root. Everything lives in namespaces named cb-*; all is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=5
RUNS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) SECS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    *) echo "usage: $0 [--secs N] [--runs N]" >&2; exit 2 ;;
  esac
done

cargo build --release --bins -q
BIN=$PWD/target/release
NODE=cbnode$$
STATE=$(mktemp -d)
SOCK=$STATE/agent.sock
AGENT_PID=

cleanup() {
  set +e
  [ -n "$AGENT_PID" ] && kill -9 "$AGENT_PID" 2>/dev/null
  pkill -f "ciliate-bench server --port 5001" 2>/dev/null
  for ns in $(ip netns list | awk '/^cb-/{print $1}'); do ip netns delete "$ns"; done
  rm -rf "/sys/fs/bpf/ciliate/$NODE" "$STATE"
  rmdir /sys/fs/bpf/ciliate 2>/dev/null
  for cg in /sys/fs/cgroup/unified/ciliate/"$NODE" /sys/fs/cgroup/ciliate/"$NODE"; do rmdir "$cg" 2>/dev/null; done
}
trap cleanup EXIT
trap "exit 130" INT TERM # so that a signal still cleans up
in_ns() { local ns=$1; shift; nsenter --net=/var/run/netns/"$ns" "$@"; }

# ---- plain: veths and routes, no BPF ----
ip netns add cb-plain-node; ip netns add cb-plain-a; ip netns add cb-plain-b
in_ns cb-plain-node sysctl -qw net.ipv4.ip_forward=1
# A node has an address of its own; it is the source of its ARP requests towards pods.
ip -n cb-plain-node link set lo up
ip -n cb-plain-node addr add 192.0.2.1/32 dev lo
i=2
for p in a b; do
  ip -n cb-plain-node link add "h$p" type veth peer name eth0 netns "cb-plain-$p"
  ip -n cb-plain-node link set "h$p" up
  hmac=$(ip -n cb-plain-node -o link show "h$p" | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
  ip -n "cb-plain-$p" link set lo up
  ip -n "cb-plain-$p" link set eth0 up
  ip -n "cb-plain-$p" addr add "10.250.0.$i/32" dev eth0
  ip -n "cb-plain-$p" route add 169.254.1.1 dev eth0 scope link
  ip -n "cb-plain-$p" route add default via 169.254.1.1 dev eth0
  ip -n "cb-plain-$p" neigh add 169.254.1.1 lladdr "$hmac" dev eth0 nud permanent
  ip -n cb-plain-node route add "10.250.0.$i/32" dev "h$p" scope link
  i=$((i + 1))
done
PLAIN_DST=10.250.0.3

# ---- ours: the agent and the CNI plugin ----
ip netns add cb-node; ip netns add cb-cil-a; ip netns add cb-cil-b
ip -n cb-node link set lo up
ip -n cb-node addr add 192.0.2.1/32 dev lo
# nsenter execs the agent: $! is the agent itself (for its RSS, and for kill).
nsenter --net=/var/run/netns/cb-node "$BIN/ciliate-agent" --node-name "$NODE" --pod-cidr 10.251.0.0/22 \
  --state-dir "$STATE" --socket "$SOCK" >"$STATE/agent.log" 2>&1 &
AGENT_PID=$!
disown "$AGENT_PID" # no job-control chatter when cleanup kills it
for _ in $(seq 100); do "$BIN/ciliate" --socket "$SOCK" status >/dev/null 2>&1 && break; sleep 0.1; done
cni_add() { # ns container-id pod
  CNI_COMMAND=ADD CNI_CONTAINERID=$2 CNI_NETNS=/var/run/netns/$1 CNI_IFNAME=eth0 \
  CNI_ARGS="K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$3" CNI_PATH=/opt/cni/bin \
    in_ns cb-node "$BIN/ciliate-cni" <<<"{\"cniVersion\":\"1.0.0\",\"name\":\"ciliate\",\"type\":\"ciliate-cni\",\"agentSocket\":\"$SOCK\"}"
}
cni_add cb-cil-a bench-a a >/dev/null
OURS_DST=$(cni_add cb-cil-b bench-b b | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])')

measure() { # client-ns server-ns dst mode
  # nsenter execs the server, so $! is the server itself; its output must not hold $(...) open.
  nsenter --net=/var/run/netns/"$2" "$BIN/ciliate-bench" server --port 5001 >/dev/null 2>&1 &
  local srv=$!
  sleep 0.3
  in_ns "$1" "$BIN/ciliate-bench" "$4" --dst "$3" --secs "$SECS"
  kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null || true
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

printf '\nPod-to-pod TCP, %s s per run, best of %s runs (64-byte request and response)\n' "$SECS" "$RUNS"
printf '%-26s %14s %14s %8s %16s %16s\n' "test" "plain veth" "ciliate" "ratio" "p50/p99 plain" "p50/p99 ciliate"
for mode in rr crr; do
  best_p=0; best_o=0; lat_p=; lat_o=
  for _ in $(seq "$RUNS"); do
    p=$(measure cb-plain-a cb-plain-b "$PLAIN_DST" "$mode")
    o=$(measure cb-cil-a cb-cil-b "$OURS_DST" "$mode")
    pr=$(field "$p" per_second); or=$(field "$o" per_second)
    if python3 -c "import sys; sys.exit(0 if $pr > $best_p else 1)"; then best_p=$pr; lat_p="$(field "$p" p50_us)/$(field "$p" p99_us) us"; fi
    if python3 -c "import sys; sys.exit(0 if $or > $best_o else 1)"; then best_o=$or; lat_o="$(field "$o" p50_us)/$(field "$o" p99_us) us"; fi
  done
  label=$([ "$mode" = rr ] && echo "requests/s (keep-alive)" || echo "connections/s (CRR)")
  printf '%-26s %14.0f %14.0f %8.3f %16s %16s\n' "$label" "$best_p" "$best_o" \
    "$(python3 -c "print($best_o / $best_p)")" "$lat_p" "$lat_o"
done

# ---- agent memory with 100 endpoints ----
for n in $(seq 3 100); do
  ip netns add "cb-cil-$n"
  cni_add "cb-cil-$n" "bench-$n" "p$n" >/dev/null
done
rss=$(awk '/VmRSS/{print $2}' "/proc/$AGENT_PID/status")
eps=$("$BIN/ciliate" --socket "$SOCK" endpoint list -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
printf '\nAgent RSS with %s endpoints: %.1f MB (goal <= 30 MB)\n' "$eps" "$(python3 -c "print($rss/1024)")"
