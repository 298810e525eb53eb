# Sourced by every script in bench/: unique names per run, cleanup of exactly what this run
# made (recorded namespaces, pids and paths; never a search by name or pattern), CPU pinning
# of client and server, and statistics over interleaved rounds.
#
# Every name a run makes starts with cb<pid>: two runs at once, or another tool's cb-* names,
# are never touched.

RUN=cb$$
CB_NETNS=()
CB_PIDS=()
CB_PATHS=()

# Client on CPU 0, server on the last CPU: different CPUs whenever there are two, so that the
# scheduler cannot move them onto each other between rounds (unpinned, rounds on 2 vCPUs swing
# by 0.5-1.6x with where it puts them). The agent runs unpinned, as in production.
NCPUS=$(nproc)
CLIENT_CPU=0
SERVER_CPU=$((NCPUS - 1))
pin_client() { taskset -c "$CLIENT_CPU" "$@"; }
# Only ever run in the background (`pin_server nsenter ... &`): a backgrounded function is a
# subshell, and the exec makes that subshell the server, so $! is the server and killing it stops
# the server (without it, cleanup killed the subshell and left the server running).
pin_server() { exec taskset -c "$SERVER_CPU" "$@"; }
pinning() {
  if [ "$CLIENT_CPU" = "$SERVER_CPU" ]; then
    echo "client and server pinned to CPU $CLIENT_CPU (taskset; this machine has 1 CPU)"
  else
    echo "client pinned to CPU $CLIENT_CPU, server to CPU $SERVER_CPU (taskset; $NCPUS CPUs); agent unpinned"
  fi
}

# Makes a namespace and records it for cleanup.
mkns() { ip netns add "$1"; CB_NETNS+=("$1"); }
# Records a pid (started by this run) for cleanup.
track() { CB_PIDS+=("$1"); }
# Records a file or directory (made by this run) for cleanup.
track_path() { CB_PATHS+=("$1"); }
in_ns() { local ns=$1; shift; nsenter --net=/var/run/netns/"$ns" "$@"; }

# Stops what this run started, deletes its namespaces and paths. Idempotent.
cb_cleanup() {
  set +e
  local pid
  for pid in "${CB_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${CB_PIDS[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  CB_PIDS=()
  local ns
  for ns in "${CB_NETNS[@]}"; do ip netns delete "$ns" 2>/dev/null; done
  CB_NETNS=()
  local p
  for p in "${CB_PATHS[@]}"; do
    if [ -d "$p" ] && [[ "$p" == /sys/fs/cgroup/* ]]; then rmdir "$p" 2>/dev/null; else rm -rf "$p"; fi
  done
  CB_PATHS=()
  rmdir /sys/fs/bpf/ciliate 2>/dev/null
  set -e
}

# A node's layout of CPU groups (`--layout node` of dns.sh and kafka.sh): the agent (with its
# proxy, its child) in a cpu cgroup of its own, each pod's processes in one of theirs, as the
# kubelet and the agent's unit place them; without it everything shares the bench's group
# (the root cgroup, the bench's autogroup). cg_init picks the cpu controller: cgroup v2's root
# when cpu is enabled there, else cgroup v1's cpu hierarchy (a hybrid mount); none: an error.
# The groups are made at that root (a v2 cgroup holding processes cannot enable cpu for
# children), named $RUN-<name>, weight default, and removed on exit.
CB_CG_BASE=
CB_AGENT_CG=
cg_init() {
  if grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
    CB_CG_BASE=/sys/fs/cgroup
  elif [ -f /sys/fs/cgroup/cpu/cgroup.procs ]; then
    CB_CG_BASE=/sys/fs/cgroup/cpu
  else
    echo "$0: --layout node needs the cpu cgroup controller (cgroup v2 with cpu in /sys/fs/cgroup/cgroup.subtree_control, or v1's /sys/fs/cgroup/cpu)" >&2
    return 1
  fi
}
cg_layout() { [ -n "$CB_CG_BASE" ] && echo "node: agents and pods in cpu cgroups of their own ($CB_CG_BASE)" || echo "bench: one group"; }
# Makes the group <name> (nothing without cg_init).
cg_make() {
  [ -n "$CB_CG_BASE" ] || return 0
  mkdir "$CB_CG_BASE/$RUN-$1"
  track_path "$CB_CG_BASE/$RUN-$1"
}
# Moves the calling subshell into group <name> (nothing without cg_init or without a name):
# run it first in `{ cg_enter NAME; exec CMD; } &` or `( cg_enter NAME; CMD )`, never in the
# script's own shell.
cg_enter() {
  [ -n "$CB_CG_BASE" ] && [ -n "$1" ] || return 0
  echo "$BASHPID" >"$CB_CG_BASE/$RUN-$1/cgroup.procs"
}

# Starts ciliate-agent in namespace $1 as node $2 with state in $3 (extra flags follow), records
# everything it makes (pins, cgroup, state) and waits for it to answer. Sets AGENT_PID. In the
# node layout it starts in group $CB_AGENT_CG.
start_agent() {
  local ns=$1 node=$2 state=$3; shift 3
  track_path "/sys/fs/bpf/ciliate/$node"
  track_path "/sys/fs/cgroup/unified/ciliate/$node"
  track_path "/sys/fs/cgroup/ciliate/$node"
  track_path "$state"
  # nsenter execs the agent: $! is the agent itself (for its RSS, and for kill).
  {
    cg_enter "$CB_AGENT_CG"
    exec nsenter --net=/var/run/netns/"$ns" "$BIN/ciliate-agent" --node-name "$node" \
      --state-dir "$state" --socket "$state/agent.sock" "$@"
  } >"$state/agent.log" 2>&1 &
  AGENT_PID=$!
  track "$AGENT_PID"
  disown "$AGENT_PID" # no job-control chatter when cleanup kills it
  "$BIN/ciliate" --socket "$state/agent.sock" status --wait --wait-duration 20s >/dev/null
}

# Benches of two node namespaces x and y, each with an agent whose L7 proxy serves its pods
# (l7.sh, dns.sh, kafka.sh). nodes_init makes STATE (removed on exit) and RESULTS, and on exit
# stops the agents first (a supervisor still running would start a new proxy for one stopped),
# then whatever is left in the node namespaces (the proxy runs in a process group of its own and
# outlives its agent, so it is no child of this script; so do nginx's workers), then the rest
# through cb_cleanup.
NODE_NS=()
AGENTS=()
nodes_init() {
  STATE=$(mktemp -d)
  track_path "$STATE"
  RESULTS=$STATE/results
  trap nodes_cleanup EXIT
  trap "exit 130" INT TERM # so that a signal still cleans up
}
ns_pids() { local ns; for ns in "${NODE_NS[@]}"; do ip netns pids "$ns" 2>/dev/null; done; }
nodes_cleanup() {
  set +e
  local pid left
  for pid in "${AGENTS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${AGENTS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  done
  for _ in 1 2 3; do
    left=$(ns_pids)
    [ -z "$left" ] && break
    for pid in $left; do kill "$pid" 2>/dev/null; done
    for _ in $(seq 20); do [ -z "$(ns_pids)" ] && break; sleep 0.1; done
    for pid in $(ns_pids); do kill -9 "$pid" 2>/dev/null; done
    sleep 0.2
  done
  cb_cleanup
}

# node <name> <pod-cidr> <address|-> [agent flags...]: a node namespace with its agent; sets
# SOCK_<name>. With an address the node has one of its own on lo, as a real node does (the DNS
# proxy asks resolvers from it; nginx listens on it).
node() {
  local n=$1 ns=$RUN-$1 cidr=$2 addr=$3
  shift 3
  mkns "$ns"
  NODE_NS+=("$ns")
  ip -n "$ns" link set lo up
  [ "$addr" = - ] || ip -n "$ns" addr add "$addr/32" dev lo
  mkdir -p "$STATE/$n"
  cg_make "$n-agent"
  [ -z "$CB_CG_BASE" ] || CB_AGENT_CG=$n-agent
  start_agent "$ns" "$RUN$n" "$STATE/$n" --pod-cidr "$cidr" "$@"
  AGENTS+=("$AGENT_PID")
  printf -v "SOCK_$n" %s "$STATE/$n/agent.sock"
}

# pod <node> <name> <labels>: a pod by CNI ADD in the namespace $RUN-<node>-<name> made
# beforehand (mkns must not run in the $(...) that takes the IP: what it records would be
# lost); prints its IP.
pod() {
  local ns=$RUN-$1-$2 sock
  sock=$STATE/$1/agent.sock
  CNI_COMMAND=ADD CNI_CONTAINERID=$RUN-$1-$2 CNI_NETNS=/var/run/netns/$ns CNI_IFNAME=eth0 \
  CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=$2;CILIATE_LABELS=$3" CNI_PATH=/opt/cni/bin \
    in_ns "$RUN-$1" "$BIN/ciliate-cni" <<<"{\"cniVersion\":\"1.0.0\",\"name\":\"ciliate\",\"type\":\"ciliate-cni\",\"agentSocket\":\"$sock\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])'
}

# Process $1's RSS in MB by kind of mapping: its executable (code and read-only data, pages of
# the file: shared and evictable, but counted), BPF maps mapped into it (the event ring, its data
# pages mapped twice), anonymous memory (heap, malloc arenas, stacks) and shared libraries.
rss_parts() {
  local exe
  exe=$(readlink "/proc/$1/exe")
  awk -v exe="$exe" '
    /^[0-9a-f]+-[0-9a-f]+ / { name = ""; for (i = 6; i <= NF; i++) name = name (i > 6 ? " " : "") $i; next }
    /^Rss:/ {
      if (name == exe) b += $2; else if (name ~ /^anon_inode:bpf/) r += $2
      else if (name ~ /^\//) l += $2; else a += $2
    }
    END { printf "binary %.1f, BPF ring %.1f, heap and stacks %.1f, libraries %.1f MB\n", b / 1024, r / 1024, a / 1024, l / 1024 }
  ' "/proc/$1/smaps"
}

# The statistics of a results file of lines `metric path value`: per metric and path the
# median and min-max over the rounds, and per metric the ratio of the medians (ours / peer).
# Arguments: file, our path's name, the peer's name, then `metric:label` pairs in order.
summarize() {
  python3 - "$@" <<'PY'
import statistics, sys
path, ours, peer, *metrics = sys.argv[1:]
rows = {}
for line in open(path):
    m, p, v = line.split()
    rows.setdefault((m, p), []).append(float(v))
def cell(v):
    if not v:
        return "-"
    fmt = "{:,.0f}" if statistics.median(v) >= 100 else "{:,.1f}"
    return f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))}-{fmt.format(max(v))}]"
print(f"{'':30} {peer + ' median [min-max]':>30} {ours + ' median [min-max]':>30} {'ratio of medians':>17}")
for spec in metrics:
    m, label = spec.split(":", 1)
    a, b = rows.get((m, peer), []), rows.get((m, ours), [])
    ratio = f"{statistics.median(b) / statistics.median(a):.2f}" if a and b and statistics.median(a) else "-"
    print(f"{label:30} {cell(a):>30} {cell(b):>30} {ratio:>17}")
n = max((len(v) for v in rows.values()), default=0)
print(f"({n} rounds per path, interleaved {ours}/{peer})")
PY
}

# The field $2 of the JSON object $1.
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# BPF run time of nodes' programs (kernel.bpf_stats_enabled=1 and bpftool; else nothing): a
# snapshot before and after a measurement, then `bpf_account` adds the difference, per program,
# to a file of lines `program run_time_ns runs connections`, and prints the nanoseconds per
# connection of all programs together ("" without counters). `bpf_report` prints the file.
bpf_snapshot() { python3 bench/bpf_stats.py "$@" 2>/dev/null || echo '{}'; }
bpf_account() { # before-json after-json connections file
  python3 - "$@" <<'PY'
import json, sys
a, b, conns, path = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
total = 0
with open(path, "a") as f:
    for name, (t, n) in sorted(b.items()):
        t0, n0 = a.get(name, [0, 0])
        f.write(f"{name} {t - t0} {n - n0} {conns}\n")
        total += t - t0
print(f"{total / conns:.0f}" if b and conns else "")
PY
}
bpf_report() { # file
  [ -s "$1" ] || { echo "BPF run time: not counted (sysctl kernel.bpf_stats_enabled=1 and bpftool turn it on)"; return; }
  python3 - "$1" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    name, t, n, c = line.split()
    r = rows.setdefault(name, [0, 0, 0])
    r[0] += int(t); r[1] += int(n); r[2] += int(c)
print(f"BPF run time during CRR (kernel.bpf_stats_enabled), per program:")
print(f"  {'program':20} {'ns per run':>11} {'runs per conn':>14} {'ns per conn':>12}")
for name, (t, n, c) in sorted(rows.items()):
    if n:
        print(f"  {name:20} {t / n:11.0f} {n / max(c, 1):14.2f} {t / max(c, 1):12.0f}")
t = sum(r[0] for r in rows.values()); c = max(r[2] for r in rows.values())
print(f"  {'all':20} {'':11} {'':14} {t / max(c, 1):12.0f}")
PY
}
