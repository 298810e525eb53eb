#!/usr/bin/env bash
# Kafka produce throughput, 1 KB messages, through Ciliate's L7 proxy (a Kafka rule) against
# the same broker reached directly (an L4-only allow), in one run. A client pod and a broker
# pod on one node (one agent, pods by the CNI plugin); the broker pod runs two Tansu brokers
# (in-memory storage), each advertising its own port:
#
#   direct   port 9092, allowed at L4 only: never redirected
#   kafka    port 9093, `rules.kafka: [{role: produce, topic: bench}]` (and createtopics): the
#            datapath hands the connection to ciliate-proxy, which parses every request and
#            checks its topics
#
# The load is kcat (librdkafka, Debian's package) producing N messages of 1,000 bytes from a
# file (`-l`, librdkafka's default batching), acks=1; measured: wall time of the whole run,
# as messages/s and MB/s, and ciliate-proxy's CPU time per 1,000 messages. Rounds interleave
# direct and kafka; each round produces to a fresh topic (so both brokers hold the same data).
#
#   sudo bench/kafka.sh [--msgs N] [--runs N] [--quick] [--no-build]
#
#   --msgs N    messages per measurement (default 100000)
#   --runs N    rounds, interleaved (default 5)
#   --quick     checks that it works and cleans up: 2,000 messages, 1 round, the binaries
#               already built (in $CILIATE_BIN_DIR, default target/release)
#   --no-build  do not run `cargo build --release` first
#
# Needs root, kcat and Tansu (scripts/install-deps installs both; a missing one is an error).
# kcat is pinned to CPU 0, the brokers to the last CPU; ciliate-proxy and the agent run
# unpinned. Everything it makes is named cb<pid>-*, recorded, and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

MSGS=100000
RUNS=5
BUILD=1
usage() { echo "usage: $0 [--msgs N] [--runs N] [--quick] [--no-build]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --msgs) [ $# -ge 2 ] || usage; MSGS=$2; shift 2 ;;
    --runs) [ $# -ge 2 ] || usage; RUNS=$2; shift 2 ;;
    --quick) MSGS=2000; RUNS=1; BUILD=0; shift ;;
    --no-build) BUILD=0; shift ;;
    *) usage ;;
  esac
done
TANSU=${CILIATE_TANSU:-/opt/ciliate-tools/bin/tansu}
command -v kcat >/dev/null || { echo "$0: kcat is not installed (scripts/install-deps)" >&2; exit 1; }
[ -x "$TANSU" ] || { echo "$0: $TANSU is missing (scripts/install-deps)" >&2; exit 1; }

[ "$BUILD" = 1 ] && cargo build --release --bins -q
BIN=${CILIATE_BIN_DIR:-$PWD/target/release}
STATE=$(mktemp -d)
track_path "$STATE"
RESULTS=$STATE/results
NS=$RUN-node
AGENT=
k_cleanup() {
  set +e
  # The agent first (its supervisor would restart the proxy), then whatever is left in the
  # node namespace (the proxy runs in a session of its own).
  if [ -n "$AGENT" ]; then
    kill "$AGENT" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$AGENT" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$AGENT" 2>/dev/null
  fi
  for _ in 1 2 3; do
    left=$(ip netns pids "$NS" 2>/dev/null)
    [ -z "$left" ] && break
    for pid in $left; do kill "$pid" 2>/dev/null; done
    sleep 0.5
    for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
  done
  cb_cleanup
}
trap k_cleanup EXIT
trap "exit 130" INT TERM

mkns "$NS"
ip -n "$NS" link set lo up
mkdir -p "$STATE/node"
start_agent "$NS" "${RUN}n" "$STATE/node" --pod-cidr 10.252.0.0/24
AGENT=$AGENT_PID
SOCK=$STATE/node/agent.sock
pod() { # name labels: a pod by CNI ADD; prints its IP
  local ns=$RUN-$1
  CNI_COMMAND=ADD CNI_CONTAINERID=$RUN-$1 CNI_NETNS=/var/run/netns/$ns CNI_IFNAME=eth0 \
  CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=$1;CILIATE_LABELS=$2" CNI_PATH=/opt/cni/bin \
    in_ns "$NS" "$BIN/ciliate-cni" <<<"{\"cniVersion\":\"1.0.0\",\"name\":\"ciliate\",\"type\":\"ciliate-cni\",\"agentSocket\":\"$SOCK\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])'
}
mkns "$RUN-broker"
mkns "$RUN-client"
BROKER=$(pod broker app=kafka)
pod client app=client >/dev/null
for port in 9092 9093; do
  pin_server nsenter --net=/var/run/netns/"$RUN-broker" "$TANSU" broker \
    --listener-url "tcp://$BROKER:$port" --advertised-listener-url "tcp://$BROKER:$port" \
    --storage-engine memory://tansu/ >"$STATE/tansu-$port.log" 2>&1 &
  track $!
done

cat >"$STATE/kafka.yaml" <<'YAML'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-kafka, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
    - ports: [{port: "9093", protocol: TCP}]
      rules:
        kafka:
        - role: produce
          topic: bench
        - {apiKey: createtopics}
YAML
"$BIN/ciliate" --socket "$SOCK" apply -f "$STATE/kafka.yaml" >/dev/null

python3 -c "
import sys
with open(sys.argv[1], 'w') as f:
    for i in range(int(sys.argv[2])):
        f.write(('%08d' % i) + 'x' * 992 + '\n')
" "$STATE/msgs" "$MSGS"
declare -A PORT=([direct]=9092 [kafka]=9093)
produce() { # path topic: seconds for the whole produce, or fails
  local t0 t1
  t0=$(date +%s.%N)
  pin_client nsenter --net=/var/run/netns/"$RUN-client" kcat -b "$BROKER:${PORT[$1]}" -P -t "$2" \
    -X acks=1 -X message.max.bytes=2000000 -l "$STATE/msgs" 2>>"$STATE/kcat.log"
  t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)"
}
proxy_pid() { "$BIN/ciliate" --socket "$SOCK" status -o json | python3 -c 'import json,sys; p=json.load(sys.stdin).get("proxy") or {}; print(p.get("pid") or 0)'; }
# Both paths come up; the bench topic exists on both brokers before the first measurement.
ok=0
for _ in $(seq 100); do
  if produce direct bench >/dev/null 2>&1 && produce kafka bench >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.3
done
[ "$ok" = 1 ] || { echo "$0: the paths did not come up; kcat said:" >&2; tail -5 "$STATE/kcat.log" >&2; exit 1; }
PROXY_PID=$(proxy_pid)
[ "$PROXY_PID" != 0 ] || { echo "$0: no proxy runs" >&2; exit 1; }
HZ=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$PROXY_PID/stat"; }
# A denied topic is refused through the proxy (the rule is in force, not just L4).
if pin_client nsenter --net=/var/run/netns/"$RUN-client" kcat -b "$BROKER:9093" -P -t other \
  -l "$STATE/msgs" 2>"$STATE/denied.log" && ! grep -q "authorization" "$STATE/denied.log"; then
  echo "$0: producing to another topic through the proxy was not refused" >&2
  exit 1
fi

: >"$RESULTS"
for round in $(seq "$RUNS"); do
  echo "round $round of $RUNS..." >&2
  for p in direct kafka; do
    c0=$(cpu)
    s=$(produce "$p" bench)
    c1=$(cpu)
    echo "msgs $p $(python3 -c "print($MSGS / $s)")" >>"$RESULTS"
    echo "mbs $p $(python3 -c "print($MSGS * 1000 / $s / 1e6)")" >>"$RESULTS"
    echo "cpu $p $(python3 -c "print(($c1 - $c0) / $HZ / ($MSGS / 1000) * 1000)")" >>"$RESULTS"
  done
done

printf '\nKafka produce, %s messages of 1,000 bytes per measurement (kcat -l, acks=1); %s\n\n' "$MSGS" "$(pinning)"
summarize "$RESULTS" kafka direct "msgs:messages/s" "mbs:MB/s" "cpu:proxy CPU ms per 1,000 msgs"
