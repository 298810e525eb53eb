#!/usr/bin/env bash
# Pod-to-pod TCP through Ciliate's datapath vs. the same namespaces joined by plain veths and
# /32 routes through a node namespace with no BPF at all (the same topology Ciliate builds,
# minus our programs). Rounds alternate plain, ciliate, plain, ciliate...; prints per metric the
# median and min-max of each, and the ratio of the medians; the agent's CPU time per new
# connection (user + system, from /proc); then the agent's RSS at start and with 100 endpoints.
#
#   sudo bench/pod2pod.sh [--secs N] [--runs N] [--quick] [--no-build]
#
#   --secs N    seconds per measurement (default 5)
#   --runs N    rounds per path, interleaved (default 5)
#   --quick     checks that it works and cleans up: 1 s, 1 round, 5 endpoints, the binaries
#               already built (in $CILIATE_BIN_DIR, default target/release)
#   --no-build  do not run `cargo build --release` first
#
# CILIATE_AGENT_ARGS adds agent flags (e.g. `--flow-history-size 0`). CILIATE_AGENT_PAGES=PREFIX
# writes the pages of the agent's executable in its memory at start and with 100 endpoints to
# PREFIX.start and PREFIX.end (bench/hot-code.sh).
#
# The client is pinned to CPU 0 and the server to the last CPU (see bench/lib.sh). Needs root.
# Everything it makes is named cb<pid>-*, recorded, and removed on exit, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SECS=5
RUNS=5
PODS=100
BUILD=1
usage() { echo "usage: $0 [--secs N] [--runs N] [--quick] [--no-build]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) [ $# -ge 2 ] || usage; SECS=$2; shift 2 ;;
    --runs) [ $# -ge 2 ] || usage; RUNS=$2; shift 2 ;;
    --quick) SECS=1; RUNS=1; PODS=5; BUILD=0; shift ;;
    --no-build) BUILD=0; shift ;;
    *) usage ;;
  esac
done

[ "$BUILD" = 1 ] && cargo build --release --bins -q
BIN=${CILIATE_BIN_DIR:-$PWD/target/release}
NODE=${RUN}node
STATE=$(mktemp -d)
RESULTS=$STATE/results
trap cb_cleanup EXIT
trap "exit 130" INT TERM # so that a signal still cleans up

# ---- plain: veths and routes, no BPF ----
PN=$RUN-plain
mkns "$PN-node"; mkns "$PN-a"; mkns "$PN-b"
in_ns "$PN-node" sysctl -qw net.ipv4.ip_forward=1
# A node has an address of its own; it is the source of its ARP requests towards pods.
ip -n "$PN-node" link set lo up
ip -n "$PN-node" addr add 192.0.2.1/32 dev lo
i=2
for p in a b; do
  ip -n "$PN-node" link add "h$p" type veth peer name eth0 netns "$PN-$p"
  ip -n "$PN-node" link set "h$p" up
  hmac=$(ip -n "$PN-node" -o link show "h$p" | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
  ip -n "$PN-$p" link set lo up
  ip -n "$PN-$p" link set eth0 up
  ip -n "$PN-$p" addr add "10.250.0.$i/32" dev eth0
  ip -n "$PN-$p" route add 169.254.1.1 dev eth0 scope link
  ip -n "$PN-$p" route add default via 169.254.1.1 dev eth0
  ip -n "$PN-$p" neigh add 169.254.1.1 lladdr "$hmac" dev eth0 nud permanent
  ip -n "$PN-node" route add "10.250.0.$i/32" dev "h$p" scope link
  i=$((i + 1))
done
PLAIN_DST=10.250.0.3

# ---- ours: the agent and the CNI plugin ----
CN=$RUN-cil
mkns "$CN-node"; mkns "$CN-a"; mkns "$CN-b"
ip -n "$CN-node" link set lo up
ip -n "$CN-node" addr add 192.0.2.1/32 dev lo
SOCK=$STATE/agent/agent.sock
mkdir -p "$STATE/agent"
# The flow metrics (inside the node namespace) count every flow and every lost event.
# CILIATE_AGENT_ARGS: more agent flags, e.g. `--flow-history-size 0` (the history's share).
# shellcheck disable=SC2086
start_agent "$CN-node" "$NODE" "$STATE/agent" --pod-cidr 10.251.0.0/22 \
  --hubble-metrics-address 127.0.0.1:9965 ${CILIATE_AGENT_ARGS:-}
RSS_START=$(awk '/VmRSS/{print $2}' "/proc/$AGENT_PID/status")
PARTS_START=$(rss_parts "$AGENT_PID")
[ -z "${CILIATE_AGENT_PAGES:-}" ] || bench/hot_code.py pages "$AGENT_PID" "$CILIATE_AGENT_PAGES.start"
cni_add() { # ns container-id pod
  CNI_COMMAND=ADD CNI_CONTAINERID=$2 CNI_NETNS=/var/run/netns/$1 CNI_IFNAME=eth0 \
  CNI_ARGS="K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$3" CNI_PATH=/opt/cni/bin \
    in_ns "$CN-node" "$BIN/ciliate-cni" <<<"{\"cniVersion\":\"1.0.0\",\"name\":\"ciliate\",\"type\":\"ciliate-cni\",\"agentSocket\":\"$SOCK\"}"
}
cni_add "$CN-a" "$RUN-a" a >/dev/null
# The clients close first, so their ports sit in TIME_WAIT: without reuse, after ~30,000
# connections connect() searching for a free port is what CRR measures (rounds of 150/s).
for ns in "$PN-a" "$CN-a"; do
  in_ns "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65000"
done
OURS_DST=$(cni_add "$CN-b" "$RUN-b" b | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])')

measure() { # client-ns server-ns dst mode
  # nsenter execs the server, so $! is the server itself; its output must not hold $(...) open.
  pin_server nsenter --net=/var/run/netns/"$2" "$BIN/ciliate-bench" server --port 5001 >/dev/null 2>&1 &
  local srv=$!
  track "$srv"
  sleep 0.3
  pin_client nsenter --net=/var/run/netns/"$1" "$BIN/ciliate-bench" "$4" --dst "$3" --secs "$SECS"
  kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null || true
}
# The agent's CPU time (user + system) in microseconds: per-connection cost of events, flows and
# everything else the agent does for traffic, which the machine's other load barely moves.
agent_cpu_us() {
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) * 1000000 / hz}' "/proc/$AGENT_PID/stat"
}
record() { # path mode json
  local p=$1 m=$2 j=$3
  echo "$m $p $(field "$j" per_second)" >>"$RESULTS"
  echo "$m-p50 $p $(field "$j" p50_us)" >>"$RESULTS"
  echo "$m-p99 $p $(field "$j" p99_us)" >>"$RESULTS"
}

: >"$RESULTS"
# Flows the observer took in and events lost, from the agent's Hubble metrics.
flow_counts() {
  in_ns "$CN-node" python3 - <<'PY'
import re, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9965/metrics", timeout=5).read().decode()
def total(name):
    return sum(float(v) for v in re.findall(r"^" + name + r"(?:\{[^}]*\})? (\S+)$", text, re.M))
print(int(total("hubble_flows_processed_total")), int(total("hubble_lost_events_total")))
PY
}
CONNS=0
read -r FLOWS0 LOST0 <<<"$(flow_counts)"
for round in $(seq "$RUNS"); do
  for mode in rr crr; do
    echo "round $round of $RUNS: $mode plain, then ciliate..." >&2
    record plain "$mode" "$(measure "$PN-a" "$PN-b" "$PLAIN_DST" "$mode")"
    cpu0=$(agent_cpu_us)
    bpf0=$(bpf_snapshot "$NODE")
    out=$(measure "$CN-a" "$CN-b" "$OURS_DST" "$mode")
    bpf1=$(bpf_snapshot "$NODE")
    cpu1=$(agent_cpu_us)
    record ciliate "$mode" "$out"
    if [ "$mode" = crr ]; then
      echo "agent-cpu ciliate $(python3 -c "print(($cpu1 - $cpu0) / max(1, $(field "$out" transactions)))")" >>"$RESULTS"
      ns=$(bpf_account "$bpf0" "$bpf1" "$(field "$out" transactions)" "$STATE/bpf")
      [ -z "$ns" ] || echo "bpf-ns ciliate $ns" >>"$RESULTS"
      CONNS=$((CONNS + $(field "$out" transactions)))
    fi
  done
done
printf '\nPod-to-pod TCP, 64-byte request and response, %s s per measurement; %s\n' "$SECS" "$(pinning)"
summarize "$RESULTS" ciliate plain \
  "rr:requests/s (keep-alive)" "rr-p50:  p50 us" "rr-p99:  p99 us" \
  "crr:connections/s (CRR)" "crr-p50:  p50 us" "crr-p99:  p99 us" \
  "agent-cpu:agent CPU us per connection" "bpf-ns:BPF ns per connection"
# Every connection's events must become flows: none lost (the datapath's ring, the intake).
sleep 0.5
read -r FLOWS1 LOST1 <<<"$(flow_counts)"
printf '\nFlows: %s over %s CRR connections through ciliate (%.1f per connection; keep-alive rounds add a few); events lost: %s (goal 0)\n' \
  "$((FLOWS1 - FLOWS0))" "$CONNS" "$(python3 -c "print(($FLOWS1 - $FLOWS0) / max(1, $CONNS))")" "$((LOST1 - LOST0))"
bpf_report "$STATE/bpf"

# ---- agent memory with $PODS endpoints ----
for n in $(seq 3 "$PODS"); do
  mkns "$CN-p$n"
  cni_add "$CN-p$n" "$RUN-$n" "p$n" >/dev/null
done
rss=$(awk '/VmRSS/{print $2}' "/proc/$AGENT_PID/status")
[ -z "${CILIATE_AGENT_PAGES:-}" ] || bench/hot_code.py pages "$AGENT_PID" "$CILIATE_AGENT_PAGES.end"
eps=$("$BIN/ciliate" --socket "$SOCK" endpoint list -o 'jsonpath={.items[*].id}' | wc -w)
printf '\nAgent RSS: %.1f MB at start, %.1f MB with %s endpoints after the rounds above (goal < 20 MB)\n' \
  "$(python3 -c "print($RSS_START/1024)")" "$(python3 -c "print($rss/1024)")" "$eps"
echo "  at start: $PARTS_START"
echo "  with $eps endpoints: $(rss_parts "$AGENT_PID")"
