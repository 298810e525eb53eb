#!/usr/bin/env bash
# Cost of network policy. (1) Connection rate (CRR) from pod a (app=client) to pod b
# (app=server), which a CiliumNetworkPolicy selects with 1,000 ingress rules over 1,000 CIDR
# identities plus, last, the deciding rule (fromEndpoints app=client, TCP 5001), and to pod c
# (app=open), which no policy selects. Runs alternate b, c, b, c, ... so that a change in the
# machine's load (other work on 2 cores moves CRR by 5x) hits both sides alike; the ratio is
# of the medians. (2) With ~100 selected endpoints, the wall time of `ciliate policy import` after one
# rule changes (it returns once every endpoint is reprogrammed), median of 3.
#
#   sudo bench/policy.sh [--secs N] [--runs N] [--quick] [--no-build]
#
#   --quick     checks that it works and cleans up: 1 s, 1 round, 5 endpoints, the binaries
#               already built (in $CILIATE_BIN_DIR, default target/release)
#
# The client is pinned to CPU 0 and the servers to the last CPU (see bench/lib.sh). Needs
# root. Everything it makes is named cb<pid>-*, recorded, and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SECS=5
RUNS=5
PODS=101
BUILD=1
usage() { echo "usage: $0 [--secs N] [--runs N] [--quick] [--no-build]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) [ $# -ge 2 ] || usage; SECS=$2; shift 2 ;;
    --runs) [ $# -ge 2 ] || usage; RUNS=$2; shift 2 ;;
    --quick) SECS=1; RUNS=1; PODS=8; BUILD=0; shift ;;
    --no-build) BUILD=0; shift ;;
    *) usage ;;
  esac
done

[ "$BUILD" = 1 ] && cargo build --release --bins -q
BIN=${CILIATE_BIN_DIR:-$PWD/target/release}
NODE=${RUN}pol
STATE=$(mktemp -d)
AGENT=$STATE/agent
SOCK=$AGENT/agent.sock
RESULTS=$STATE/results
trap cb_cleanup EXIT
trap "exit 130" INT TERM # so that a signal still cleans up
cil() { "$BIN/ciliate" --socket "$SOCK" "$@"; }
NS=$RUN-pol

# ---- the agent and two pods ----
mkns "$NS-node"; mkns "$NS-a"; mkns "$NS-b"; mkns "$NS-c"
ip -n "$NS-node" link set lo up
ip -n "$NS-node" addr add 192.0.2.1/32 dev lo
mkdir -p "$AGENT"
start_agent "$NS-node" "$NODE" "$AGENT" --pod-cidr 10.251.0.0/22
track_path "$STATE"
cni_add() { # ns container-id pod labels
  CNI_COMMAND=ADD CNI_CONTAINERID=$2 CNI_NETNS=/var/run/netns/$1 CNI_IFNAME=eth0 \
  CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=$3;CILIATE_LABELS=$4" CNI_PATH=/opt/cni/bin \
    in_ns "$NS-node" "$BIN/ciliate-cni" <<<"{\"cniVersion\":\"1.0.0\",\"name\":\"ciliate\",\"type\":\"ciliate-cni\",\"agentSocket\":\"$SOCK\"}"
}
cni_add "$NS-a" "$RUN-pol-a" a app=client >/dev/null
# Thousands of connections a second leave the client's ports in TIME_WAIT: let it reuse them,
# or connect() itself becomes what is measured.
in_ns "$NS-a" sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65000"
ip_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])'; }
DST=$(cni_add "$NS-b" "$RUN-pol-b" b app=server | ip_of)
OPEN=$(cni_add "$NS-c" "$RUN-pol-c" c app=open | ip_of)

measure() { # client-ns server-ns dst mode
  # nsenter execs the server, so $! is the server itself; its output must not hold $(...) open.
  pin_server nsenter --net=/var/run/netns/"$2" "$BIN/ciliate-bench" server --port 5001 >/dev/null 2>&1 &
  local srv=$!
  track "$srv"
  sleep 0.3
  pin_client nsenter --net=/var/run/netns/"$1" "$BIN/ciliate-bench" "$4" --dst "$3" --secs "$SECS"
  kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null || true
}
paired_crr() { # alternates b (policy) and c (none), recording rate and latency per round
  local o
  for round in $(seq "$RUNS"); do
    echo "round $round of $RUNS: b (policy), then c (none)..." >&2
    o=$(measure "$NS-a" "$NS-b" "$DST" crr)
    echo "crr policy $(field "$o" per_second)" >>"$RESULTS"
    echo "p50 policy $(field "$o" p50_us)" >>"$RESULTS"; echo "p99 policy $(field "$o" p99_us)" >>"$RESULTS"
    o=$(measure "$NS-a" "$NS-c" "$OPEN" crr)
    echo "crr none $(field "$o" per_second)" >>"$RESULTS"
    echo "p50 none $(field "$o" p50_us)" >>"$RESULTS"; echo "p99 none $(field "$o" p99_us)" >>"$RESULTS"
  done
}

# The policy: 1,000 fromCIDR rules (1,000 CIDR identities) on TCP 5001, then the deciding rule.
# $1: the file; $2: what the first CIDR is (to change one rule).
gen_policy() {
  python3 - "$1" "$2" <<'EOF'
import sys
path, first = sys.argv[1], sys.argv[2]
out = ["apiVersion: cilium.io/v2", "kind: CiliumNetworkPolicy",
       "metadata:", "  name: bench-1000-rules", "  namespace: default",
       "spec:", "  endpointSelector:", "    matchLabels:", "      app: server", "  ingress:"]
port = ["    toPorts:", "    - ports:", "      - port: \"5001\"", "        protocol: TCP"]
for i in range(1000):
    cidr = first if i == 0 else f"10.250.{i // 250}.{i % 250 + 1}/32"
    out += [f"  - fromCIDR:", f"    - {cidr}"] + port
out += ["  - fromEndpoints:", "    - matchLabels:", "        app: client"] + port
open(path, "w").write("\n".join(out) + "\n")
EOF
}


# ---- 1. 1,000 rules on b, the deciding one last; c stays unselected ----
POL=$STATE/policy.yaml
gen_policy "$POL" 10.250.0.1/32
t0=$(date +%s.%N)
cil policy import -f "$POL" >/dev/null
t1=$(date +%s.%N)
IMPORT0_MS=$(python3 -c "print(round(($t1 - $t0) * 1000, 1))")
if ! cil policy trace --src default/a --dst default/b --dport 5001/tcp >"$STATE/trace.txt" 2>&1; then
  echo "policy trace does not allow default/a -> default/b:5001/tcp:" >&2
  cat "$STATE/trace.txt" >&2
  exit 1
fi
IDS=$(cil identity list -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
: >"$RESULTS"
paired_crr

printf '\nConnections from a (CRR, 64-byte request/response), %s s per measurement; %s\n' "$SECS" "$(pinning)"
printf 'policy: b, selected by 1,000 CIDR rules + the deciding rule last; none: c, no policy selects it\n'
summarize "$RESULTS" policy none "crr:connections/s (goal >= 0.95)" "p50:  p50 us" "p99:  p99 us"
printf 'identities known to the agent: %s; first import: %s ms\n' "$IDS" "$IMPORT0_MS"

# ---- 2. one rule changes, ~100 selected endpoints ----
for n in $(seq 4 "$PODS"); do
  mkns "$NS-$n"
  cni_add "$NS-$n" "$RUN-pol-$n" "p$n" app=server >/dev/null
done
EPS=$(cil endpoint list -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
times=()
for k in 1 2 3; do
  gen_policy "$POL" "10.250.10.$k/32"
  t0=$(date +%s.%N)
  cil policy import -f "$POL" >/dev/null
  t1=$(date +%s.%N)
  times+=("$(python3 -c "print(($t1 - $t0) * 1000)")")
done
printf '\nChange one rule with %s endpoints (%s selected): policy import wall time %s ms, median %.1f ms (goal < 100 ms)\n' \
  "$EPS" "$((EPS - 2))" "$(printf '%.1f ' "${times[@]}" | sed 's/ $//; s/ /, /g')" \
  "$(printf '%s\n' "${times[@]}" | sort -n | sed -n 2p)"
if grep -i "reconcil" "$AGENT/agent.log" >/dev/null; then
  echo "Agent log (reconcile), last lines:"
  grep -i "reconcil" "$AGENT/agent.log" | tail -6 | cut -c1-200 | sed 's/^/  /'
else
  echo "(the agent logged nothing about reconciles)"
fi
