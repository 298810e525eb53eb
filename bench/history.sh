#!/usr/bin/env bash
# The flow history (crates/observer/src/history): flows per second into it and bytes per flow
# on disk, the time to open it again (reading every block back), and a query with a pod filter
# (`--to-pod`, about 1 flow in 120) over all of it.
#
#   bench/history.sh [--flows N] [--rounds R] [--quick] [--no-build]
#
#   --flows N   flows per round (default 10,000,000)
#   --rounds R  rounds (default 3); medians and [min-max] are printed
#   --quick     checks that it works and cleans up: 50,000 flows, one round, the debug build of
#               the bench binary ($CILIATE_BIN_DIR/examples, built when missing)
#
# The flows are synthetic but made the way the agent makes them (see
# crates/observer/examples/history_bench.rs): datapath events of 300 pods (5 labels each) in 12
# namespaces turned into Hubble flows by the observer's own converter, with UUIDs, Ethernet
# addresses, Services, replies and drops. The whole process is pinned to one CPU (taskset), so
# producer, writer and query share one core. Two write rates are printed: wall-clock (what the
# machine gave it) and per CPU-second of the writer thread (what one core sustains).
# Everything it writes is under a cb<pid>-* directory, removed on exit. Prints numbers; never
# fails on them.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

FLOWS=10000000
ROUNDS=3
BUILD=1
QUICK=0
usage() { echo "usage: $0 [--flows N] [--rounds R] [--quick] [--no-build]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --flows) [ $# -ge 2 ] || usage; FLOWS=$2; shift 2 ;;
    --rounds) [ $# -ge 2 ] || usage; ROUNDS=$2; shift 2 ;;
    --quick) QUICK=1; FLOWS=50000; ROUNDS=1; BUILD=0; shift ;;
    --no-build) BUILD=0; shift ;;
    *) usage ;;
  esac
done

trap cb_cleanup EXIT
trap "exit 130" INT TERM # so that a signal still cleans up

if [ "$QUICK" = 1 ]; then
  BENCH=${CILIATE_BIN_DIR:-$PWD/target/debug}/examples/history_bench
  [ -x "$BENCH" ] || cargo build -q -p ciliate-observer --example history_bench
  [ -x "$BENCH" ] || BENCH=$PWD/target/debug/examples/history_bench
else
  [ "$BUILD" = 1 ] && cargo build -q --release -p ciliate-observer --example history_bench
  BENCH=$PWD/target/release/examples/history_bench
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/$RUN-history.XXXXXX")
track_path "$WORK"
RESULTS=$WORK/results
: >"$RESULTS"
pinning
echo "$FLOWS flows per round, $ROUNDS round(s), $(basename "$(dirname "$(dirname "$BENCH")")") build"
for r in $(seq 1 "$ROUNDS"); do
  dir=$WORK/round-$r
  pin_client "$BENCH" --dir "$dir" --flows "$FLOWS" | while read -r metric value; do
    echo "$metric history $value" >>"$RESULTS"
  done
  rm -rf "$dir"
done

python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m, _, v = line.split()
    rows.setdefault(m, []).append(float(v))
labels = [
    ("write_flows_per_s", "flows/s into history (wall)"),
    ("write_flows_per_cpu_s", "flows/s per writer CPU-second"),
    ("bytes_per_flow", "bytes per flow on disk"),
    ("reopen_s", "open again, s (reads all blocks)"),
    ("query_s", "query --to-pod over all, s"),
    ("query_cpu_s", "  its CPU time, s"),
    ("query_matched", "flows the query matched"),
]
for m, label in labels:
    v = rows.get(m, [])
    if not v:
        print(f"{label:36} -")
        continue
    fmt = "{:,.0f}" if statistics.median(v) >= 100 else "{:,.3f}"
    print(f"{label:36} {fmt.format(statistics.median(v)):>12} [{fmt.format(min(v))}-{fmt.format(max(v))}]")
print(f"({len(rows.get('query_s', []))} rounds; median [min-max])")
PY
