#!/usr/bin/env bash
# The observer, three ways:
#  1. events decoded, enriched, filtered and kept in the ring per second, on one core;
#  2. the delay from a packet leaving a pod to its flow line on `ciliate observe -f -o json`'s
#     stdout (p50/p99/max), with the release agent and two pods wired by the CNI;
#  3. the flow ring's memory: the agent's RSS before and after its ring
#     (--hubble-event-buffer-capacity 65535) fills, and the bytes per flow.
#
#   sudo bench/observer.sh [--packets N] [--no-build]
#
# (2) and (3) need root; their namespaces are named cb-obs-* and are removed on exit.
# Prints numbers; never fails on them.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKETS=300
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --packets) PACKETS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    *) echo "usage: $0 [--packets N] [--no-build]" >&2; exit 2 ;;
  esac
done

# ---- 1. throughput of the pipeline, on one core ----
cargo test -p ciliate-observer --release --test compat -- --ignored --nocapture throughput 2>&1 |
  grep -E 'events/s'

[ "$BUILD" = 1 ] && cargo build --release --bins -q
BIN=$PWD/target/release
NODE=
STATE=
AGENT_PID=
SOCK=

teardown() {
  set +e
  [ -n "$AGENT_PID" ] && kill -9 "$AGENT_PID" 2>/dev/null
  AGENT_PID=
  for ns in $(ip netns list | awk '/^cb-obs-/{print $1}'); do ip netns delete "$ns"; done
  if [ -n "$NODE" ]; then
    rm -rf "/sys/fs/bpf/ciliate/$NODE"
    for cg in /sys/fs/cgroup/unified/ciliate/"$NODE" /sys/fs/cgroup/ciliate/"$NODE"; do rmdir "$cg" 2>/dev/null; done
  fi
  rmdir /sys/fs/bpf/ciliate 2>/dev/null
  [ -n "$STATE" ] && rm -rf "$STATE"
  NODE=; STATE=
  set -e
}
trap teardown EXIT
trap "exit 130" INT TERM # so that a signal still cleans up
in_ns() { local ns=$1; shift; nsenter --net=/var/run/netns/"$ns" "$@"; }

cni_add() { # ns container-id pod
  CNI_COMMAND=ADD CNI_CONTAINERID=$2 CNI_NETNS=/var/run/netns/$1 CNI_IFNAME=eth0 \
  CNI_ARGS="K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$3" CNI_PATH=/opt/cni/bin \
    in_ns cb-obs-node "$BIN/ciliate-cni" <<<"{\"cniVersion\":\"1.0.0\",\"name\":\"ciliate\",\"type\":\"ciliate-cni\",\"agentSocket\":\"$SOCK\"}"
}

# A node namespace with the agent (extra flags as arguments) and pods client and server;
# sets SERVER_IP.
setup() {
  NODE=cbobs$$$1; shift
  STATE=$(mktemp -d)
  SOCK=$STATE/agent.sock
  ip netns add cb-obs-node; ip netns add cb-obs-client; ip netns add cb-obs-server
  ip -n cb-obs-node link set lo up
  ip -n cb-obs-node addr add 192.0.2.1/32 dev lo
  # nsenter execs the agent: $! is the agent itself (for its RSS, and for kill).
  nsenter --net=/var/run/netns/cb-obs-node "$BIN/ciliate-agent" --node-name "$NODE" --pod-cidr 10.252.0.0/22 \
    --state-dir "$STATE" --socket "$SOCK" "$@" >"$STATE/agent.log" 2>&1 &
  AGENT_PID=$!
  disown "$AGENT_PID" # no job-control chatter when teardown kills it
  for _ in $(seq 100); do "$BIN/ciliate" --socket "$SOCK" status >/dev/null 2>&1 && break; sleep 0.1; done
  cni_add cb-obs-client obs-client client >/dev/null
  SERVER_IP=$(cni_add cb-obs-server obs-server server | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])')
  # Enrichment reads the agent's tables on a short refresh; let it see the pods.
  sleep 1.5
}

# Python helpers: the sender enters a pod's network namespace in a thread (setns is per thread;
# os.setns is Python 3.12+, hence libc), and the flow's L4 ports are read from -o json lines.
export PYLIB='
import ctypes, json, os, socket, threading, time
_libc = ctypes.CDLL(None, use_errno=True)
def enter_netns(name):
    fd = os.open("/var/run/netns/" + name, os.O_RDONLY)
    if _libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns " + name)
    os.close(fd)
def udp(flow):
    l4 = flow.get("l4") or {}
    u = l4.get("UDP") or l4.get("udp")
    if not u:
        return None
    sp = u.get("sourcePort", u.get("source_port"))
    dp = u.get("destinationPort", u.get("destination_port"))
    return sp, dp
'

# ---- 2. packet to `ciliate observe -f` output ----
setup a
printf '\nDelay from a UDP datagram leaving pod client to its flow on `ciliate observe -f -o json` (%s datagrams, 10 ms apart, each from its own source port)\n' "$PACKETS"
python3 - "$BIN/ciliate" "$SOCK" "$SERVER_IP" "$PACKETS" <<'PY' || echo "(delay measurement failed)"
import os, sys, subprocess
exec(os.environ["PYLIB"])
cli, sock, dst, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
DPORT, WARM, BASE = 7, 19999, 20000
obs = subprocess.Popen([cli, "--socket", sock, "observe", "-f", "-o", "json",
                        "--from-pod", "bench/client"], stdout=subprocess.PIPE, bufsize=0)
arrival = {}  # source port -> first arrival
lines = [0]
def reader():
    for line in obs.stdout:  # a raw pipe: each line as soon as it is written
        t = time.time()
        lines[0] += 1
        try:
            f = json.loads(line).get("flow")
        except ValueError:
            continue
        p = f and udp(f)
        if p and p[1] == DPORT and p[0] not in arrival:
            arrival[p[0]] = t
threading.Thread(target=reader, daemon=True).start()
sent = {}
def sender():
    enter_netns("cb-obs-client")
    # Until a warm-up datagram shows, `observe -f` is not yet connected (or the pods not known).
    w = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); w.bind(("0.0.0.0", WARM))
    deadline = time.time() + 10
    while WARM not in arrival and time.time() < deadline:
        w.sendto(b"w", (dst, DPORT)); time.sleep(0.1)
    w.close()
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", BASE + i))
        t = time.time()
        s.sendto(b"x", (dst, DPORT))
        sent[BASE + i] = t
        s.close()
        time.sleep(0.01)
th = threading.Thread(target=sender); th.start(); th.join()
time.sleep(2)
obs.terminate(); obs.wait()
d = sorted((arrival[p] - t) * 1000 for p, t in sent.items() if p in arrival)
if not d:
    print("no flow matched (%d lines read; warm-up %s)" % (lines[0], "seen" if WARM in arrival else "not seen"))
    sys.exit(1)
q = lambda x: d[min(len(d) - 1, int(x * len(d)))]
print("%-34s %10s %10s %10s %12s" % ("", "p50 ms", "p99 ms", "max ms", "matched"))
print("%-34s %10.1f %10.1f %10.1f %12s" % ("packet -> observe -f line", q(0.5), q(0.99), d[-1], "%d/%d" % (len(d), n)))
print("%-34s %10s %10.1f %10s" % ("goal", "", 50.0, ""))
PY
teardown

# ---- 3. memory of a full flow ring ----
CAP=65535
setup b --hubble-event-buffer-capacity "$CAP"
rss() { awk '/VmRSS/{print $2}' "/proc/$AGENT_PID/status"; }
count_flows() { "$BIN/ciliate" --socket "$SOCK" observe --last 100000 -o json | grep -c '"flow"' || true; }
RSS0=$(rss); FLOWS0=$(count_flows)
printf '\nFlow ring memory (--hubble-event-buffer-capacity %s)\n' "$CAP"
# 40,000 UDP datagrams from distinct source ports: a new connection each, reported leaving the
# client and entering the server: 80,000 flows. In batches, so the agent drains the kernel ring.
python3 - "$SERVER_IP" <<'PY'
import os, sys
exec(os.environ["PYLIB"])
dst = sys.argv[1]
def flood():
    enter_netns("cb-obs-client")
    for base in range(20000, 60000, 500):
        for port in range(base, base + 500):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("0.0.0.0", port)); s.sendto(b"x", (dst, 9))
            except OSError:
                pass
            s.close()
        time.sleep(0.03)
th = threading.Thread(target=flood); th.start(); th.join()
PY
# RSS once the agent has taken in the flood, before any query; then count the ring (a query
# of 65,535 flows, which itself leaves the agent's allocator larger) and read RSS again.
sleep 2
RSS1=$(rss)
FLOWS1=0
for _ in $(seq 30); do
  FLOWS1=$(count_flows)
  [ "$FLOWS1" -ge "$CAP" ] && break
  sleep 1
done
RSS2=$(rss)
python3 - "$RSS0" "$RSS1" "$RSS2" "$FLOWS0" "$FLOWS1" "$CAP" <<'PY'
import sys
r0, r1, r2, f0, f1, cap = (int(x) for x in sys.argv[1:])
print("%-40s %12s %12s %12s %14s" % ("", "pods up", "ring full", "difference", "bytes/flow"))
print("%-40s %12d %12d %12d" % ("flows in the ring", f0, f1, f1 - f0))
for label, r in (("agent RSS, MB", r1), ("agent RSS after reading all flows, MB", r2)):
    per = "%14.0f" % ((r - r0) * 1024 / (f1 - f0)) if f1 > f0 else ""
    print("%-40s %12.1f %12.1f %12.1f %s" % (label, r0 / 1024, r / 1024, (r - r0) / 1024, per))
if f1 < cap:
    print("(the ring did not fill: %d of %d)" % (f1, cap))
PY
