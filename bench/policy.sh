#!/usr/bin/env bash
# Cost of network policy. (1) Connection rate (CRR) from pod a (app=client) to pod b
# (app=server), which a CiliumNetworkPolicy selects with 1,000 ingress rules over 1,000 CIDR
# identities plus, last, the deciding rule (fromEndpoints app=client, TCP 5001), and to pod c
# (app=open), which no policy selects. Runs alternate b, c, b, c, ... so that a change in the
# machine's load (other work on 2 cores moves CRR by 5x) hits both sides alike; the ratio is
# of the medians. (2) With ~100 selected endpoints, the wall time of `ciliate policy import` after one
# rule changes (it returns once every endpoint is reprogrammed), median of 3.
#
#   sudo bench/policy.sh [--secs N] [--runs N] [--no-build]
#
# Needs root. Everything lives in namespaces named cb-pol-*; all is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=5
RUNS=3
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) SECS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    *) echo "usage: $0 [--secs N] [--runs N] [--no-build]" >&2; exit 2 ;;
  esac
done

[ "$BUILD" = 1 ] && cargo build --release --bins -q
BIN=$PWD/target/release
NODE=cbpol$$
STATE=$(mktemp -d)
SOCK=$STATE/agent.sock
AGENT_PID=

cleanup() {
  set +e
  [ -n "$AGENT_PID" ] && kill -9 "$AGENT_PID" 2>/dev/null
  [ -s "$STATE/srv.pid" ] && kill -9 "$(cat "$STATE/srv.pid")" 2>/dev/null
  for ns in $(ip netns list | awk '/^cb-pol-/{print $1}'); do ip netns delete "$ns"; done
  rm -rf "/sys/fs/bpf/ciliate/$NODE" "$STATE"
  rmdir /sys/fs/bpf/ciliate 2>/dev/null
  for cg in /sys/fs/cgroup/unified/ciliate/"$NODE" /sys/fs/cgroup/ciliate/"$NODE"; do rmdir "$cg" 2>/dev/null; done
}
trap cleanup EXIT
trap "exit 130" INT TERM # so that a signal still cleans up
in_ns() { local ns=$1; shift; nsenter --net=/var/run/netns/"$ns" "$@"; }
cil() { "$BIN/ciliate" --socket "$SOCK" "$@"; }

# ---- the agent and two pods ----
ip netns add cb-pol-node; ip netns add cb-pol-a; ip netns add cb-pol-b
ip -n cb-pol-node link set lo up
ip -n cb-pol-node addr add 192.0.2.1/32 dev lo
# nsenter execs the agent: $! is the agent itself.
nsenter --net=/var/run/netns/cb-pol-node "$BIN/ciliate-agent" --node-name "$NODE" --pod-cidr 10.251.0.0/22 \
  --state-dir "$STATE" --socket "$SOCK" >"$STATE/agent.log" 2>&1 &
AGENT_PID=$!
disown "$AGENT_PID" # no job-control chatter when cleanup kills it
for _ in $(seq 100); do cil status >/dev/null 2>&1 && break; sleep 0.1; done
cni_add() { # ns container-id pod labels
  CNI_COMMAND=ADD CNI_CONTAINERID=$2 CNI_NETNS=/var/run/netns/$1 CNI_IFNAME=eth0 \
  CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=$3;CILIATE_LABELS=$4" CNI_PATH=/opt/cni/bin \
    in_ns cb-pol-node "$BIN/ciliate-cni" <<<"{\"cniVersion\":\"1.0.0\",\"name\":\"ciliate\",\"type\":\"ciliate-cni\",\"agentSocket\":\"$SOCK\"}"
}
cni_add cb-pol-a pol-a a app=client >/dev/null
# Thousands of connections a second leave the client's ports in TIME_WAIT: let it reuse them,
# or connect() itself becomes what is measured.
in_ns cb-pol-a sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65000"
ip_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])'; }
ip netns add cb-pol-c
DST=$(cni_add cb-pol-b pol-b b app=server | ip_of)
OPEN=$(cni_add cb-pol-c pol-c c app=open | ip_of)

measure() { # client-ns server-ns dst mode
  # nsenter execs the server, so $! is the server itself; its output must not hold $(...) open.
  nsenter --net=/var/run/netns/"$2" "$BIN/ciliate-bench" server --port 5001 >/dev/null 2>&1 &
  local srv=$!
  echo "$srv" >"$STATE/srv.pid"
  sleep 0.3
  in_ns "$1" "$BIN/ciliate-bench" "$4" --dst "$3" --secs "$SECS"
  kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null || true
  : >"$STATE/srv.pid"
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
paired_crr() { # alternates b (policy) and c (none); prints "rate_b p50/p99 rate_c p50/p99" (medians)
  local o rb=() rc=() lb=() lc=()
  for _ in $(seq "$RUNS"); do
    o=$(measure cb-pol-a cb-pol-b "$DST" crr); rb+=("$(field "$o" per_second)"); lb+=("$(field "$o" p50_us)/$(field "$o" p99_us)")
    o=$(measure cb-pol-a cb-pol-c "$OPEN" crr); rc+=("$(field "$o" per_second)"); lc+=("$(field "$o" p50_us)/$(field "$o" p99_us)")
  done
  python3 - "${rb[*]}" "${lb[*]}" "${rc[*]}" "${lc[*]}" <<'PY'
import sys
def med(rates, lats):
    r = [float(x) for x in rates.split()]; l = lats.split()
    i = sorted(range(len(r)), key=lambda k: r[k])[len(r) // 2]
    return f"{r[i]:.0f} {l[i]}"
print(med(sys.argv[1], sys.argv[2]), med(sys.argv[3], sys.argv[4]))
PY
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
read -r RATE1 LAT1 RATE0 LAT0 < <(paired_crr)

printf '\nConnections from a (CRR, 64-byte request/response), %s s per run, %s runs each, alternating; medians\n' "$SECS" "$RUNS"
printf '%-52s %14s %18s\n' "server" "connections/s" "p50/p99 (us)"
printf '%-52s %14.0f %18s\n' "c: no policy selects it" "$RATE0" "$LAT0"
printf '%-52s %14.0f %18s\n' "b: 1,000 CIDR rules + the deciding rule last" "$RATE1" "$LAT1"
printf 'ratio: %.3f (goal >= 0.95); identities known to the agent: %s; first import: %s ms\n' \
  "$(python3 -c "print($RATE1 / $RATE0)")" "$IDS" "$IMPORT0_MS"

# ---- 2. one rule changes, ~100 selected endpoints ----
for n in $(seq 4 101); do
  ip netns add "cb-pol-$n"
  cni_add "cb-pol-$n" "pol-$n" "p$n" app=server >/dev/null
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
if grep -i "reconcil" "$STATE/agent.log" >/dev/null; then
  echo "Agent log (reconcile), last lines:"
  grep -i "reconcil" "$STATE/agent.log" | tail -6 | cut -c1-200 | sed 's/^/  /'
else
  echo "(the agent logged nothing about reconciles)"
fi
