#!/usr/bin/env bash
# Services: Ciliate's eBPF load balancing against kube-proxy, for N = 1, 1,000, 10,000 (and
# 30,000 with --max 30000) ClusterIP Services of 3 backends each, in one run:
#
#   (a) direct      the client pod talks to a backend pod's IP: no Service, no translation
#                   (plain veths and /32 routes through a node namespace, no BPF, no netfilter);
#   (b) iptables    the same plain topology with kube-proxy's iptables-mode nat chains
#                   (KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-*, statistic + DNAT), loaded with
#                   iptables-restore, the measured Service LAST in KUBE-SERVICES;
#   (c) nftables    the same plain topology with kube-proxy's nftables-mode table (one
#                   `ip daddr . meta l4proto . th dport` verdict map -> service chains ->
#                   `numgen random mod 3 vmap` -> endpoint chains doing dnat), loaded with nft -f;
#   (d) ciliate     a node namespace running ciliate-agent, pods wired by ciliate-cni, Services
#                   applied with `ciliate apply -f`; measured through socket LB (client process
#                   in the node's cgroup) and through the per-packet path (client outside it).
#                   "direct, through ciliate" is a client pod to a backend pod IP through
#                   Ciliate: the datapath's own no-translation baseline.
#
# Every Service has 3 backends; the measured one (last) has the 3 server pods, the others
# addresses of their own that are never contacted. kube-proxy's filter-table checks (firewall,
# no-endpoint rejects) are left out of (b) and (c); nothing needs masquerading here, so its
# KUBE-MARK-MASQ hairpin rules exist but never match.
#
# Per N: new TCP connections/s (connect, 64-byte request and response, close) with p50/p99,
# keep-alive requests/s, the time to program N Services from nothing, and the time to change
# one backend of one Service while N exist (iptables: kube-proxy's full-table
# `iptables-restore --noflush`; nftables: kube-proxy's incremental transaction; ciliate:
# `ciliate apply -f` of the changed EndpointSlice; median of 3).
#
#   sudo bench/lb.sh [--secs N] [--runs N] [--max 10000|30000] [--quick] [--iptables legacy|nft]
#                    [--cpus same|split|none] [--no-build]
#
#   --secs N      seconds per traffic measurement (default 5; 2 with --quick)
#   --runs N      rounds of traffic measurements per N, all paths interleaved; each path's
#                 median and min-max over the rounds are shown (default 5; 1 with --quick)
#   --max N       largest Service count: 10000 (default) or 30000
#   --quick       checks that it works: N = 1 and 100 only, 1 s per measurement, 1 round,
#                 the binaries already built (in $CILIATE_BIN_DIR, default target/release)
#   --iptables B  iptables backend for (b): legacy (default when iptables-legacy-restore exists:
#                 the classic rule-by-rule walk kube-proxy's iptables mode has) or nft
#   --cpus P      where clients and servers run: split (default: client on CPU 0, servers on
#                 the last, as every script in bench/), same (both on the last CPU) or none
#                 (with 2 vCPUs, unpinned request/response flips between ~17,000/s and
#                 ~60,000/s with the scheduler's placement, drowning the differences measured)
#   --no-build    use the binaries already in target/release
#
# Needs root. Namespaces are named cb-lb-<pid>-*, the node cb-lb-<pid>; namespaces, processes,
# the node's bpffs pins and its cgroup are removed on exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=
RUNS=
MAX=10000
QUICK=0
IPT_BACKEND=
BUILD=1
CPUS=split
usage() { echo "usage: $0 [--secs N] [--runs N] [--max 10000|30000] [--quick] [--iptables legacy|nft] [--cpus same|split|none] [--no-build]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) [ $# -ge 2 ] || usage; SECS=$2; shift 2 ;;
    --runs) [ $# -ge 2 ] || usage; RUNS=$2; shift 2 ;;
    --max) [ $# -ge 2 ] || usage; MAX=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --iptables) [ $# -ge 2 ] || usage; IPT_BACKEND=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --cpus) [ $# -ge 2 ] || usage; CPUS=$2; shift 2 ;;
    *) usage ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "$0: run as root" >&2; exit 1; }
if [ "$QUICK" = 1 ]; then
  COUNTS="1 100"; SECS=${SECS:-1}; RUNS=${RUNS:-1}; BUILD=0
else
  COUNTS="1 1000 10000"
  [ "$MAX" -ge 30000 ] && COUNTS="$COUNTS 30000"
  SECS=${SECS:-5}; RUNS=${RUNS:-5}
fi

# ---- tools ----
if ! command -v iptables-restore >/dev/null || ! command -v nft >/dev/null; then
  echo "installing iptables and nftables..." >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables nftables >/dev/null
fi
if [ -z "$IPT_BACKEND" ]; then
  IPT_BACKEND=$(command -v iptables-legacy-restore >/dev/null && echo legacy || echo nft)
fi
case "$IPT_BACKEND" in
  legacy) IPT_RESTORE=iptables-legacy-restore ;;
  nft) IPT_RESTORE=$(command -v iptables-nft-restore >/dev/null && echo iptables-nft-restore || echo iptables-restore) ;;
  *) usage ;;
esac
command -v "$IPT_RESTORE" >/dev/null || { echo "$0: $IPT_RESTORE not found" >&2; exit 1; }
IPT_LABEL="$IPT_RESTORE ($($IPT_RESTORE --version 2>&1 | head -1 | sed 's/^[^v]*//'))"
NFT_LABEL="nft ($(nft --version | sed 's/^nftables //'))"
grep -qs ' /sys/fs/bpf bpf ' /proc/mounts || mount -t bpf bpf /sys/fs/bpf
CG_ROOT=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
[ -n "$CG_ROOT" ] || { echo "$0: cgroup v2 is not mounted (socket LB needs it)" >&2; exit 1; }

LAST_CPU=$(($(nproc) - 1))
case "$CPUS" in
  same) SRV_PIN="taskset -c $LAST_CPU"; CLI_PIN="taskset -c $LAST_CPU" ;;
  split) SRV_PIN="taskset -c $LAST_CPU"; CLI_PIN="taskset -c 0" ;;
  none) SRV_PIN=; CLI_PIN= ;;
  *) usage ;;
esac

[ "$BUILD" = 1 ] && cargo build --release --bins -q
BIN=${CILIATE_BIN_DIR:-$PWD/target/release}

P=cb-lb-$$     # namespace prefix
NODE=cb-lb-$$  # ciliate node name: pins in /sys/fs/bpf/ciliate/$NODE, cgroup $CG_ROOT/ciliate/$NODE
CG=$CG_ROOT/ciliate/$NODE
STATE=$(mktemp -d /tmp/cb-lb.XXXXXX)
SOCK=$STATE/agent.sock
RESULTS=$STATE/results
PIDS=()

cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  for ns in $(ip netns list | awk -v p="$P-" 'index($1, p) == 1 {print $1}'); do
    # Anything still running in one of our namespaces was started by this script.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
    ip netns delete "$ns"
  done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  rm -rf "/sys/fs/bpf/ciliate/$NODE"
  rmdir /sys/fs/bpf/ciliate 2>/dev/null
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    [ -d "$CG" ] || break
    rmdir "$CG" 2>/dev/null || sleep 0.2
  done
  rmdir "$CG_ROOT/ciliate" 2>/dev/null
  [ "$rc" != 0 ] && [ -s "$STATE/agent.log" ] && { echo "---- agent log (last 30 lines) ----" >&2; tail -30 "$STATE/agent.log" >&2; }
  rm -rf "$STATE"
  return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
in_ns() { local ns=$1; shift; nsenter --net=/var/run/netns/"$ns" "$@"; }
log() { printf '%s\n' "$*" >&2; }

# ---- plain nodes: veths, /32 routes, permanent gateway neighbour (as bench/pod2pod.sh) ----
# plain_node TAG SUBNET PODS: pod 0 is the client (10.250.SUBNET.2), pods 1..PODS-1 backends.
plain_node() {
  local tag=$1 sub=$2 pods=$3 node=$P-$1-node i pod hmac
  ip netns add "$node"
  in_ns "$node" sysctl -qw net.ipv4.ip_forward=1
  ip -n "$node" link set lo up
  ip -n "$node" addr add 192.0.2.1/32 dev lo
  for i in $(seq 0 $((pods - 1))); do
    pod=$P-$tag-$i
    ip netns add "$pod"
    ip -n "$node" link add "h$i" type veth peer name eth0 netns "$pod"
    ip -n "$node" link set "h$i" up
    hmac=$(ip -n "$node" -o link show "h$i" | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
    ip -n "$pod" link set lo up
    ip -n "$pod" link set eth0 up
    ip -n "$pod" addr add "10.250.$sub.$((i + 2))/32" dev eth0
    ip -n "$pod" route add 169.254.1.1 dev eth0 scope link
    ip -n "$pod" route add default via 169.254.1.1 dev eth0
    ip -n "$pod" neigh add 169.254.1.1 lladdr "$hmac" dev eth0 nud permanent
    ip -n "$node" route add "10.250.$sub.$((i + 2))/32" dev "h$i" scope link
  done
}

# Backends serve on 5001; Services map port 80 to it. Servers stay up for the whole run.
start_server() { # ns ip
  nsenter --net=/var/run/netns/"$1" $SRV_PIN "$BIN/ciliate-bench" server --port 5001 >/dev/null 2>&1 &
  PIDS+=($!)
  disown $! # no job-control chatter when cleanup kills it
  for _ in $(seq 50); do
    in_ns "$1" bash -c "exec 3<>/dev/tcp/$2/5001" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "server in $1 did not start" >&2; return 1
}
# Clients open one connection per transaction, ~10,000/s: at 60 s of TIME_WAIT each, they would
# run out of ports within seconds. Give them the whole range and let them reuse TIME_WAIT ports
# (every client alike).
client_sysctls() {
  in_ns "$1" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
}

log "setting up namespaces ($P-*)..."
plain_node direct 1 2  # client + 1 backend
plain_node ipt 2 4     # client + 3 backends
plain_node nft 3 4
DIRECT_DST=10.250.1.3
IPT_BACKENDS=10.250.2.3,10.250.2.4,10.250.2.5
NFT_BACKENDS=10.250.3.3,10.250.3.4,10.250.3.5
for t in direct ipt nft; do client_sysctls "$P-$t-0"; done
start_server "$P-direct-1" 10.250.1.3
for i in 1 2 3; do
  start_server "$P-ipt-$i" "10.250.2.$((i + 2))"
  start_server "$P-nft-$i" "10.250.3.$((i + 2))"
done

# ---- ciliate: the agent and the CNI plugin ----
ip netns add "$P-cil-node"
ip -n "$P-cil-node" link set lo up
ip -n "$P-cil-node" addr add 192.0.2.1/32 dev lo
# nsenter execs the agent: $! is the agent itself.
nsenter --net=/var/run/netns/"$P-cil-node" "$BIN/ciliate-agent" --node-name "$NODE" --pod-cidr 10.251.0.0/24 \
  --state-dir "$STATE" --socket "$SOCK" >"$STATE/agent.log" 2>&1 &
PIDS+=($!)
AGENT_PID=$!
disown "$AGENT_PID"
for _ in $(seq 100); do "$BIN/ciliate" --socket "$SOCK" status >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN/ciliate" --socket "$SOCK" status >/dev/null || { echo "agent did not come up" >&2; exit 1; }
cil() { "$BIN/ciliate" --socket "$SOCK" "$@"; }
cni_add() { # pod-name -> prints its IP
  ip netns add "$P-cil-$1"
  CNI_COMMAND=ADD CNI_CONTAINERID=$P-$1 CNI_NETNS=/var/run/netns/$P-cil-$1 CNI_IFNAME=eth0 \
  CNI_ARGS="K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$1;CILIATE_LABELS=app=$1" CNI_PATH=/opt/cni/bin \
    in_ns "$P-cil-node" "$BIN/ciliate-cni" <<<"{\"cniVersion\":\"1.0.0\",\"name\":\"ciliate\",\"type\":\"ciliate-cni\",\"agentSocket\":\"$SOCK\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])'
}
# One client pod per path, so no path inherits another's TIME_WAIT sockets.
for c in cdirect csock cpkt; do cni_add "$c" >/dev/null; client_sysctls "$P-cil-$c"; done
CIL_BACKENDS=
for i in 1 2 3; do
  ip=$(cni_add "web$i")
  start_server "$P-cil-web$i" "$ip"
  CIL_BACKENDS=${CIL_BACKENDS:+$CIL_BACKENDS,}$ip
done
CIL_DIRECT_DST=${CIL_BACKENDS%%,*}

# ---- rule and manifest generators (kube-proxy's own structure and naming) ----
gen() { python3 bench/kube_proxy_gen.py "$@"; }

# ---- measurements ----
# Times a command run inside a namespace (or in the root namespace with "-"), in ms, measured
# inside it so nsenter itself is not counted. Fails loudly if the command fails.
time_ms() { # ns command...
  local ns=$1; shift
  local script='t0=$EPOCHREALTIME; "$@" >/dev/null || exit 1; t1=$EPOCHREALTIME; echo $(( (${t1/./} - ${t0/./}) / 1000 )).$(( (${t1/./} - ${t0/./}) % 1000 / 100 ))'
  if [ "$ns" = - ]; then bash -c "$script" _ "$@"; else in_ns "$ns" bash -c "$script" _ "$@"; fi
}
median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
record() { echo "$*" >>"$RESULTS"; }  # N path metric value...
svc_count() { cil service list -o json | grep -c '"namespace":' || true; }
# The agent's own time for the last apply, from its log ("manifests applied ... elapsed_ms=N").
agent_apply_ms() { sed 's/\x1b\[[0-9;]*m//g' "$STATE/agent.log" | sed -n 's/.*manifests applied.*elapsed_ms=\([0-9]*\).*/\1/p' | tail -1; }
agent_rss_mb() { awk '/VmRSS/{printf "%.1f", $2 / 1024}' "/proc/$AGENT_PID/status"; }

bench() { # N path mode client-ns dst port in-cgroup
  local out
  if [ "$7" = 1 ]; then
    out=$(sh -c "echo \$\$ > $CG/cgroup.procs && exec nsenter --net=/var/run/netns/$4 $CLI_PIN $BIN/ciliate-bench $3 --dst $5 --port $6 --secs $SECS")
  else
    out=$(in_ns "$4" $CLI_PIN "$BIN/ciliate-bench" "$3" --dst "$5" --port "$6" --secs "$SECS")
  fi
  out=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["per_second"], d["p50_us"], d["p99_us"], d["errors"], d["transactions"])' "$out")
  record "$1" "$2" "$3" "$out"
}

PREV_YAML=
for N in $COUNTS; do
  log "N=$N: generating rules and manifests..."
  for k in ipt-full ipt-change ipt-revert; do gen "$k" "$N" "$IPT_BACKENDS" "$STATE/$k"; done
  for k in nft-full nft-change nft-revert; do gen "$k" "$N" "$NFT_BACKENDS" "$STATE/$k"; done
  for k in yaml-full yaml-change yaml-revert; do gen "$k" "$N" "$CIL_BACKENDS" "$STATE/$k-$N.yaml"; done
  VIP=$(python3 -c "i=$N-1; print(f'10.96.{i // 250}.{i % 250 + 1}')")

  # Program N Services from nothing.
  log "N=$N: programming iptables, nftables, ciliate..."
  printf '*nat\nCOMMIT\n' | in_ns "$P-ipt-node" "$IPT_RESTORE"
  [ "$IPT_BACKEND" = nft ] && in_ns "$P-ipt-node" nft flush ruleset
  ms=$(time_ms "$P-ipt-node" "$IPT_RESTORE" "$STATE/ipt-full"); record "$N" ipt program "$ms"
  in_ns "$P-nft-node" nft flush ruleset
  ms=$(time_ms "$P-nft-node" nft -f "$STATE/nft-full"); record "$N" nft program "$ms"
  if [ -n "$PREV_YAML" ]; then
    cil delete -f "$PREV_YAML" >/dev/null
    [ "$(svc_count)" = 0 ] || { echo "services left after delete" >&2; exit 1; }
  fi
  t0=$EPOCHREALTIME
  apply_ms=$(time_ms - "$BIN/ciliate" --socket "$SOCK" apply -f "$STATE/yaml-full-$N.yaml")
  until [ "$(svc_count)" = "$N" ]; do sleep 0.01; done
  t1=$EPOCHREALTIME
  record "$N" cil program "$(( (${t1/./} - ${t0/./}) / 1000 )).$(( (${t1/./} - ${t0/./}) % 1000 / 100 ))" "$apply_ms" "$(agent_apply_ms)"
  record "$N" cil rss "$(agent_rss_mb)"
  PREV_YAML=$STATE/yaml-full-$N.yaml

  # Traffic: every path's connection rate, then every path's keep-alive rate.
  for run in $(seq "$RUNS"); do
  for mode in crr rr; do
    log "N=$N: $mode, round $run of $RUNS..."
    bench "$N" direct "$mode" "$P-direct-0" "$DIRECT_DST" 5001 0
    bench "$N" ipt "$mode" "$P-ipt-0" "$VIP" 80 0
    bench "$N" nft "$mode" "$P-nft-0" "$VIP" 80 0
    bench "$N" cildirect "$mode" "$P-cil-cdirect" "$CIL_DIRECT_DST" 5001 0
    bench "$N" cilsock "$mode" "$P-cil-csock" "$VIP" 80 1
    bench "$N" cilpkt "$mode" "$P-cil-cpkt" "$VIP" 80 0
  done
  done

  # Change one backend of one Service while N exist: there, back, there again; the median.
  log "N=$N: changing one backend..."
  a=$(time_ms "$P-ipt-node" "$IPT_RESTORE" --noflush "$STATE/ipt-change")
  b=$(time_ms "$P-ipt-node" "$IPT_RESTORE" --noflush "$STATE/ipt-revert")
  c=$(time_ms "$P-ipt-node" "$IPT_RESTORE" --noflush "$STATE/ipt-change")
  record "$N" ipt change "$(median3 "$a" "$b" "$c")"
  a=$(time_ms "$P-nft-node" nft -f "$STATE/nft-change")
  b=$(time_ms "$P-nft-node" nft -f "$STATE/nft-revert")
  c=$(time_ms "$P-nft-node" nft -f "$STATE/nft-change")
  record "$N" nft change "$(median3 "$a" "$b" "$c")"
  a=$(time_ms - "$BIN/ciliate" --socket "$SOCK" apply -f "$STATE/yaml-change-$N.yaml"); aa=$(agent_apply_ms)
  b=$(time_ms - "$BIN/ciliate" --socket "$SOCK" apply -f "$STATE/yaml-revert-$N.yaml"); ab=$(agent_apply_ms)
  c=$(time_ms - "$BIN/ciliate" --socket "$SOCK" apply -f "$STATE/yaml-change-$N.yaml"); ac=$(agent_apply_ms)
  record "$N" cil change "$(median3 "$a" "$b" "$c")" "$(median3 "$aa" "$ab" "$ac")"
done

# ---- the tables ----
python3 - "$RESULTS" "$SECS" "$RUNS" "$IPT_LABEL" "$NFT_LABEL" "$CPUS" "$(nproc)" "$(uname -r)" <<'EOF'
import collections, sys
path, secs, runs, ipt_label, nft_label, pinning, cpus, kernel = sys.argv[1:]
import statistics
R = collections.defaultdict(dict)
T = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(path):
    f = line.split()
    key, v = (f[1], f[2]), f[3:]
    if f[2] in ("crr", "rr"):
        T[int(f[0])][key].append(v)
    else:
        R[int(f[0])][key] = v
# Traffic: each path's median rate over the rounds, the latency of its median round, the
# min-max of the rates, and the errors summed over rounds.
SPREAD = collections.defaultdict(dict)
for n, paths in T.items():
    for key, rounds in paths.items():
        rates = [float(r[0]) for r in rounds]
        mid = sorted(rounds, key=lambda r: float(r[0]))[(len(rounds) - 1) // 2]
        errs = str(sum(int(r[3]) for r in rounds))
        R[n][key] = [str(statistics.median(rates))] + mid[1:3] + [errs] + mid[4:]
        SPREAD[n][key] = f"{min(rates):,.0f}-{max(rates):,.0f}"
ns = sorted(R)

def val(n, key, metric, i=0):
    v = R[n].get((key, metric))
    return float(v[i]) if v and len(v) > i and v[i] != "" else None
def rat(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"
def ms(v, width=10):
    return f"{v:>{width},.1f}" if v is not None else f"{'-':>{width}}"

PATHS = [("direct", "(a) direct, plain veth"), ("ipt", "(b) kube-proxy iptables"), ("nft", "(c) kube-proxy nftables"),
         ("cildirect", "    direct, through ciliate"), ("cilsock", "(d) ciliate socket LB"), ("cilpkt", "(d) ciliate per-packet")]
pin = {"same": "client and server pinned to one CPU", "split": "client and server pinned to different CPUs", "none": "no CPU pinning"}[pinning]
print(f"\nServices benchmark: {cpus} CPUs, kernel {kernel}; {secs} s per measurement, median of {runs} interleaved round(s) [min-max]; {pin};")
print(f"64-byte request and response; 3 backends per Service. (b) loaded with {ipt_label}; (c) with {nft_label}.")
print("x(a) = ratio of medians to (a) the direct path; x(b) = ratio of medians to (b) iptables.")
for n in ns:
    print(f"\nN = {n:,} Services (the measured one last)")
    print(f"{'path':<29}{'conn/s':>8}{'[min-max]':>14}{'x(a)':>6}{'x(b)':>6}{'p50/p99 us':>12}{'req/s':>9}{'[min-max]':>14}{'x(a)':>6}{'x(b)':>6}{'p50/p99 us':>12}")
    for key, label in PATHS:
        c, q = R[n].get((key, "crr")), R[n].get((key, "rr"))
        if not c or not q:
            continue
        err = "" if c[3] == "0" and q[3] == "0" else f"  ERRORS: {c[3]} conn, {q[3]} req"
        print(f"{label:<29}{float(c[0]):>8,.0f}{SPREAD[n][(key, 'crr')]:>14}{rat(float(c[0]), val(n, 'direct', 'crr')):>6}{rat(float(c[0]), val(n, 'ipt', 'crr')):>6}"
              f"{c[1] + '/' + c[2]:>12}{float(q[0]):>9,.0f}{SPREAD[n][(key, 'rr')]:>14}{rat(float(q[0]), val(n, 'direct', 'rr')):>6}"
              f"{rat(float(q[0]), val(n, 'ipt', 'rr')):>6}{q[1] + '/' + q[2]:>12}{err}")

print("\nConnections/s relative to the direct path, by N (does it fall as Services grow?)")
print(f"{'':<44}" + "".join(f"{f'N={n:,}':>10}" for n in ns))
for key, label, base in [("ipt", "(b) kube-proxy iptables / (a)", "direct"), ("nft", "(c) kube-proxy nftables / (a)", "direct"),
                         ("cilsock", "(d) ciliate socket LB / (a)", "direct"), ("cilpkt", "(d) ciliate per-packet / (a)", "direct"),
                         ("cilsock", "(d) ciliate socket LB / ciliate direct", "cildirect"),
                         ("cilpkt", "(d) ciliate per-packet / ciliate direct", "cildirect")]:
    print(f"{label:<44}" + "".join(f"{rat(val(n, key, 'crr'), val(n, base, 'crr')):>10}" for n in ns))

print("\nControl plane: wall time in ms (x(b) = ratio to iptables)")
print(f"{'':<44}" + "".join(f"{f'N={n:,}':>10}{'x(b)':>7}" for n in ns))
rows = [("program", "ipt", 0, "program N Services: iptables"), ("program", "nft", 0, "program N Services: nftables"),
        ("program", "cil", 0, "program N Services: ciliate"), ("program", "cil", 2, "  of which the agent (its log)"),
        ("change", "ipt", 0, "change 1 backend: iptables"), ("change", "nft", 0, "change 1 backend: nftables"),
        ("change", "cil", 0, "change 1 backend: ciliate"), ("change", "cil", 1, "  of which the agent (its log)")]
for metric, key, i, label in rows:
    print(f"{label:<44}" + "".join(f"{ms(val(n, key, metric, i))}{rat(val(n, key, metric, i), val(n, 'ipt', metric)):>7}" for n in ns))
print(f"{'ciliate-agent RSS, MB':<44}" + "".join(f"{ms(val(n, 'cil', 'rss'))}{'':>7}" for n in ns))
print("""
program: iptables = iptables-restore of the whole nat table; nftables = nft -f of the whole table (kube-proxy's
  `add` commands); ciliate = `ciliate apply -f` of N Services + N EndpointSlices until `ciliate service list` shows N.
change 1 backend (median of 3): iptables = kube-proxy's full sync, `iptables-restore --noflush` of every KUBE-* chain;
  nftables = one transaction: new endpoint chain, service chain rewritten, old endpoint chain deleted;
  ciliate = `ciliate apply -f` of the one changed EndpointSlice.""")
EOF
