#!/usr/bin/env bash
# The Services control plane at scale, two agent builds side by side ("old" and "new"): for each
# N (default 10,000 and 50,000 Services, each with one EndpointSlice of 2 endpoints: 100,000
# endpoints at 50,000), rounds alternate old, new, old, new...; every round starts a fresh agent
# of that build (real BPF datapath, its own namespace, state dir, pins, cgroup and socket,
# pinned to the last CPU; the CLI and the probe on CPU 0) and measures:
#
#   rss0, cpu0     agent RSS (VmRSS) at start; its CPU (utime+stime) over --idle-secs idle
#   program        `ciliate apply -f` of one file with the N Services and N EndpointSlices,
#                  wall time until it returns (the agent answers once the maps are written;
#                  checked: the last Service's backend must then be in cil_lb4_svc/cil_lb4_be),
#                  and the agent's own time from its log line (`manifests applied ... elapsed_ms`,
#                  or `elapsed_us` from session 4 on; from session 8 on it includes decoding
#                  the documents; from session 12 on, with the CLI streaming them, it starts
#                  at the body's last byte, the documents decoded while they arrived), and the agent's CPU time (utime+stime) for it: on a loaded
#                  machine the figure to compare
#   rssN, cpuN     RSS after them, bytes per Service; idle CPU over --idle-secs at N
#   disk           the agent's state directory at N (du)
#   change (API)   --changes times: `ciliate apply -f` of one EndpointSlice whose second
#                  endpoint moved (each time another Service); wall and agent time, median
#                  and p90 per round; each change is then checked in the pinned maps
#   change (dir)   --changes times: a Service + EndpointSlice file in the agent's
#                  --manifest-dir replaced (atomic rename, done by `ciliate-bench map-wait`)
#                  → the new backend present in the pinned maps (polled tightly), median, p90
#   resync         the agent stopped (SIGTERM) and started again on the same state and pins:
#                  time until `status` answers healthy, and until it lists the N Services;
#                  before that, one restart under `perf stat` counts the map writes
#                  (bpf() BPF_MAP_UPDATE_ELEM / DELETE_ELEM, batch forms too) it makes until
#                  then: an agent that finds its maps right writes none; and the agent's CPU
#                  time from exec until it lists them
#   delete         `ciliate delete -f` of the N Services and slices: wall time, agent CPU
#                  time, RSS after
#
# and, once per round, kube-proxy's rules for the same N Services (2 endpoints each) in a
# namespace of its own (bench/kube_proxy_gen.py, as bench/lb.sh): program N = iptables-restore
# (legacy when installed) of the whole nat table, and nft -f of kube-proxy's nftables table;
# change 1 backend = kube-proxy's full iptables sync (`iptables-restore --noflush` of every
# KUBE-* chain) and its nftables transaction; median of 3 changes per round.
#
# Printed per N: each figure's median over the rounds with [min-max] per build, and the ratio
# new/old of the medians.
#
#   sudo bench/services-scale.sh [--quick] [--services N,N..] [--old-bin DIR] [--new-bin DIR]
#                                [--rounds R] [--changes K] [--idle-secs S] [--no-build]
#
#   --services     Service counts (default 10000,50000)
#   --old-bin DIR  the old build's binaries (ciliate-agent, ciliate); default: the new ones
#                  (then the run compares a build with itself: what the script's noise is)
#   --new-bin DIR  the new build's binaries; default $CILIATE_BIN_DIR, else target/release
#                  of this repository (built first unless --no-build)
#   --rounds R     rounds per build, interleaved (default 3)
#   --changes K    backend changes per round, per kind (default 20)
#   --idle-secs S  idle CPU sampling time (default 10)
#   --no-kube-proxy  leave out the kube-proxy rows (nft -f of 50,000 Services takes minutes)
#   --quick        checks that it works and cleans up: N = 200, 1 round, 3 changes, 1 s idle,
#                  nothing built
#
# The probe (`ciliate-bench map-wait`) comes from the new build's directory, or from
# target/release when that one has no ciliate-bench with map-wait. Needs root, bpffs and
# cgroup v2. Everything a run makes is named cb<pid>*, recorded and removed on exit (bench/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

COUNTS=10000,50000
OLD_BIN=
NEW_BIN=
ROUNDS=3
CHANGES=20
IDLE=10
BUILD=1
QUICK=0
KUBE_PROXY=1
usage() {
  echo "usage: $0 [--quick] [--services N,N..] [--old-bin DIR] [--new-bin DIR] [--rounds R] [--changes K] [--idle-secs S] [--no-kube-proxy] [--no-build]" >&2
  exit 2
}
log() { printf '%s\n' "$*" >&2; }
posint() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "$0: $1 $2: expected a positive integer" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --services) [ $# -ge 2 ] || usage; COUNTS=$2; shift 2 ;;
    --old-bin) [ $# -ge 2 ] || usage; OLD_BIN=$2; shift 2 ;;
    --new-bin) [ $# -ge 2 ] || usage; NEW_BIN=$2; shift 2 ;;
    --rounds) [ $# -ge 2 ] || usage; posint "$1" "$2"; ROUNDS=$2; shift 2 ;;
    --changes) [ $# -ge 2 ] || usage; posint "$1" "$2"; CHANGES=$2; shift 2 ;;
    --idle-secs) [ $# -ge 2 ] || usage; posint "$1" "$2"; IDLE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --no-kube-proxy) KUBE_PROXY=0; shift ;;
    --no-build) BUILD=0; shift ;;
    *) usage ;;
  esac
done
if [ "$QUICK" = 1 ]; then COUNTS=200; ROUNDS=1; CHANGES=3; IDLE=1; BUILD=0; fi
IFS=, read -r -a NS <<<"$COUNTS"
for n in "${NS[@]}"; do
  posint --services "$n"
  # ClusterIPs are 10.96.0.0 + 256 * (i / 250) + i % 250 + 1: below the probe Service's
  # 10.111.255.1 up to a million.
  [ "$n" -le 1000000 ] || { echo "$0: --services $n: at most 1000000" >&2; exit 2; }
  [ "$n" -ge "$CHANGES" ] || { echo "$0: --services $n: fewer Services than --changes $CHANGES" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "$0: run as root" >&2; exit 1; }
grep -qs ' /sys/fs/bpf bpf ' /proc/mounts || { echo "$0: bpffs is not mounted on /sys/fs/bpf" >&2; exit 1; }

if [ -z "$NEW_BIN" ]; then
  NEW_BIN=${CILIATE_BIN_DIR:-$PWD/target/release}
  [ "$BUILD" = 1 ] && [ -z "${CILIATE_BIN_DIR:-}" ] && cargo build --release --bins -q
fi
OLD_BIN=${OLD_BIN:-$NEW_BIN}
for d in "$OLD_BIN" "$NEW_BIN"; do
  for b in ciliate-agent ciliate; do
    [ -x "$d/$b" ] || { echo "$0: $d/$b: not found (build it, or pass --old-bin/--new-bin)" >&2; exit 1; }
  done
done
PROBE=$NEW_BIN/ciliate-bench
"$PROBE" map-wait --help >/dev/null 2>&1 || PROBE=$PWD/target/release/ciliate-bench
"$PROBE" map-wait --help >/dev/null 2>&1 ||
  { echo "$0: no ciliate-bench with map-wait in $NEW_BIN or target/release: cargo build --release -p ciliate-bench" >&2; exit 1; }
if [ "$KUBE_PROXY" = 1 ]; then
  IPT_RESTORE=$(command -v iptables-legacy-restore || command -v iptables-restore || true)
  if [ -z "$IPT_RESTORE" ] || ! command -v nft >/dev/null; then
    log "no iptables-restore or nft here: the kube-proxy rows are left out (apt-get install iptables nftables)"
    KUBE_PROXY=0
  fi
fi
# Map writes are counted on the bpf() syscall's tracepoint (perf stat; no ptrace, which slows
# the agent and once lost it): BPF_MAP_UPDATE_ELEM, _DELETE_ELEM, _UPDATE_BATCH, _DELETE_BATCH.
MAP_WRITES='cmd == 2 || cmd == 3 || cmd == 26 || cmd == 27'
HAVE_PERF=0
perf stat -e syscalls:sys_enter_bpf --filter "$MAP_WRITES" -x, -o /dev/null -- true 2>/dev/null && HAVE_PERF=1

WORK=$(mktemp -d /tmp/"$RUN".XXXXXX)
track_path "$WORK"
RESULTS=$WORK/results
: >"$RESULTS"
# On failure, the end of the agent's log first (cleanup deletes it).
on_exit() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -s "${ADIR:-/nonexistent}/agent.log" ]; then
    log "---- $ADIR/agent.log (last 20 lines) ----"
    tail -20 "$ADIR/agent.log" >&2
    [ -n "${AGENT_PID:-}" ] && log "agent pid $AGENT_PID: $(awk '{print "state " $3}' /proc/"$AGENT_PID"/stat 2>/dev/null || echo gone)"
  fi
  cb_cleanup
}
trap on_exit EXIT
trap "exit 130" INT TERM # so that a signal still cleans up

AGENT_CPU=$SERVER_CPU
cli() { taskset -c "$CLIENT_CPU" "$BIN/ciliate" --socket "$ADIR/agent.sock" "$@"; }
now_us() { echo "${EPOCHREALTIME/./}"; }
ms_since() { echo "$(( ($(now_us) - $1) / 1000 )).$(( ($(now_us) - $1) % 1000 / 100 ))"; }
# metric build value; a value that is not a number (a measurement that failed inside $(...),
# where set -e does not reach) stops the run. Negative numbers are measurements too: an
# agent that gives a request's burst back to the kernel can end below its start at small N.
record() {
  [[ "$3" =~ ^-?[0-9]+(\.[0-9]+)?$ ]] || { echo "$2: $1 at N=$N: no measurement (got '$3')" >&2; exit 1; }
  echo "$1@$N $2 $3" >>"$RESULTS"
}

# ---- manifests ----
# full-N.yaml: N Services (1 port) and their EndpointSlices (2 endpoints); chg-N-K.yaml: one
# slice whose second endpoint moved, listed with its ClusterIP and new endpoint in chg-N.list;
# dir-K.yaml: the probe Service (10.111.255.1) and its slice with the K-th second endpoint.
cat >"$WORK/gen.py" <<'EOF'
import sys

n, changes, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def ip(base, i):
    return ".".join(str((base + i) >> s & 255) for s in (24, 16, 8, 0))

def vip(i):
    return ip(0x0A600000, 256 * (i // 250) + i % 250 + 1)  # 10.96.0.0/12

def endpoints(i):
    return [ip(0x0A800000, 2 * i), ip(0x0A800000, 2 * i + 1)]  # 10.128.0.0/9

def service(name, addr):
    return (f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: bench\nspec:\n"
            f"  clusterIP: {addr}\n  ports:\n  - name: http\n    port: 80\n    targetPort: 5001\n    protocol: TCP\n")

def slice_(name, eps):
    y = (f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-a\n  namespace: bench\n"
         f"  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: http\n  port: 5001\n"
         f"  protocol: TCP\nendpoints:\n")
    for e in eps:
        y += f"- addresses: [\"{e}\"]\n  conditions:\n    ready: true\n"
    return y

with open(f"{out}/full-{n}.yaml", "w") as f:
    f.write("---\n".join(service(f"svc-{i}", vip(i)) + "---\n" + slice_(f"svc-{i}", endpoints(i)) for i in range(n)))
with open(f"{out}/chg-{n}.list", "w") as lst:
    for k in range(changes):
        i = k * (n // changes) + (n // changes) // 2  # spread over the Services
        moved = ip(0x0ABE0000, k + 1)  # 10.190.0.0/16
        with open(f"{out}/chg-{n}-{k}.yaml", "w") as f:
            f.write(slice_(f"svc-{i}", [endpoints(i)[0], moved]))
        lst.write(f"{out}/chg-{n}-{k}.yaml {vip(i)} {moved}\n")
    last = n - 1
    lst.write(f"last {vip(last)} {endpoints(last)[1]}\n")
for k in range(changes + 1):
    with open(f"{out}/dir-{k}.yaml", "w") as f:
        f.write(service("probe", "10.111.255.1") + "---\n" + slice_("probe", ["10.191.0.1", ip(0x0ABF0100, k + 1)]))
with open(f"{out}/dir.list", "w") as lst:
    for k in range(changes + 1):
        lst.write(f"{out}/dir-{k}.yaml 10.111.255.1 {ip(0x0ABF0100, k + 1)}\n")
EOF

# ---- one agent ----
# start_agent_of BUILD-DIR ROUND-TAG: a fresh agent with its own namespace, node name (pins,
# cgroup) and directory; sets BIN, ADIR, NODE, AGENT_PID.
start_fresh() {
  BIN=$1
  NODE=$RUN$2
  ADIR=$WORK/$2
  mkdir -p "$ADIR/state" "$ADIR/manifests"
  cp "$WORK/dir-0.yaml" "$ADIR/manifests/probe.yaml"
  mkns "$NODE"
  ip -n "$NODE" link set lo up
  ip -n "$NODE" addr add 192.0.2.1/32 dev lo
  track_path "/sys/fs/bpf/ciliate/$NODE"
  track_path "/sys/fs/cgroup/unified/ciliate/$NODE"
  track_path "/sys/fs/cgroup/ciliate/$NODE"
  launch
  ms=$(wait_ready)
}
# Starts the agent of $NODE (again), optionally under a wrapper ($@, e.g. perf stat); AGENT_PID is
# the agent itself (nsenter and taskset exec it; a wrapper's child is looked up).
launch() {
  nsenter --net=/var/run/netns/"$NODE" taskset -c "$AGENT_CPU" "$@" "$BIN/ciliate-agent" --node-name "$NODE" \
    --datapath bpf --pod-cidr 10.252.0.0/24 --state-dir "$ADIR/state" --socket "$ADIR/agent.sock" \
    --manifest-dir "$ADIR/manifests" >>"$ADIR/agent.log" 2>&1 &
  AGENT_PID=$!
  track "$AGENT_PID"
  disown "$AGENT_PID"
  if [ $# -gt 0 ]; then
    local child=
    for _ in $(seq 200); do
      child=$(cat /proc/"$AGENT_PID"/task/*/children 2>/dev/null | awk '{print $1; exit}')
      [ -n "$child" ] && break
      sleep 0.01
    done
    [ -n "$child" ] || { echo "no agent under $*" >&2; exit 1; }
    WRAPPER_PID=$AGENT_PID
    AGENT_PID=$child
    track "$AGENT_PID"
  fi
}
# Polls `status` until it answers healthy; prints the ms waited since $1 (default: now).
wait_ready() {
  local t0=${1:-$(now_us)}
  for _ in $(seq 6000); do
    [ "$(cli -o 'jsonpath={.health}' status 2>/dev/null)" = ok ] && { ms_since "$t0"; return 0; }
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "the agent exited: $(tail -5 "$ADIR/agent.log")" >&2; exit 1; }
    sleep 0.005
  done
  echo "agent $NODE not healthy after 60 s" >&2; exit 1
}
# Polls `status` until it counts $1 Services; prints the ms since $2.
wait_services() {
  for _ in $(seq 12000); do
    [ "$(cli -o 'jsonpath={.services}' status 2>/dev/null)" = "$1" ] && { ms_since "$2"; return 0; }
    sleep 0.005
  done
  echo "agent $NODE does not list $1 Services after 120 s" >&2; exit 1
}
# SIGTERM, and up to 60 s to exit (an agent busy at 50,000 Services can take seconds), then
# SIGKILL; returns once the process is gone (not even a zombie: a disowned child is reaped by
# the shell in the background). Prints the ms the agent took to exit.
stop_agent() {
  local t0 st
  t0=$(now_us)
  kill "$AGENT_PID" 2>/dev/null || true
  for _ in $(seq 1200); do gone "$AGENT_PID" && break; sleep 0.05; done
  gone "$AGENT_PID" || { log "agent $NODE did not exit within 60 s of SIGTERM: SIGKILL"; kill -9 "$AGENT_PID" 2>/dev/null || true; }
  for _ in $(seq 200); do gone "$AGENT_PID" && break; sleep 0.05; done
  gone "$AGENT_PID" || { echo "agent $NODE ($AGENT_PID) does not go away" >&2; exit 1; }
  if [ -n "${WRAPPER_PID:-}" ]; then
    for _ in $(seq 200); do gone "$WRAPPER_PID" && break; sleep 0.05; done
    WRAPPER_PID=
  fi
  ms_since "$t0"
}
# Gone: no such process, a zombie, or its stat unreadable (it vanished between the two looks;
# reading "" there once made a process that had exited look alive).
gone() {
  local st
  st=$(awk '{print $3}' /proc/"$1"/stat 2>/dev/null) || return 0
  [ -z "$st" ] || [ "$st" = Z ]
}
# Everything of this agent goes now (cleanup would at exit): one round's pins and state at a
# time.
remove_agent() {
  stop_agent >/dev/null
  ip netns delete "$NODE" 2>/dev/null || true
  rm -rf "/sys/fs/bpf/ciliate/$NODE" "$ADIR"
  rmdir "/sys/fs/cgroup/unified/ciliate/$NODE" "/sys/fs/cgroup/ciliate/$NODE" 2>/dev/null || true
}
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$AGENT_PID/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$AGENT_PID/stat"; }
# The agent's CPU time (utime + stime, all threads) since ticks $1, in ms: what load on other
# CPUs moves least (10 ms ticks).
cpu_ms_since() { python3 -c "print(round(($(cpu_ticks) - $1) * 1000 / $(getconf CLK_TCK)))"; }
# The agent's CPU over IDLE seconds, in % of one core.
idle_cpu() {
  local a b
  a=$(cpu_ticks); sleep "$IDLE"; b=$(cpu_ticks)
  python3 -c "print(round(($b - $a) / $(getconf CLK_TCK) / $IDLE * 100, 2))"
}
# The agent's own time for its last apply/delete, in ms, if it logs one after line $1
# (`manifests applied|deleted ... elapsed_ms=N`, or elapsed_us=N as newer agents log it).
agent_ms() {
  sed 's/\x1b\[[0-9;]*m//g' "$ADIR/agent.log" | tail -n +"$(($1 + 1))" | grep -E 'manifests (applied|deleted)' |
    sed -n 's/.*elapsed_ms=\([0-9]*\).*/\1/p; s/.*elapsed_us=\([0-9]*\).*/\1 us/p' | tail -1 |
    awk 'NF == 2 {printf "%.3f\n", $1 / 1000; next} {print}' || true
}
log_lines() { wc -l <"$ADIR/agent.log"; }
# map-wait on CPU 0 against this agent's pins; prints the µs waited. Fails if it times out.
map_wait() { taskset -c "$CLIENT_CPU" "$PROBE" map-wait --pin-dir "/sys/fs/bpf/ciliate/$NODE" "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["waited_us"])'; }
# Median and p90 (nearest rank) of the numbers on stdin.
pct() { python3 -c 'import math,statistics,sys; v=sorted(float(x) for x in sys.stdin.read().split()); print(statistics.median(v), v[max(0, math.ceil(0.9 * len(v)) - 1)])'; }
mb() { python3 -c "print(round($1 / 1024, 1))"; }

# ---- one round of one build ----
measure() { # build-name bin-dir round
  local b=$1 r=$3 t0 l ms am
  log "N=$N round $r/$ROUNDS: $b ($2)"
  start_fresh "$2" "$b$r"
  sleep 1 # past start-up work
  local rss0; rss0=$(rss_kb)
  record rss0 "$b" "$(mb "$rss0")"
  record cpu0 "$b" "$(idle_cpu)"

  l=$(log_lines); t0=$(now_us); c0=$(cpu_ticks)
  cli apply -f "$WORK/full-$N.yaml" >/dev/null
  record program "$b" "$(ms_since "$t0")"
  record program_cpu "$b" "$(cpu_ms_since "$c0")"
  am=$(agent_ms "$l"); [ -n "$am" ] && record program_agent "$b" "$am"
  read -r _ vip be < <(grep '^last ' "$WORK/chg-$N.list")
  # The answer came after the maps were written: the last Service's backend must be there.
  us=$(map_wait --vip "$vip" --backend "$be:5001" --timeout-secs 5)
  [ "$(cli -o 'jsonpath={.services}' status)" = $((N + 1)) ] || { echo "$b: the agent does not count $N + 1 Services" >&2; exit 1; }
  local rssn; rssn=$(rss_kb)
  record rssN "$b" "$(mb "$rssn")"
  record per_svc "$b" "$(python3 -c "print(round(($rssn - $rss0) * 1024 / $N))")"
  record cpuN "$b" "$(idle_cpu)"
  record disk "$b" "$(python3 -c "print(round($(du -sb "$ADIR/state" | cut -f1) / 1048576, 2))")"

  # One backend of one Service moved, through the API: wall and agent time, then the maps.
  local wall=() agent=() dir=() f
  while read -r f vip be; do
    [ "$f" = last ] && continue
    l=$(log_lines); t0=$(now_us)
    cli apply -f "$f" >/dev/null
    wall+=("$(ms_since "$t0")")
    am=$(agent_ms "$l"); [ -n "$am" ] && agent+=("$am")
    us=$(map_wait --vip "$vip" --backend "$be:5001" --timeout-secs 5)
  done <"$WORK/chg-$N.list"
  read -r p50 p90 < <(printf '%s\n' "${wall[@]}" | pct); record chg_api "$b" "$p50"; record chg_api90 "$b" "$p90"
  if [ ${#agent[@]} -gt 0 ]; then
    read -r p50 p90 < <(printf '%s\n' "${agent[@]}" | pct); record chg_agent "$b" "$p50"; record chg_agent90 "$b" "$p90"
  fi
  # The same through the manifest directory: renamed into place by the probe, which then polls.
  while read -r f vip be; do
    [ "$f" = "$WORK/dir-0.yaml" ] && continue
    cp "$f" "$ADIR/probe.tmp"
    us=$(map_wait --vip "$vip" --backend "$be:5001" --timeout-secs 300 --rename "$ADIR/probe.tmp" "$ADIR/manifests/probe.yaml")
    dir+=("$(python3 -c "print($us / 1000)")")
  done <"$WORK/dir.list"
  read -r p50 p90 < <(printf '%s\n' "${dir[@]}" | pct); record chg_dir "$b" "$p50"; record chg_dir90 "$b" "$p90"

  # Restart on the same state and pins: first counted (not timed) to see the map writes a
  # restart makes until it lists the Services again, then timed.
  ms=$(stop_agent); record stop "$b" "$ms"
  if [ "$HAVE_PERF" = 1 ]; then
    launch perf stat -e syscalls:sys_enter_bpf --filter "$MAP_WRITES" -x, -o "$ADIR/writes" --
    ms=$(wait_ready)
    ms=$(wait_services $((N + 1)) "$(now_us)")
    ms=$(stop_agent) # perf writes its count when the agent exits
    record resync_writes "$b" "$(awk -F, '/sys_enter_bpf/ {print $1}' "$ADIR/writes")"
  fi
  t0=$(now_us)
  launch
  ms=$(wait_ready "$t0"); record resync_ready "$b" "$ms"
  ms=$(wait_services $((N + 1)) "$t0"); record resync_listed "$b" "$ms"
  record resync_cpu "$b" "$(cpu_ms_since 0)"
  record rss_restart "$b" "$(mb "$(rss_kb)")"

  l=$(log_lines); t0=$(now_us); c0=$(cpu_ticks)
  cli delete -f "$WORK/full-$N.yaml" >/dev/null
  record delete "$b" "$(ms_since "$t0")"
  record delete_cpu "$b" "$(cpu_ms_since "$c0")"
  [ "$(cli -o 'jsonpath={.services}' status)" = 1 ] || { echo "$b: Services left after delete" >&2; exit 1; }
  sleep 2
  record rss_deleted "$b" "$(mb "$(rss_kb)")"
  remove_agent
}

# ---- kube-proxy's rules for the same Services, in a namespace of their own ----
KP_BACKENDS=10.250.2.3,10.250.2.4
kube_proxy_gen() {
  local k
  for k in ipt-full ipt-change ipt-revert nft-full nft-change nft-revert; do
    python3 bench/kube_proxy_gen.py "$k" "$N" "$KP_BACKENDS" "$WORK/kp-$k" 2
  done
}
# Runs a command on CPU 0 in the kube-proxy namespace; prints its wall time in ms.
kp_time() {
  local t0; t0=$(now_us)
  taskset -c "$CLIENT_CPU" nsenter --net=/var/run/netns/"$KP_NS" "$@" >/dev/null
  ms_since "$t0"
}
median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
measure_kube_proxy() {
  local a b c
  log "N=$N: kube-proxy rules ($IPT_RESTORE, nft)"
  KP_NS=$RUN-kp
  mkns "$KP_NS"
  a=$(kp_time "$IPT_RESTORE" "$WORK/kp-ipt-full"); record kp_program ipt "$a"
  a=$(kp_time "$IPT_RESTORE" --noflush "$WORK/kp-ipt-change")
  b=$(kp_time "$IPT_RESTORE" --noflush "$WORK/kp-ipt-revert")
  c=$(kp_time "$IPT_RESTORE" --noflush "$WORK/kp-ipt-change")
  record kp_change ipt "$(median3 "$a" "$b" "$c")"
  a=$(kp_time nft -f "$WORK/kp-nft-full"); record kp_program nft "$a"
  a=$(kp_time nft -f "$WORK/kp-nft-change")
  b=$(kp_time nft -f "$WORK/kp-nft-revert")
  c=$(kp_time nft -f "$WORK/kp-nft-change")
  record kp_change nft "$(median3 "$a" "$b" "$c")"
  # A new namespace each round: both start from empty tables.
  ip netns delete "$KP_NS"
}

log "old: $OLD_BIN; new: $NEW_BIN; probe: $PROBE; agent on CPU $AGENT_CPU, CLI and probe on CPU $CLIENT_CPU"
for N in "${NS[@]}"; do
  log "N=$N: generating manifests..."
  python3 "$WORK/gen.py" "$N" "$CHANGES" "$WORK"
  if [ "$KUBE_PROXY" = 1 ]; then kube_proxy_gen; fi
  for r in $(seq "$ROUNDS"); do
    measure old "$OLD_BIN" "$r"
    measure new "$NEW_BIN" "$r"
    if [ "$KUBE_PROXY" = 1 ]; then measure_kube_proxy; fi
  done
  rm -f "$WORK"/full-"$N".yaml "$WORK"/chg-"$N"-*.yaml "$WORK"/kp-*
done

echo "Services control plane: old = $OLD_BIN, new = $NEW_BIN"
echo "$(nproc) CPUs, kernel $(uname -r); agent pinned to CPU $AGENT_CPU, CLI and probe to CPU $CLIENT_CPU;"
echo "$ROUNDS round(s) per build, interleaved old/new, a fresh agent each; $CHANGES changes per kind per round."
for N in "${NS[@]}"; do
  echo
  echo "N = $N Services, $((2 * N)) endpoints (+1 probe Service in --manifest-dir)"
  set -- rss0:"RSS at start, MB" cpu0:"idle CPU at 0, % of a core" \
    program:"program N: apply -f, ms" program_agent:"  agent's own (log), ms" program_cpu:"  agent CPU, ms" \
    rssN:"RSS at N, MB" per_svc:"  bytes per Service" cpuN:"idle CPU at N, % of a core" disk:"state dir at N, MB" \
    chg_api:"1 backend, apply -f p50 ms" chg_api90:"  p90 ms" chg_agent:"  agent's own p50 ms" chg_agent90:"  agent's own p90 ms" \
    chg_dir:"1 backend, dir→map p50 ms" chg_dir90:"  p90 ms" \
    resync_ready:"restart: healthy after, ms" resync_listed:"restart: N listed after, ms" resync_cpu:"  agent CPU until listed, ms" rss_restart:"  RSS after restart, MB" \
    resync_writes:"  map writes (perf)" stop:"stop at N: SIGTERM to exit, ms" delete:"delete N: delete -f, ms" delete_cpu:"  agent CPU, ms" rss_deleted:"RSS after delete, MB"
  specs=()
  for s in "$@"; do specs+=("${s%%:*}@$N:${s#*:}"); done
  summarize "$RESULTS" new old "${specs[@]}"
  if [ "$KUBE_PROXY" = 1 ]; then
    echo "kube-proxy's rules for the same N Services ($IPT_RESTORE; $(nft --version))"
    summarize "$RESULTS" nft ipt "kp_program@$N:program N, ms" "kp_change@$N:1 backend (median of 3), ms" |
      sed 's/ipt median/iptables median/; s/nft median/nftables median/'
  fi
done
