#!/usr/bin/env bash
# Kafka produce throughput through Ciliate's Kafka proxy (issue #13) against the same producer
# straight to the broker, in one run. Paths, each from a client pod to a broker pod on one node:
#
#   direct  node X, no policy: the producer talks to the broker pod directly
#   proxy   node Y, the client's egress allows TCP 9092 to the broker with `rules.kafka`
#           (`role: produce, topic: bench`): the datapath hands the connection to
#           ciliate-proxy, which parses every request, checks its topic and forwards it
#
# Node X and node Y are two agents in two node namespaces built alike (pods by the CNI plugin),
# measured in rounds that alternate which path goes first; each round's ratio (proxy / direct)
# is printed as it ends and summarized as median [min-max]. The broker is Tansu (the
# Kafka-compatible broker the tests use, one partition) with its `null` storage engine: it
# reads, decodes and answers every request as with storage, and keeps nothing. With
# `--storage memory` (the tests' engine) it keeps every record: at ~500 MB/s that is ~2.5 GB
# more per 5 s measurement, a third of the broker's CPU went to page faults for it, and its
# CPU per MB swung 1.5-4.4 ms, slower round after round: rounds of either path swung 2x
# (session 11, bench/README.md). The producer is librdkafka (PyPI's confluent-kafka, whose
# wheel ships it: Debian's kcat has librdkafka 2.0.2, which cannot read Tansu's ApiVersions v3
# answer) sending 1 KiB messages with acks=1, linger.ms=5, as fast as it can, for --secs
# seconds; throughput counts only messages the broker acknowledged. Around each measurement
# the CPU time (run time of every thread) of node Y's ciliate-proxy and agent and of the broker is read per
# MB, and the producer's own CPU in cores: less moved by other load than the throughput, and
# they say which side bounds it (the producer, on its CPU, in a quiet direct round).
#
#   sudo bench/kafka.sh [--secs N] [--runs N] [--storage null|memory] [--quick] [--no-build]
#
#   --secs N       seconds per measurement (default 10)
#   --runs N       rounds (default 5)
#   --storage S    the broker's storage engine: null (default) or memory (see above)
#   --quick        checks that it works and cleans up: 1 s, 1 round, the binaries already
#                  built (in $CILIATE_BIN_DIR, default target/release)
#   --no-build     do not run `cargo build --release` first
#
# Needs root, Tansu and confluent-kafka (scripts/install-kafka-tools, which scripts/install-deps
# calls; a missing one is an error, never a skip). The producer is pinned to CPU 0, the broker
# to the last CPU; ciliate-proxy and the agents run unpinned, as in production. Everything it
# makes is named cb<pid>-*, recorded, and removed on exit; the proxy runs in a session of its
# own and outlives its agent, so cleanup also stops every process left in this run's node
# namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SECS=10
RUNS=5
BUILD=1
STORAGE=null
usage() { echo "usage: $0 [--secs N] [--runs N] [--storage null|memory] [--quick] [--no-build]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) [ $# -ge 2 ] || usage; SECS=$2; shift 2 ;;
    --runs) [ $# -ge 2 ] || usage; RUNS=$2; shift 2 ;;
    --quick) SECS=1; RUNS=1; BUILD=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --storage) [ $# -ge 2 ] || usage; STORAGE=$2; shift 2 ;;
    *) usage ;;
  esac
done
[[ "$SECS" =~ ^[0-9]+$ ]] && [ "$SECS" -ge 1 ] || { echo "$0: --secs $SECS: expected a whole number of seconds >= 1" >&2; exit 2; }
case "$STORAGE" in
  null) ENGINE=null:// ;;
  memory) ENGINE=memory://tansu/ ;;
  *) echo "$0: --storage $STORAGE: expected null or memory" >&2; exit 2 ;;
esac
[[ "$RUNS" =~ ^[0-9]+$ ]] && [ "$RUNS" -ge 1 ] || { echo "$0: --runs $RUNS: expected a number >= 1" >&2; exit 2; }
TOOLS=${CILIATE_KAFKA_TOOLS:-/opt/ciliate-tools}
TANSU=$TOOLS/bin/tansu
PY=$TOOLS/kafka-venv/bin/python
[ -x "$TANSU" ] || { echo "$0: $TANSU is not installed (scripts/install-kafka-tools)" >&2; exit 1; }
"$PY" -c "import confluent_kafka" 2>/dev/null ||
  { echo "$0: confluent-kafka is not installed in $TOOLS/kafka-venv (scripts/install-kafka-tools)" >&2; exit 1; }

[ "$BUILD" = 1 ] && cargo build --release --bins -q
BIN=${CILIATE_BIN_DIR:-$PWD/target/release}
nodes_init

node x 10.252.8.0/24 - --hubble-socket "$STATE/x/hubble.sock"
node y 10.252.12.0/24 - --hubble-socket "$STATE/y/hubble.sock"
for n in x y; do for p in broker client; do mkns "$RUN-$n-$p"; done; done
X_BROKER=$(pod x broker app=broker)
pod x client app=client >/dev/null
Y_BROKER=$(pod y broker app=broker)
pod y client app=client >/dev/null

cat >"$STATE/y/kafka.yaml" <<'YAML'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-kafka, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: broker}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: produce, topic: bench}
YAML
"$BIN/ciliate" --socket "$SOCK_y" apply -f "$STATE/y/kafka.yaml" >/dev/null

# The brokers: Tansu in each broker pod, advertising the pod's address (clients come back to
# it after the bootstrap metadata, through the proxy on node Y), with the topic made from the
# broker's own pod (creating topics is no part of the policy measured).
declare -A BROKER_PID=() # by path
for n in x y; do
  ip=X_BROKER
  [ "$n" = y ] && ip=Y_BROKER
  pin_server nsenter --net=/var/run/netns/"$RUN-$n-broker" "$TANSU" broker \
    --listener-url "tcp://${!ip}:9092" --advertised-listener-url "tcp://${!ip}:9092" \
    --storage-engine "$ENGINE" >"$STATE/tansu-$n.log" 2>&1 &
  track $!
  path=direct
  [ "$n" = y ] && path=proxy
  BROKER_PID[$path]=$!
done
for n in x y; do
  ip=X_BROKER
  [ "$n" = y ] && ip=Y_BROKER
  made=0
  for _ in $(seq 100); do
    if in_ns "$RUN-$n-broker" "$TANSU" topic create bench --broker "tcp://${!ip}:9092" --partitions 1 \
      >>"$STATE/topic-$n.log" 2>&1; then made=1; break; fi
    sleep 0.2
  done
  [ "$made" = 1 ] || { echo "$0: cannot create topic bench on node $n's broker: $(tail -5 "$STATE/topic-$n.log")" >&2; exit 1; }
done

# The producer: 1 KiB messages for $1 seconds (0: 20 messages, a check), then every message
# delivered; prints "delivered failed seconds".
cat >"$STATE/produce.py" <<'PY'
import sys, time
from confluent_kafka import Producer
broker, secs = sys.argv[1], float(sys.argv[2])
p = Producer({"bootstrap.servers": broker, "acks": 1, "linger.ms": 5,
              "batch.num.messages": 10000, "queue.buffering.max.messages": 100000,
              "message.timeout.ms": 30000})
msg = b"m" * 1024
count = {"ok": 0, "failed": 0, "error": ""}
def delivered(err, _m):
    if err is None:
        count["ok"] += 1
    else:
        count["failed"] += 1
        count["error"] = str(err)
cpu0 = time.process_time()
start = time.monotonic()
end = start + secs
sent = 0
while (time.monotonic() < end) if secs > 0 else (sent < 20):
    try:
        p.produce("bench", msg, on_delivery=delivered)
        sent += 1
    except BufferError:
        p.poll(0.005)
        continue
    if sent % 1000 == 0:
        p.poll(0)
left = p.flush(60)
elapsed = time.monotonic() - start
print(count["ok"], count["failed"] + left, f"{elapsed:.3f}", f"{time.process_time() - cpu0:.3f}")
if count["error"]:
    print("last error:", count["error"], file=sys.stderr)
PY
declare -A DST=(
  [direct]="$RUN-x-client $X_BROKER"
  [proxy]="$RUN-y-client $Y_BROKER"
)
produce() { # path secs: "delivered failed seconds"
  local ns ip
  read -r ns ip <<<"${DST[$1]}"
  pin_client nsenter --net=/var/run/netns/"$ns" "$PY" "$STATE/produce.py" "$ip:9092" "$2" 2>>"$STATE/produce.log"
}
# CPU time of all CPUs but niced and idle time (user, system, irq, softirq), in seconds: what
# every process of the path costs, the kernel's packet work that ticks count as softirq
# rather than to a process included; the builds of a shared machine (nice) are not counted,
# other un-niced work is.
busy_s() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%.3f", ($2 + $4 + $7 + $8) / hz }' /proc/stat; }
# A process's time on a CPU in seconds: the sum of its threads' run time (schedstat, in ns),
# the packet work the kernel does in its context included. Not utime+stime: this kernel
# samples those at each tick, and ticks that land in that packet work count as softirq, to no
# process (the proxy's CPU per MB read so went 0.18-0.64 ms in runs of one build).
cpu_s() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.6f", s / 1e9 }'; }
proxy_pid() {
  local pid
  for pid in $(ip netns pids "$RUN-y"); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = ciliate-proxy ] && { echo "$pid"; return; }
  done
}
kafka_flows() { # node: Kafka flows its observer holds
  "$BIN/ciliate" observe --hubble-socket "$STATE/$1/hubble.sock" --protocol kafka --last 100000 -o json 2>/dev/null |
    grep -c '"kafka"' || true
}

# Both paths deliver (the proxy's first connection may wait for the redirect to be in force),
# and each goes where it should: the proxied one through the Kafka proxy (Kafka flows in
# node Y's observer), the direct one not.
for p in direct proxy; do
  ok=0
  for _ in $(seq 30); do
    read -r done failed _ <<<"$(produce "$p" 0)" || true
    [ "${done:-0}" -ge 20 ] && [ "${failed:-1}" = 0 ] && { ok=1; break; }
    sleep 0.5
  done
  [ "$ok" = 1 ] || { echo "$0: path $p does not deliver: $(tail -5 "$STATE/produce.log")" >&2; exit 1; }
done
[ "$(kafka_flows y)" -gt 0 ] || { echo "$0: the proxied path's requests are not in node Y's Kafka flows: not through the Kafka proxy" >&2; exit 1; }
[ "$(kafka_flows x)" = 0 ] || { echo "$0: the direct path went through a Kafka proxy" >&2; exit 1; }

: >"$RESULTS"
for round in $(seq "$RUNS"); do
  # The two paths in alternating order, so that each round's ratio is of two neighbouring
  # measurements and neither path is always the one measured right after the other.
  order="direct proxy"
  [ $((round % 2)) = 0 ] && order="proxy direct"
  for p in $order; do
    ppid=$(proxy_pid)
    bpid=${BROKER_PID[$p]}
    c0_proxy=$(cpu_s "$ppid"); c0_agent=$(cpu_s "${AGENTS[1]}"); c0_broker=$(cpu_s "$bpid"); c0_all=$(busy_s)
    read -r done failed secs client_cpu <<<"$(produce "$p" "$SECS")"
    c1_proxy=$(cpu_s "$ppid"); c1_agent=$(cpu_s "${AGENTS[1]}"); c1_broker=$(cpu_s "$bpid"); c1_all=$(busy_s)
    mb=$(python3 -c "print($done * 1024 / 1e6)")
    printf -v "RATE_$p" %s "$(python3 -c "print($done / $secs)")"
    rate=RATE_$p
    echo "msgs $p ${!rate}" >>"$RESULTS"
    echo "mbs $p $(python3 -c "print($mb / $secs)")" >>"$RESULTS"
    echo "failed $p $failed" >>"$RESULTS"
    echo "client-cpu $p $(python3 -c "print($client_cpu / $secs)")" >>"$RESULTS"
    echo "broker-cpu $p $(python3 -c "print(1e3 * ($c1_broker - $c0_broker) / max($mb, 1e-9))")" >>"$RESULTS"
    echo "all-cpu $p $(python3 -c "print(1e3 * ($c1_all - $c0_all) / max($mb, 1e-9))")" >>"$RESULTS"
    if [ "$p" = proxy ]; then
      echo "proxy-cpu $p $(python3 -c "print(1e3 * ($c1_proxy - $c0_proxy) / max($mb, 1e-9))")" >>"$RESULTS"
      echo "agent-cpu $p $(python3 -c "print(1e3 * ($c1_agent - $c0_agent) / max($mb, 1e-9))")" >>"$RESULTS"
    fi
  done
  ratio=$(python3 -c "print($RATE_proxy / max($RATE_direct, 1e-9))")
  echo "ratio proxy $ratio" >>"$RESULTS"
  printf 'round %s of %s: direct %.0f, proxy %.0f messages/s: %.2f (load %s)\n' "$round" "$RUNS" \
    "$RATE_direct" "$RATE_proxy" "$ratio" "$(cut -d' ' -f1 /proc/loadavg)" >&2
done

printf '\nKafka produce, 1 KiB messages, acks=1, linger.ms=5 (librdkafka %s), Tansu (%s storage), one partition, %s s per measurement; %s; load %s\n\n' \
  "$("$PY" -c 'import confluent_kafka; print(confluent_kafka.libversion()[0])')" "$STORAGE" "$SECS" "$(pinning)" "$(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m, p, v = line.split()
    rows.setdefault((m, p), []).append(float(v))
def med(m, p):
    v = rows.get((m, p))
    return statistics.median(v) if v else None
def cell(m, p, fmt):
    v = rows.get((m, p))
    if not v:
        return "-"
    return f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))}-{fmt.format(max(v))}]"
w = 28
print(f"{'median [min-max]':34}" + "".join(f"{p:>{w}}" for p in ["direct", "proxy"]))
for m, label, fmt in [("msgs", "messages/s delivered", "{:,.0f}"),
                      ("mbs", "MB/s delivered", "{:,.1f}"),
                      ("failed", "messages failed", "{:,.0f}"),
                      ("client-cpu", "producer CPU, cores", "{:.2f}"),
                      ("broker-cpu", "broker CPU ms per MB", "{:.2f}"),
                      ("all-cpu", "all CPUs (not nice) ms per MB", "{:.2f}"),
                      ("proxy-cpu", "proxy CPU ms per MB", "{:.2f}"),
                      ("agent-cpu", "agent CPU ms per MB", "{:.2f}")]:
    print(f"{label:34}" + "".join(f"{cell(m, p, fmt):>{w}}" for p in ["direct", "proxy"]))
print(f"({len(rows.get(('msgs', 'direct'), []))} rounds, the two paths in alternating order)\n")
a, b = med("msgs", "direct"), med("msgs", "proxy")
ratio = f"{b / a:.2f}" if a and b is not None else "-"
print(f"{'proxy vs direct (medians)':44}{'value':>10}   goal")
print(f"{'produce throughput, ratio':44}{ratio:>10}   >= 0.9")
print(f"{'  per round (median [min-max] of ratios)':44}{cell('ratio', 'proxy', '{:.2f}'):>18}")
failed = sum(sum(v) for (m, _), v in rows.items() if m == "failed")
if failed:
    print(f"NOTE: {failed:.0f} messages were not delivered")
    sys.exit(1)
PY
