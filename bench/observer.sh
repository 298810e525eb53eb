#!/usr/bin/env bash
# The observer, three ways:
#  1. events decoded, enriched, filtered and kept in the ring per second, on one core; and
#     events lost from bursts of 8192 at 1/µs (CILIATE_BENCH_PACE_NS) through a 4096-slot channel;
#  2. the delay from a packet leaving a pod to its flow line on `ciliate observe -f -o json`'s
#     stdout (p50/p99/max), with the release agent and two pods wired by the CNI;
#  3. the flow ring's memory: the agent's RSS before and after its ring
#     (--hubble-event-buffer-capacity 65535) fills, and the bytes per flow.
#
#   sudo bench/observer.sh [--packets N] [--quick] [--no-build]
#
#   --quick     checks that it works and cleans up: no throughput test (it needs a release
#               build), 20 datagrams, a ring of 2,000 flows, the binaries already built (in
#               $CILIATE_BIN_DIR, default target/release)
#
# (2) and (3) need root; the traffic generator is pinned to CPU 0 (see bench/lib.sh), the agent
# unpinned. Everything it makes is named cb<pid>-*, recorded, and removed on exit.
# Prints numbers; never fails on them.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

PACKETS=300
BUILD=1
QUICK=0
CAP=65535
usage() { echo "usage: $0 [--packets N] [--quick] [--no-build]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --packets) [ $# -ge 2 ] || usage; PACKETS=$2; shift 2 ;;
    --quick) QUICK=1; PACKETS=20; CAP=2000; BUILD=0; shift ;;
    --no-build) BUILD=0; shift ;;
    *) usage ;;
  esac
done

# ---- 1. throughput of the pipeline, on one core ----
if [ "$QUICK" = 0 ]; then
  pin_client cargo test -p ciliate-observer --release --test compat -- --ignored --nocapture throughput 2>&1 |
    grep -E 'events/s'
  # Bursts through a channel the datapath's size: events lost by one async reader vs the intake.
  cargo test -p ciliate-observer --release --test compat -- --ignored --nocapture bursts 2>&1 |
    grep -E 'events/s'
fi

[ "$BUILD" = 1 ] && cargo build --release --bins -q
BIN=${CILIATE_BIN_DIR:-$PWD/target/release}
NODE=
STATE=
SOCK=
trap cb_cleanup EXIT
trap "exit 130" INT TERM # so that a signal still cleans up

cni_add() { # ns container-id pod
  CNI_COMMAND=ADD CNI_CONTAINERID=$2 CNI_NETNS=/var/run/netns/$1 CNI_IFNAME=eth0 \
  CNI_ARGS="K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$3" CNI_PATH=/opt/cni/bin \
    in_ns "$NS-node" "$BIN/ciliate-cni" <<<"{\"cniVersion\":\"1.0.0\",\"name\":\"ciliate\",\"type\":\"ciliate-cni\",\"agentSocket\":\"$SOCK\"}"
}

# A node namespace with the agent (extra flags as arguments) and pods client and server;
# sets SERVER_IP and CLIENT_NS.
setup() {
  NODE=${RUN}obs$1
  NS=$RUN-obs$1; shift
  STATE=$(mktemp -d)
  SOCK=$STATE/agent.sock
  mkns "$NS-node"; mkns "$NS-client"; mkns "$NS-server"
  export CLIENT_NS=$NS-client
  ip -n "$NS-node" link set lo up
  ip -n "$NS-node" addr add 192.0.2.1/32 dev lo
  start_agent "$NS-node" "$NODE" "$STATE" --pod-cidr 10.252.0.0/22 "$@"
  cni_add "$NS-client" "$NS-client" client >/dev/null
  SERVER_IP=$(cni_add "$NS-server" "$NS-server" server | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])')
  # Enrichment reads the agent's tables on a short refresh; let it see the pods.
  sleep 1.5
}
teardown() { cb_cleanup; }

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
pin_client python3 - "$BIN/ciliate" "$SOCK" "$SERVER_IP" "$PACKETS" <<'PY' || echo "(delay measurement failed)"
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
    enter_netns(os.environ["CLIENT_NS"])
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
# No flow history: `observe --last` would count its flows too, and they are not in memory.
setup b --hubble-event-buffer-capacity "$CAP" --flow-history-size 0
rss() { awk '/VmRSS/{print $2}' "/proc/$AGENT_PID/status"; }
count_flows() { "$BIN/ciliate" --socket "$SOCK" observe --last 100000 -o json | grep -c '"flow"' || true; }
RSS0=$(rss); FLOWS0=$(count_flows)
printf '\nFlow ring memory (--hubble-event-buffer-capacity %s)\n' "$CAP"
# Up to 40,000 UDP datagrams from distinct source ports: a new connection each, reported leaving the
# client and entering the server: 80,000 flows. In batches, so the agent drains the kernel ring.
pin_client python3 - "$SERVER_IP" "$CAP" <<'PY'
import os, sys
exec(os.environ["PYLIB"])
dst, cap = sys.argv[1], int(sys.argv[2])
def flood():
    enter_netns(os.environ["CLIENT_NS"])
    # Enough datagrams to fill the ring: two flows each (leaving the client, entering the server).
    last = min(60000, 20000 + max(cap * 2 // 3, 1000))
    for base in range(20000, last, 500):
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
