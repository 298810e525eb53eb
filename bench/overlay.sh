#!/usr/bin/env bash
# Cross-node pod-to-pod cost of the overlay. Two nodes (network namespaces on one underlay
# bridge) twice over, side by side:
#   plain:    pods on veths, the nodes joined by a Linux VXLAN device with static routes, no BPF
#   ciliate:  the same topology with a ciliate-agent per node (etcd in the underlay), pods wired
#             by ciliate-cni, the BPF overlay (VNI = identity, bpf_redirect_peer on arrival)
# (1) request/response on long-lived connections (RR) and connection rate (CRR) from a pod on
# node 0 to a pod on node 1, runs alternating plain/ciliate so that load drift hits both alike;
# For CRR, both paths' CPU time per connection of client and server together (the kernel's
# work for a packet mostly runs inline in the sender's context, so this is the whole path's
# cost, less exposed to other load than the rates); for ours also both agents' CPU and, with
# kernel.bpf_stats_enabled=1 and bpftool, the BPF programs' run time.
# (2) the time from a new pod's CNI ADD returning on node 1 until a pod on node 0 connects to it
# (policy and ipcache in place on both sides), over --pods new pods: p50/p99.
#
#   sudo bench/overlay.sh [--secs N] [--runs N] [--pods N] [--quick] [--no-build]
#
#   --quick     checks that it works and cleans up: 1 s, 1 round, 3 pods, the binaries already
#               built (in $CILIATE_BIN_DIR, default target/release)
#
# The client is pinned to CPU 0 and the server to the last CPU (see bench/lib.sh). Needs root,
# etcd (Debian's etcd-server). Everything it makes is named cb<pid>ov-*, recorded, and removed
# on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SECS=5
RUNS=5
PODS=30
BUILD=1
usage() { echo "usage: $0 [--secs N] [--runs N] [--pods N] [--quick] [--no-build]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) [ $# -ge 2 ] || usage; SECS=$2; shift 2 ;;
    --runs) [ $# -ge 2 ] || usage; RUNS=$2; shift 2 ;;
    --pods) [ $# -ge 2 ] || usage; PODS=$2; shift 2 ;;
    --quick) SECS=1; RUNS=1; PODS=3; BUILD=0; shift ;;
    --no-build) BUILD=0; shift ;;
    *) usage ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
command -v etcd >/dev/null || { echo "etcd is missing: apt-get install etcd-server" >&2; exit 1; }
[ "$BUILD" = 1 ] && cargo build --release --bins -q
BIN=${CILIATE_BIN_DIR:-$PWD/target/release}
STATE=$(mktemp -d)
TAG=${RUN}ov
OV=$TAG
track_path "$STATE"
for n in 0 1; do
  track_path "/sys/fs/bpf/ciliate/$TAG-$n"
  track_path "/sys/fs/cgroup/unified/ciliate/$TAG-$n"
  track_path "/sys/fs/cgroup/ciliate/$TAG-$n"
done
trap cb_cleanup EXIT
[ -n "${KEEP_STATE:-}" ] && trap - EXIT
trap "exit 130" INT TERM

# ---- the underlay: one bridge, the world's side of both setups ----
mkns "$OV-net"
ip -n $OV-net link add br0 type bridge
ip -n $OV-net addr add 172.30.0.1/24 dev br0
ip -n $OV-net link set br0 up
ip -n $OV-net link set lo up
node_ns() { # name underlay-ip underlay-veth
  mkns "$1"
  # Made inside the underlay: no name in the host's namespace, where another run could clash.
  ip -n "$OV-net" link add "$3" type veth peer name eth0 netns "$1"
  ip -n "$OV-net" link set "$3" master br0 up
  ip -n "$1" addr add "$2/24" dev eth0
  ip -n "$1" link set eth0 up
  ip -n "$1" link set lo up
  ip -n "$1" route add default via 172.30.0.1
}

# ---- plain: Linux VXLAN + static routes ----
for i in 0 1; do
  j=$((1 - i))
  n=$OV-p$i
  node_ns "$n" "172.30.0.2$i" "p$i-u"
  in_ns "$n" sysctl -qw net.ipv4.ip_forward=1
  ip -n "$n" link add vxp type vxlan id 42 dstport 4789 local "172.30.0.2$i" remote "172.30.0.2$j" dev eth0
  ip -n "$n" addr add "192.168.77.$((i + 1))/24" dev vxp
  ip -n "$n" link set vxp up
  ip -n "$n" route add "10.241.$j.0/24" via "192.168.77.$((j + 1))" dev vxp
  pod=$OV-pp$i
  mkns "$pod"
  ip -n "$n" link add "pv$i" type veth peer name eth0 netns "$pod"
  ip -n "$n" addr add "10.241.$i.1/32" dev "pv$i"
  ip -n "$n" link set "pv$i" up mtu 1450
  ip -n "$n" route add "10.241.$i.2/32" dev "pv$i"
  ip -n "$pod" addr add "10.241.$i.2/32" dev eth0
  ip -n "$pod" link set eth0 up mtu 1450
  ip -n "$pod" link set lo up
  ip -n "$pod" route add "10.241.$i.1/32" dev eth0
  ip -n "$pod" route add default via "10.241.$i.1" dev eth0
done
PLAIN_DST=10.241.1.2

# ---- ciliate: etcd, one agent per node, pods through the CNI ----
# nsenter execs etcd and the agents: $! is the process itself, recorded for cleanup.
nsenter --net=/var/run/netns/"$OV-net" etcd --name "$TAG" --data-dir "$STATE/etcd" \
  --listen-client-urls http://172.30.0.1:2379 --advertise-client-urls http://172.30.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2390 --initial-advertise-peer-urls http://127.0.0.1:2390 \
  --initial-cluster "$TAG=http://127.0.0.1:2390" >"$STATE/etcd.log" 2>&1 &
track $!
AGENT_PIDS=()
for i in 0 1; do
  n=$OV-c$i
  node_ns "$n" "172.30.0.3$i" "c$i-u"
  ip -n $OV-net route add "10.242.$i.0/24" via "172.30.0.3$i"
  mkdir -p "$STATE/c$i"
  nsenter --net=/var/run/netns/"$n" "$BIN/ciliate-agent" --node-name "$TAG-$i" --pod-cidr "10.242.$i.0/24" \
    --node-ip "172.30.0.3$i" --etcd-endpoints http://172.30.0.1:2379 \
    --state-dir "$STATE/c$i" --socket "$STATE/c$i/agent.sock" >"$STATE/c$i/agent.log" 2>&1 &
  track $!
  AGENT_PIDS+=($!)
done
for i in 0 1; do
  for _ in $(seq 300); do "$BIN/ciliate" --socket "$STATE/c$i/agent.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
done
cni_add() { # node pod-netns name [labels] -> prints the address
  CNI_COMMAND=ADD CNI_CONTAINERID="$3" CNI_NETNS=/var/run/netns/$2 CNI_IFNAME=eth0 CNI_PATH=/x \
  CNI_ARGS="K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$3;CILIATE_LABELS=${4:-app=$3}" \
    in_ns "$OV-c$1" "$BIN/ciliate-cni" \
    <<<"{\"cniVersion\":\"1.0.0\",\"name\":\"ciliate\",\"type\":\"ciliate-cni\",\"agentSocket\":\"$STATE/c$1/agent.sock\"}" |
    python3 -c 'import json,sys
r = json.load(sys.stdin)
if "ips" not in r: sys.exit("CNI ADD failed: %s" % r)
print(r["ips"][0]["address"].split("/")[0])'
}
for i in 0 1; do mkns "$OV-cp$i"; done
cni_add 0 $OV-cp0 client >/dev/null
CIL_DST=$(cni_add 1 $OV-cp1 server)

# ---- 1. RR and CRR, alternating ----
# Thousands of connections a second leave the client's ports in TIME_WAIT: let it reuse them,
# or connect() itself becomes what is measured.
for pod in $OV-pp0 $OV-cp0; do
  in_ns "$pod" sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65000"
done
declare -A SERVER
for path in plain ciliate; do
  pod=$OV-pp1
  [ "$path" = ciliate ] && pod=$OV-cp1
  # nsenter itself (not the in_ns function, which would fork a subshell) so that $! is the server.
  pin_server nsenter --net=/var/run/netns/"$pod" "$BIN/ciliate-bench" server --port 5001 >/dev/null 2>&1 &
  track $!
  SERVER[$path]=$!
done
sleep 0.5
in_ns $OV-pp0 "$BIN/ciliate-bench" rr --dst "$PLAIN_DST" --secs 1 >/dev/null # warm-up (ARP, routes)
in_ns $OV-cp0 "$BIN/ciliate-bench" rr --dst "$CIL_DST" --secs 1 >/dev/null
RESULTS=$STATE/results
: >"$RESULTS"
# Both agents' CPU time (user + system) in microseconds.
agents_cpu_us() {
  local hz total=0 pid
  hz=$(getconf CLK_TCK)
  for pid in "${AGENT_PIDS[@]}"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo $((total * 1000000 / hz))
}
# CPU time (user + system) of process $1 in microseconds.
proc_cpu_us() { awk -v hz="$(getconf CLK_TCK)" '{printf "%d", ($14 + $15) * 1000000 / hz}' "/proc/$1/stat"; }
# Runs a client (its arguments); prints its output and writes its CPU time (user + system, in
# microseconds) to $STATE/client-cpu. The kernel's work for a packet mostly runs in the
# context of the process that sent it (softirqs run inline), so client + server CPU per
# connection is the cost of the whole path, ours or plain, less exposed to other load than
# the wall clock.
run_client() {
  local out
  out=$("$@"; times >"$STATE/times")
  awk 'NR == 2 {
    split($1, u, /[ms]/); split($2, s, /[ms]/)
    printf "%d", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * 1000000
  }' "$STATE/times" >"$STATE/client-cpu"
  echo "$out"
}
record() { # path mode json
  echo "$2 $1 $(field "$3" per_second)" >>"$RESULTS"
  echo "$2-p50 $1 $(field "$3" p50_us)" >>"$RESULTS"
  echo "$2-p99 $1 $(field "$3" p99_us)" >>"$RESULTS"
}
for round in $(seq "$RUNS"); do
  for mode in rr crr; do
    echo "round $round of $RUNS: $mode plain, then ciliate..." >&2
    srv0=$(proc_cpu_us "${SERVER[plain]}")
    out=$(run_client pin_client nsenter --net=/var/run/netns/"$OV-pp0" "$BIN/ciliate-bench" "$mode" --dst "$PLAIN_DST" --secs "$SECS")
    srv1=$(proc_cpu_us "${SERVER[plain]}")
    record plain "$mode" "$out"
    if [ "$mode" = crr ]; then echo "path-cpu plain $(python3 -c "print(($(cat "$STATE/client-cpu") + $srv1 - $srv0) / max(1, $(field "$out" transactions)))")" >>"$RESULTS"; fi
    cpu0=$(agents_cpu_us)
    bpf0=$(bpf_snapshot "$TAG-0" "$TAG-1")
    srv0=$(proc_cpu_us "${SERVER[ciliate]}")
    out=$(run_client pin_client nsenter --net=/var/run/netns/"$OV-cp0" "$BIN/ciliate-bench" "$mode" --dst "$CIL_DST" --secs "$SECS")
    srv1=$(proc_cpu_us "${SERVER[ciliate]}")
    bpf1=$(bpf_snapshot "$TAG-0" "$TAG-1")
    cpu1=$(agents_cpu_us)
    record ciliate "$mode" "$out"
    if [ "$mode" = crr ]; then
      echo "path-cpu ciliate $(python3 -c "print(($(cat "$STATE/client-cpu") + $srv1 - $srv0) / max(1, $(field "$out" transactions)))")" >>"$RESULTS"
      echo "agent-cpu ciliate $(python3 -c "print(($cpu1 - $cpu0) / max(1, $(field "$out" transactions)))")" >>"$RESULTS"
      ns=$(bpf_account "$bpf0" "$bpf1" "$(field "$out" transactions)" "$STATE/bpf")
      [ -z "$ns" ] || echo "bpf-ns ciliate $ns" >>"$RESULTS"
    fi
  done
done
printf '\nPod on node 0 -> pod on node 1 (plain: Linux VXLAN; ciliate: our overlay), %s s per measurement; %s\n' "$SECS" "$(pinning)"
summarize "$RESULTS" ciliate plain \
  "rr:request/response (RR) /s" "rr-p50:  p50 us" "rr-p99:  p99 us" \
  "crr:connections (CRR) /s" "crr-p50:  p50 us" "crr-p99:  p99 us" \
  "path-cpu:CPU us per connection, client + server" \
  "agent-cpu:CPU us per connection, both agents" "bpf-ns:BPF ns per connection, both nodes"
bpf_report "$STATE/bpf"

# ---- 2. a new pod on node 1, reachable from node 0 ----
# Policy makes "reachable" mean "known by identity on both nodes": the client may only send to
# role=new pods (so node 0 needs the pod's address → identity in its ipcache; before that the
# address is world and dropped), and new pods accept only app=client. The client polls with
# 20 ms connect timeouts from before the ADD; the clock starts when ADD returns (the
# runtime's view: the pod is up).
cat >"$STATE/reach-policy.yaml" <<'YAML'
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: bench-client-to-new}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {role: new}}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: bench-new-from-client}
spec:
  endpointSelector: {matchLabels: {role: new}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
YAML
for i in 0 1; do "$BIN/ciliate" --socket "$STATE/c$i/agent.sock" policy import -f "$STATE/reach-policy.yaml" >/dev/null; done
times=()
for k in $(seq "$PODS"); do
  ns=$OV-new$k
  mkns "$ns"
  nsenter --net=/var/run/netns/"$ns" "$BIN/ciliate-bench" ident-server --id "n$k" --port 8080 >/dev/null 2>&1 &
  track $!
  ip=10.242.1.$((k + 2)) # IPAM hands addresses out in order on a fresh node
  in_ns $OV-cp0 python3 - "$ip" "$STATE/added$k" >"$STATE/reach$k" <<'PY' &
import os, socket, sys, time
ip, flag = sys.argv[1], sys.argv[2]
deadline = time.time() + 20
while time.time() < deadline:
    s = socket.socket(); s.settimeout(0.02)
    try:
        s.connect((ip, 8080)); s.close()
        t = time.time()
        while not os.path.exists(flag): time.sleep(0.001)
        print((t - float(open(flag).read())) * 1000); sys.exit(0)
    except OSError:
        s.close(); time.sleep(0.005)
print("timeout"); sys.exit(1)
PY
  poller=$!
  got=$(cni_add 1 "$ns" "new$k" "app=new$k,role=new")
  date +%s.%N >"$STATE/added$k.tmp" && mv "$STATE/added$k.tmp" "$STATE/added$k"
  [ "$got" = "$ip" ] || { echo "pod new$k got $got, expected $ip" >&2; exit 1; }
  wait "$poller" || true
  times+=("$(cat "$STATE/reach$k")")
done
python3 - "${times[@]}" <<'PY'
import sys
vals = sys.argv[1:]
bad = [v for v in vals if v == "timeout"]
ms = sorted(float(v) for v in vals if v != "timeout")
pct = lambda p: ms[min(len(ms) - 1, int(round(p / 100 * (len(ms) - 1))))]
early = sum(1 for v in ms if v < 0)
print(f"\nNew pod on node 1 reachable by identity from node 0, relative to CNI ADD returning, {len(vals)} pods: "
      f"p50 {pct(50):.0f} ms, p99 {pct(99):.0f} ms, max {ms[-1]:.0f} ms (goal p99 < 500 ms; "
      f"{early} reachable before ADD returned)"
      + (f"; {len(bad)} never reachable" if bad else ""))
PY
