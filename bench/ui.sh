#!/usr/bin/env bash
# The service map's first paint at scale: `ciliate ui` following a synthetic flow source (a fake
# Observer: the agent's own ring and gRPC service on a unix socket, filled by
# `ciliate-ui-synthetic` with N workloads in namespaces of 50, each calling 3 others, every
# seventh call dropped, every fifth through a Service with an HTTP request), opened in headless
# Chromium (Debian's `chromium`). Per round, a fresh browser profile:
#   first paint  the page's own performance.now() when the first map is drawn and painted
#                (navigation start -> snapshot fetched, SVG built, frame painted), from the
#                console line it logs; "after page load" is the part from DOMContentLoaded
#                on (the page's own work, without the browser's cold start);
#   wall         from starting Chromium to that line (includes the browser's start);
#   snapshot     the server side alone: GET /api/snapshot (aggregation, layout, JSON) with curl.
# Goal (issue #14): first paint < 2 s with 1,000 workloads. No peer is measured: hubble-ui is
# not packaged and has no offline build here.
#
#   bench/ui.sh [--workloads N] [--rounds R] [--quick] [--no-build]
#
#   --quick     checks that it works and cleans up: 100 workloads, one round, the binaries
#               already built (in $CILIATE_BIN_DIR, default target/release)
#
# Chromium on CPU 0, the UI server on the last CPU (bench/lib.sh). Everything it makes is
# recorded and removed on exit. Prints numbers; never fails on them.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

WORKLOADS=1000
ROUNDS=5
BUILD=1
usage() { echo "usage: $0 [--workloads N] [--rounds R] [--quick] [--no-build]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --workloads) [ $# -ge 2 ] || usage; WORKLOADS=$2; shift 2 ;;
    --rounds) [ $# -ge 2 ] || usage; ROUNDS=$2; shift 2 ;;
    --quick) WORKLOADS=100; ROUNDS=1; BUILD=0; shift ;;
    --no-build) BUILD=0; shift ;;
    *) usage ;;
  esac
done
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] || { echo "$CHROMIUM is missing (apt-get install chromium; scripts/install-deps)" >&2; exit 1; }

[ "$BUILD" = 1 ] && cargo build --release -q -p ciliate-cli -p ciliate-ui --bins
BIN=${CILIATE_BIN_DIR:-$PWD/target/release}

# Chromium starts helper processes (zygote, renderer, GPU): it runs in a session of its own
# (setsid) and its whole process group, by that id, is stopped after each round.
CHROME_PGID=
stop_chromium() {
  if [ -n "$CHROME_PGID" ]; then
    kill -- "-$CHROME_PGID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 -- "-$CHROME_PGID" 2>/dev/null || break; sleep 0.1; done
    kill -9 -- "-$CHROME_PGID" 2>/dev/null || true
    wait "$CHROME_PGID" 2>/dev/null || true
    CHROME_PGID=
  fi
}
trap 'stop_chromium; cb_cleanup' EXIT
trap "exit 130" INT TERM

DIR=$(mktemp -d "/tmp/$RUN-ui.XXXXXX")
track_path "$DIR"
CALLS=3
FLOWS=$((WORKLOADS * CALLS))

pin_server "$BIN/ciliate-ui-synthetic" --socket "$DIR/hubble.sock" --workloads "$WORKLOADS" \
  --calls "$CALLS" >"$DIR/synthetic.log" 2>&1 &
track $!
for _ in $(seq 1 100); do grep -q ready "$DIR/synthetic.log" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$DIR/synthetic.log" || { echo "the synthetic source did not start:" >&2; cat "$DIR/synthetic.log" >&2; exit 1; }

pin_server "$BIN/ciliate" ui --hubble-socket "$DIR/hubble.sock" --address 127.0.0.1:0 \
  --flows $((FLOWS + 1000)) >"$DIR/ui.log" 2>&1 &
track $!
URL=
for _ in $(seq 1 100); do
  URL=$(grep -o 'http://[0-9.:]*/' "$DIR/ui.log" 2>/dev/null | head -1 || true)
  [ -n "$URL" ] && break
  sleep 0.1
done
[ -n "$URL" ] || { echo "ciliate ui did not start:" >&2; cat "$DIR/ui.log" >&2; exit 1; }
# Every synthetic flow in the UI's store before the browser comes.
for _ in $(seq 1 300); do
  got=$(curl -s "${URL}api/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["received"])' 2>/dev/null || echo 0)
  [ "$got" -ge "$FLOWS" ] && break
  sleep 0.1
done
SHAPE=$(curl -s "${URL}api/snapshot?limit=1" | python3 -c '
import json, sys
g = json.load(sys.stdin)["graph"]
workloads = sum(n["kind"] == "workload" for n in g["nodes"])
print("%d boxes (%d workloads), %d connections, %d namespaces, %d flows"
      % (len(g["nodes"]), workloads, len(g["edges"]), len(g["areas"]), g["flows"]))')

printf '\nService map of %s synthetic workloads: %s\n' "$WORKLOADS" "$SHAPE"
pinning
RESULTS="$DIR/results"
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  # Server side: the snapshot the page fetches first.
  t=$(curl -s -o /dev/null -w '%{time_total}' "${URL}api/snapshot")
  echo "snapshot ui $(python3 -c "print($t * 1000)")" >>"$RESULTS"
  PROFILE="$DIR/profile$round"
  mkdir -p "$PROFILE"
  start=$(date +%s%N)
  setsid taskset -c "$CLIENT_CPU" "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run \
    --user-data-dir="$PROFILE" --window-size=1600,1000 --enable-logging=stderr --v=0 \
    --remote-debugging-port=0 "$URL" 2>"$DIR/chromium$round.log" >/dev/null &
  CHROME_PGID=$!
  line=
  for _ in $(seq 1 600); do
    line=$(grep -o 'ciliate-ui first paint [0-9.]* ms[^"]*' "$DIR/chromium$round.log" 2>/dev/null | head -1 || true)
    [ -n "$line" ] && break
    sleep 0.05
  done
  end=$(date +%s%N)
  stop_chromium
  if [ -z "$line" ]; then
    echo "round $round: no first paint within 30 s" >&2
    tail -5 "$DIR/chromium$round.log" >&2
    continue
  fi
  ms=$(echo "$line" | awk '{print $4}')
  loaded=$(echo "$line" | sed -n 's/.*page loaded \([0-9]*\) ms.*/\1/p')
  echo "first_paint ui $ms" >>"$RESULTS"
  [ -n "$loaded" ] && echo "page_work ui $(python3 -c "print($ms - $loaded)")" >>"$RESULTS"
  echo "wall ui $(( (end - start) / 1000000 ))" >>"$RESULTS"
  echo "round $round: $line"
done

python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m, _, v = line.split()
    rows.setdefault(m, []).append(float(v))
labels = {"first_paint": "first paint (page, ms)",
          "page_work": "  of which after page load (ms)",
          "wall": "Chromium start to paint (ms)", "snapshot": "GET /api/snapshot (ms)"}
print(f"{'':32} {'median [min-max]':>26}  rounds")
for m in ["first_paint", "page_work", "wall", "snapshot"]:
    v = rows.get(m, [])
    cell = f"{statistics.median(v):,.0f} [{min(v):,.0f}-{max(v):,.0f}]" if v else "-"
    print(f"{labels[m]:32} {cell:>26}  {len(v)}")
print("goal: first paint < 2,000 ms at 1,000 workloads")
PY
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
