#!/usr/bin/env bash
# The relay's merge: three synthetic nodes at 100k flows/s each, followed through
# ciliate-relay, against following one node directly.
#
#   bench/relay.sh [--rate N] [--rounds N] [--secs N] [--quick] [--no-build]
#
#   --quick     checks that it works and cleans up: 2,000 flows/s per node, 2 rounds of 2 s, the
#               binaries already built (in $CILIATE_BIN_DIR, default target/release)
#
# The nodes are `ciliate-bench relay-node` (crates/bench/src/relay_load.rs): the agent's own
# observer ring and gRPC service on a unix socket, fed synthetic flows stamped with the time
# they were made and a per-node sequence number; the datapath is not involved, since what is
# measured is the relay's merge. `ciliate-bench relay-measure` follows GetFlows (--follow) on the relay
# or, for the baseline, on one node directly, and reports the delay from a flow's making to
# its arrival, flows received per second, flows lost (gaps in the sequences plus lost events)
# and flows out of time order. Paths are interleaved round by round; medians and spread.
# Goal: no loss, p99 added by the relay (relay p99 - direct p99) < 100 ms.
# Nodes and the measuring client are pinned to CPU 0, the relay to the last CPU (bench/lib.sh).
# Needs no root. Everything it makes is recorded and removed on exit. Prints numbers; never
# fails on them.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

RATE=100000
ROUNDS=5
SECS=10
NODES=3
BUILD=1
QUICK=0
usage() { echo "usage: $0 [--rate N] [--rounds N] [--secs N] [--quick] [--no-build]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) [ $# -ge 2 ] || usage; RATE=$2; shift 2 ;;
    --rounds) [ $# -ge 2 ] || usage; ROUNDS=$2; shift 2 ;;
    --secs) [ $# -ge 2 ] || usage; SECS=$2; shift 2 ;;
    --quick) QUICK=1; RATE=2000; ROUNDS=2; SECS=2; BUILD=0; shift ;;
    --no-build) BUILD=0; shift ;;
    *) usage ;;
  esac
done

[ "$BUILD" = 1 ] && cargo build --release -q -p ciliate-relay -p ciliate-bench --bins
BIN=${CILIATE_BIN_DIR:-$PWD/target/release}
LOAD=$BIN/ciliate-bench
trap cb_cleanup EXIT
trap "exit 130" INT TERM # so that a signal still cleans up

DIR=$(mktemp -d -t "$RUN-relay.XXXX")
track_path "$DIR"
PEERS=()
for i in $(seq 0 $((NODES - 1))); do
  taskset -c "$CLIENT_CPU" "$LOAD" relay-node --name "node$i" --socket "$DIR/node$i.sock" --rate "$RATE" >"$DIR/node$i.log" 2>&1 &
  track $!
  PEERS+=(--peer "node$i=unix://$DIR/node$i.sock")
done
for i in $(seq 0 $((NODES - 1))); do
  for _ in $(seq 100); do [ -S "$DIR/node$i.sock" ] && break; sleep 0.1; done
done
pin_server "$BIN/ciliate-relay" --listen-address "unix://$DIR/relay.sock" "${PEERS[@]}" >"$DIR/relay.log" 2>&1 &
track $!
for _ in $(seq 100); do [ -S "$DIR/relay.sock" ] && break; sleep 0.1; done
[ -S "$DIR/relay.sock" ] || { echo "the relay did not start:"; cat "$DIR/relay.log"; exit 1; }

printf 'Relay merge: %s nodes at %s flows/s each, followed for %s s per round (%s rounds)\n' \
  "$NODES" "$RATE" "$SECS" "$ROUNDS"
pinning
RES=$DIR/results
: >"$RES"
for r in $(seq "$ROUNDS"); do
  pin_client "$LOAD" relay-measure --server "unix://$DIR/relay.sock" --path relay --nodes "$NODES" \
    --secs "$SECS" --warmup 2 >>"$RES" || echo "(round $r: relay measurement failed)"
  pin_client "$LOAD" relay-measure --server "unix://$DIR/node0.sock" --path direct --nodes 1 \
    --secs "$SECS" --warmup 2 >>"$RES" || echo "(round $r: direct measurement failed)"
done
summarize "$RES" relay direct \
  "p50:delay p50, ms" "p99:delay p99, ms" "max:delay max, ms" \
  "rate:flows received/s" "lost:flows lost" "disorder:flows out of order"
python3 - "$RES" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m, p, v = line.split()
    rows.setdefault((m, p), []).append(float(v))
r, d = rows.get(("p99", "relay")), rows.get(("p99", "direct"))
if r and d:
    print(f"p99 added by the relay (median relay - median direct): "
          f"{statistics.median(r) - statistics.median(d):.1f} ms (goal < 100 ms)")
print(f"flows lost through the relay, all rounds: {sum(rows.get(('lost', 'relay'), [0])):.0f} (goal 0)")
PY
