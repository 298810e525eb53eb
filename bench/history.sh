#!/usr/bin/env bash
# The flow history (crates/observer/src/history): flows per second into it and bytes per flow
# on disk, the time to open it again (reading every block back), and a query with a pod filter
# (`--to-pod`, about 1 flow in 120) over all of it.
#
#   bench/history.sh [--flows N] [--rounds R] [--records] [--old-bin FILE] [--quick] [--no-build]
#
#   --flows N   flows per round (default 10,000,000)
#   --rounds R  rounds (default 3); medians and [min-max] are printed
#   --records   hand the history datapath events as the agent's ring keeps them (records whose
#               flows the writer builds) instead of flows built beforehand (an --old-bin must
#               know the flag too)
#   --old-bin FILE  another build of history_bench (e.g. of an older commit), run round by
#               round interleaved with this one and reported beside it
#   --quick     checks that it works and cleans up: 50,000 flows, one round, the debug build of
#               the bench binary ($CILIATE_BIN_DIR/examples, built when missing)
#
# The flows are synthetic but made the way the agent makes them (see
# crates/observer/examples/history_bench.rs): datapath events of 300 pods (5 labels each) in 12
# namespaces turned into Hubble flows by the observer's own converter, with UUIDs, Ethernet
# addresses, Services, replies and drops. The whole process is pinned to one CPU (taskset), so
# producer, writer and query share one core; the query then runs again unpinned (two reading
# threads where the machine has four CPUs or more, else one). Two write rates are printed: wall-clock (what the
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
OLD_BIN=
RECORDS=
usage() { echo "usage: $0 [--flows N] [--rounds R] [--records] [--old-bin FILE] [--quick] [--no-build]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --flows) [ $# -ge 2 ] || usage; FLOWS=$2; shift 2 ;;
    --rounds) [ $# -ge 2 ] || usage; ROUNDS=$2; shift 2 ;;
    --old-bin) [ $# -ge 2 ] || usage; OLD_BIN=$2; shift 2 ;;
    --records) RECORDS=--records; shift ;;
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
[ -z "$OLD_BIN" ] || [ -x "$OLD_BIN" ] || { echo "--old-bin $OLD_BIN: not an executable" >&2; exit 2; }
for r in $(seq 1 "$ROUNDS"); do
  for build in new ${OLD_BIN:+old}; do
    bin=$BENCH
    [ "$build" = old ] && bin=$OLD_BIN
    dir=$WORK/round-$r-$build
    pin_client "$bin" --dir "$dir" --flows "$FLOWS" $RECORDS | while read -r metric value; do
      echo "$metric $build $value" >>"$RESULTS"
    done
    # The query again, unpinned: with four CPUs or more it reads blocks on two threads (builds
    # that cannot run the query alone print nothing).
    "$bin" --dir "$dir" --query-only 2>/dev/null | while read -r metric value; do
      echo "$metric $build $value" >>"$RESULTS"
    done || true
    rm -rf "$dir"
  done
done

python3 - "$RESULTS" "${OLD_BIN:+1}" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m, build, v = line.split()
    rows.setdefault((m, build), []).append(float(v))
builds = ["new", "old"] if sys.argv[2] else ["new"]
labels = [
    ("write_flows_per_s", "flows/s into history (wall)"),
    ("write_flows_per_cpu_s", "flows/s per writer CPU-second"),
    ("bytes_per_flow", "bytes per flow on disk"),
    ("reopen_s", "open again, s (reads all blocks)"),
    ("query_s", "query --to-pod over all, s"),
    ("query_cpu_s", "  its CPU time, s"),
    ("query_2cpu_s", "the query unpinned, 2 CPUs, s"),
    ("query_2cpu_cpu_s", "  its CPU time, s"),
    ("query_matched", "flows the query matched"),
]
if len(builds) > 1:
    print(f"{'':36} {'this build':>30} {'--old-bin':>30}")
for m, label in labels:
    cells = []
    for b in builds:
        v = rows.get((m, b), [])
        if not v:
            cells.append(f"{'-':>30}")
            continue
        fmt = "{:,.0f}" if statistics.median(v) >= 100 else "{:,.3f}"
        cell = f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))}-{fmt.format(max(v))}]"
        cells.append(f"{cell:>30}")
    print(f"{label:36} {' '.join(cells)}")
print(f"({len(rows.get(('query_s', 'new'), []))} rounds; median [min-max])")
PY
