#!/usr/bin/env bash
# DNS queries per second and latency through Ciliate's DNS proxy (issue #13) against the same
# queries sent straight to the resolver, in one run. Paths, each from a client pod to a resolver
# pod (a real dnsmasq) on one node:
#
#   direct  node X, no policy: the client's queries go straight to the resolver pod
#   proxy   node Y, the client's egress allows UDP 53 to the resolver with `rules.dns`
#           (`matchPattern: "*"`): the datapath hands every query to ciliate-proxy, which
#           checks it, forwards it to the resolver, and reports the answer to the agent
#
# Node X and node Y are two agents in two node namespaces built alike (pods by the CNI plugin),
# measured in interleaved rounds. Load: dnsperf (Debian's package) over UDP, 4 clients, 200
# queries outstanding, names n1..n100 under bench.test (each answered with two A records,
# TTL 300). Fixed rate: `-Q 10000`, with every query's latency (`-v`) for p50/p99; maximum
# rate: no limit. A path that loses more than 1% of its queries at the fixed rate is said so.
# At the fixed rate it also reads the CPU time (utime+stime) of node Y's ciliate-proxy and agent
# per answered query: less moved by other load on the machine than the latencies. With
# CILIATE_DNS_TIMINGS=<file> in its environment (the agent passes it to the proxy) it also prints
# the proxy's per-segment histograms (crates/proxy/src/dns/timing.rs) of the fixed-rate phases.
#
# --names N then measures learning: node Y's policy also has `toFQDNs: *.names.test`, and its
# resolver answers N names under names.test, each with an address of its own. dnsperf asks each
# once (at 2,000 q/s); the result is the agent's and the proxy's RSS before and after (N names
# learned, each in the policy maps) and the agent's CPU time per learned address.
#
#   sudo bench/dns.sh [--secs N] [--runs N] [--rate Q] [--paths direct,proxy] [--names N] [--layout bench|node] [--quick] [--no-build]
#
#   --secs N     seconds per measurement (default 10)
#   --runs N     rounds, interleaved (default 5)
#   --rate Q     the fixed rate, queries per second (default 10000)
#   --paths P    which paths to measure (default direct,proxy)
#   --names N    also learn N names (default 0: not measured; --quick learns 50)
#   --layout L   bench (default): everything in the bench's scheduling group; node: each agent
#                (with its proxy) and each pod (resolver, client) in a cpu cgroup of its own,
#                as on a node, where the pods do not share the agent's group (lib.sh, cg_init)
#   --quick      checks that it works and cleans up: 1 s, 1 round, the binaries already built
#                (in $CILIATE_BIN_DIR, default target/release)
#   --no-build   do not run `cargo build --release` first
#
# Needs root, dnsperf and dnsmasq (apt-get install dnsperf dnsmasq-base, or
# scripts/install-deps; a missing one is an error, never a skip). dnsperf is pinned to CPU 0,
# dnsmasq to the last CPU; ciliate-proxy and the agents run unpinned, as in production.
# Everything it makes is named cb<pid>-*, recorded, and removed on exit; the proxy runs in a
# process group of its own and outlives its agent, so cleanup also stops every process left in
# this run's node namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SECS=10
RUNS=5
BUILD=1
RATE=10000
PATHS=direct,proxy
NAMES=0
LAYOUT=bench
usage() { echo "usage: $0 [--secs N] [--runs N] [--rate Q] [--paths direct,proxy] [--names N] [--layout bench|node] [--quick] [--no-build]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) [ $# -ge 2 ] || usage; SECS=$2; shift 2 ;;
    --runs) [ $# -ge 2 ] || usage; RUNS=$2; shift 2 ;;
    --rate) [ $# -ge 2 ] || usage; RATE=$2; shift 2 ;;
    --paths) [ $# -ge 2 ] || usage; PATHS=$2; shift 2 ;;
    --names) [ $# -ge 2 ] || usage; NAMES=$2; shift 2 ;;
    --layout) [ $# -ge 2 ] || usage; LAYOUT=$2; shift 2 ;;
    --quick) SECS=1; RUNS=1; BUILD=0; NAMES=50; shift ;;
    --no-build) BUILD=0; shift ;;
    *) usage ;;
  esac
done
[[ "$NAMES" =~ ^[0-9]+$ ]] && [ "$NAMES" -le 60000 ] || { echo "$0: --names $NAMES: expected 0..60000" >&2; exit 2; }
case "$LAYOUT" in bench|node) ;; *) echo "$0: --layout $LAYOUT: expected bench or node" >&2; exit 2 ;; esac
IFS=, read -r -a PATH_LIST <<<"$PATHS"
for p in "${PATH_LIST[@]}"; do
  case "$p" in direct|proxy) ;; *) echo "$0: --paths $PATHS: expected direct and/or proxy" >&2; exit 2 ;; esac
done
command -v dnsperf >/dev/null || { echo "$0: dnsperf is not installed (apt-get install -y dnsperf)" >&2; exit 1; }
DNSMASQ=/usr/sbin/dnsmasq
[ -x "$DNSMASQ" ] || { echo "$0: dnsmasq is not installed (apt-get install -y dnsmasq-base)" >&2; exit 1; }

[ "$BUILD" = 1 ] && cargo build --release --bins -q
BIN=${CILIATE_BIN_DIR:-$PWD/target/release}
nodes_init
[ "$LAYOUT" = bench ] || cg_init

node x 10.252.0.0/24 10.252.255.1 --hubble-socket "$STATE/x/hubble.sock"
node y 10.252.4.0/24 10.252.255.2 --hubble-socket "$STATE/y/hubble.sock"
for n in x y; do for p in dns client; do mkns "$RUN-$n-$p"; cg_make "$n-$p"; done; done
X_DNS=$(pod x dns app=dns)
pod x client app=client >/dev/null
Y_DNS=$(pod y dns app=dns)
pod y client app=client >/dev/null

# The resolver: dnsmasq answering every name under bench.test from its configuration (no
# upstream, nothing of the host's), on the pod's address.
for n in x y; do
  ip=X_DNS
  [ "$n" = y ] && ip=Y_DNS
  cat >"$STATE/dnsmasq-$n.conf" <<CONF
no-resolv
no-hosts
no-poll
listen-address=${!ip}
bind-interfaces
local-ttl=300
local=/#/
address=/bench.test/192.0.2.10
address=/bench.test/192.0.2.11
cache-size=10000
CONF
  if [ "$n" = y ] && [ "$NAMES" -gt 0 ]; then
    python3 - "$NAMES" >>"$STATE/dnsmasq-$n.conf" <<'PY'
import sys
for i in range(int(sys.argv[1])):
    print(f"address=/m{i}.names.test/10.{200 + i // 65536}.{i // 256 % 256}.{i % 256}")
PY
  fi
  {
    cg_enter "$n-dns"
    pin_server nsenter --net=/var/run/netns/"$RUN-$n-dns" "$DNSMASQ" --keep-in-foreground \
      --conf-file="$STATE/dnsmasq-$n.conf" --pid-file= --user=root --log-facility=-
  } >"$STATE/dnsmasq-$n.log" 2>&1 &
  track $!
done
for i in $(seq 100); do echo "n$i.bench.test A"; done >"$STATE/queries"

cat >"$STATE/y/dns.yaml" <<'YAML'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules:
        dns: [{matchPattern: "*"}]
  - toFQDNs: [{matchPattern: "*.names.test"}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
YAML
"$BIN/ciliate" --socket "$SOCK_y" apply -f "$STATE/y/dns.yaml" >/dev/null

# dst: path -> "client-namespace resolver-ip"
declare -A DST=(
  [direct]="$RUN-x-client $X_DNS"
  [proxy]="$RUN-y-client $Y_DNS"
)
perf() { # path secs extra-args...: dnsperf's output
  local p=$1 secs=$2; shift 2
  read -r ns ip <<<"${DST[$p]}"
  (
    cg_enter "${ns#"$RUN"-}"
    pin_client nsenter --net=/var/run/netns/"$ns" dnsperf -s "$ip" -d "$STATE/queries" \
      -l "$secs" -c 4 -q 200 -t 2 "$@" 2>&1
  )
}
# dnsperf's output -> "qps sent completed lost p50_us p99_us" (latencies from -v lines, else -)
parse() {
  python3 -c '
import re, statistics, sys
t = sys.stdin.read()
def num(pat):
    m = re.search(pat, t)
    return float(m.group(1)) if m else 0.0
lat = sorted(float(x) * 1e6 for x in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", t, re.M))
def q(p):
    return f"{lat[min(len(lat) - 1, int(p * len(lat)))]:.1f}" if lat else "-"
print(num(r"Queries per second:\s+([\d.]+)"), int(num(r"Queries sent:\s+(\d+)")),
      int(num(r"Queries completed:\s+(\d+)")), int(num(r"Queries lost:\s+(\d+)")), q(0.5), q(0.99))'
}

# CPU seconds (utime+stime) of a process; node Y's proxy and agent.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }
proxy_pid() {
  local pid
  for pid in $(ip netns pids "$RUN-y"); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = ciliate-proxy ] && { echo "$pid"; return; }
  done
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# Every path answers, and each goes where it should: the proxied one through the DNS proxy
# (its queries become DNS flows in node Y's observer), the direct one not.
dns_flows() { # node: DNS flows its observer holds
  "$BIN/ciliate" observe --hubble-socket "$STATE/$1/hubble.sock" --protocol dns --last 100000 -o json 2>/dev/null |
    grep -c '"dns"' || true
}
ready() {
  local p out
  for _ in $(seq 100); do
    ok=1
    for p in "${PATH_LIST[@]}"; do
      read -r _ _ answered _ _ _ <<<"$(perf "$p" 0.3 -Q 100 | parse)" || { ok=0; break; }
      [ "$answered" -gt 0 ] || { ok=0; break; }
    done
    [ "$ok" = 1 ] && return 0
    sleep 0.2
  done
  echo "$0: path $p does not answer; dnsperf said: $(perf "$p" 0.3 -Q 100 | tail -20)" >&2
  return 1
}
ready
for p in "${PATH_LIST[@]}"; do
  case "$p" in
    proxy)
      [ "$(dns_flows y)" -gt 0 ] || { echo "$0: the proxied path's queries are not in node Y's DNS flows: not through the DNS proxy" >&2; exit 1; } ;;
    direct)
      [ "$(dns_flows x)" = 0 ] || { echo "$0: the direct path went through a DNS proxy" >&2; exit 1; } ;;
  esac
done

# With CILIATE_DNS_TIMINGS=<file> (the proxy's per-segment histograms, crates/proxy/src/dns/
# timing.rs, cumulative and rewritten every second), the proxy's fixed-rate phases alone: the
# file before and after each (a second's wait each side for the proxy's next write), summed.
TIMINGS=${CILIATE_DNS_TIMINGS:-}
timings_snap() { # before|after
  [ -n "$TIMINGS" ] || return 0
  sleep 1.2
  cp "$TIMINGS" "$STATE/timings-$1" 2>/dev/null || : >"$STATE/timings-$1"
  [ "$1" = after ] || return 0
  python3 - "$STATE/timings-before" "$STATE/timings-after" "$STATE/timings-fixed" <<'PY'
import os, sys
def rows(path):
    out = {}
    for line in open(path) if os.path.exists(path) else []:
        f = line.split()
        if f and f[0] != "segment":
            out[f[0]] = [int(x) for x in f[1:17] if x.isdigit()]
    return out
before, after, acc = rows(sys.argv[1]), rows(sys.argv[2]), rows(sys.argv[3])
with open(sys.argv[3], "w") as o:
    for seg, counts in after.items():
        b = before.get(seg, [0] * len(counts))
        a = acc.get(seg, [0] * len(counts))
        print(seg, *(x - y + z for x, y, z in zip(counts, b, a)), file=o)
PY
}
timings_report() {
  [ -n "$TIMINGS" ] && [ -s "$STATE/timings-fixed" ] || return 0
  printf 'The proxy'"'"'s segments in the %s q/s phases only (CILIATE_DNS_TIMINGS), queries per bucket:\n' "$RATE"
  python3 - "$STATE/timings-fixed" <<'PY'
import sys
bounds = [5, 10, 20, 50, 100, 200, 300, 500, 1000, 2000, 3000, 5000, 10000, 20000, 50000, None]
print(f"{'segment':12}" + "".join(f"{'<=' + str(b) if b else '>50000':>8}" for b in bounds) + f"{'p50':>8}{'p99':>8}{'p99.9':>8}")
for line in open(sys.argv[1]):
    seg, *c = line.split()
    c = [int(x) for x in c]
    if seg == "held":
        print(f"held (answers that waited for the agent): {c[0]}")
        continue
    if seg == "rt-demotions":
        print(f"rt-demotions (10 ms windows in which the DNS thread used its real-time budget up): {c[0]}")
        continue
    total = sum(c)
    def q(p):
        run = 0
        for n, b in zip(c, bounds):
            run += n
            if total and run >= p * total:
                return f"<={b}" if b else ">50000"
        return "-"
    print(f"{seg:12}" + "".join(f"{n:>8}" for n in c) + f"{q(0.5):>8}{q(0.99):>8}{q(0.999):>8}")
PY
}

: >"$RESULTS"
for round in $(seq "$RUNS"); do
  echo "round $round of $RUNS..." >&2
  for p in "${PATH_LIST[@]}"; do
    ppid=$(proxy_pid)
    c0_proxy=$(cpu_s "$ppid"); c0_agent=$(cpu_s "${AGENTS[1]}")
    [ "$p" = proxy ] && timings_snap before
    out=$(perf "$p" "$SECS" -Q "$RATE" -v)
    c1_proxy=$(cpu_s "$ppid"); c1_agent=$(cpu_s "${AGENTS[1]}")
    [ "$p" = proxy ] && timings_snap after
    read -r qps sent done lost p50 p99 <<<"$(parse <<<"$out")"
    if [ "$p" = proxy ]; then
      echo "proxy-cpu $p $(python3 -c "print(1e6 * ($c1_proxy - $c0_proxy) / max($done, 1))")" >>"$RESULTS"
      echo "agent-cpu $p $(python3 -c "print(1e6 * ($c1_agent - $c0_agent) / max($done, 1))")" >>"$RESULTS"
    fi
    echo "fixed-rate $p $qps" >>"$RESULTS"
    echo "fixed-p50 $p $p50" >>"$RESULTS"
    echo "fixed-p99 $p $p99" >>"$RESULTS"
    echo "fixed-lost $p $(python3 -c "print(100 * $lost / max($sent, 1))")" >>"$RESULTS"
  done
  for p in "${PATH_LIST[@]}"; do
    read -r qps sent _ lost _ _ <<<"$(perf "$p" "$SECS" | parse)"
    echo "max $p $qps" >>"$RESULTS"
    echo "max-lost $p $(python3 -c "print(100 * $lost / max($sent, 1))")" >>"$RESULTS"
  done
done

printf '\nDNS over UDP, dnsperf -c 4 -q 200, 100 names (2 A records each), %s s per measurement; %s; layout %s\n' "$SECS" "$(pinning)" "$(cg_layout)"
printf 'fixed rate: -Q %s with every latency (-v); max rate: no limit\n\n' "$RATE"
python3 - "$RESULTS" "$RATE" <<'PY'
import statistics, sys
path, rate = sys.argv[1], int(sys.argv[2])
rows = {}
for line in open(path):
    m, p, v = line.split()
    if v != "-":
        rows.setdefault((m, p), []).append(float(v))
paths = [p for p in ["direct", "proxy"] if any(k[1] == p for k in rows)]
def med(m, p):
    v = rows.get((m, p))
    return statistics.median(v) if v else None
def cell(m, p, fmt="{:,.0f}"):
    v = rows.get((m, p))
    if not v:
        return "-"
    return f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))}-{fmt.format(max(v))}]"
w = 28
print(f"{'median [min-max]':34}" + "".join(f"{p:>{w}}" for p in paths))
for m, label, fmt in [("fixed-rate", f"{rate:,} q/s: answered q/s", "{:,.0f}"),
                      ("fixed-p50", f"{rate:,} q/s: p50 us", "{:,.0f}"),
                      ("fixed-p99", f"{rate:,} q/s: p99 us", "{:,.0f}"),
                      ("fixed-lost", f"{rate:,} q/s: lost %", "{:.2f}"),
                      ("proxy-cpu", f"{rate:,} q/s: proxy CPU us/query", "{:.1f}"),
                      ("agent-cpu", f"{rate:,} q/s: agent CPU us/query", "{:.1f}"),
                      ("max", "max q/s", "{:,.0f}"),
                      ("max-lost", "max rate: lost %", "{:.2f}")]:
    print(f"{label:34}" + "".join(f"{cell(m, p, fmt):>{w}}" for p in paths))
print(f"({len(rows.get(('max', paths[0]), [])) if paths else 0} rounds, interleaved in the order above)\n")
for p in paths:
    lost = med("fixed-lost", p)
    if lost is not None and lost > 1:
        print(f"NOTE: {p} lost {lost:.1f}% of its queries at {rate:,} q/s: it cannot keep that rate")
if "direct" in paths and "proxy" in paths:
    def r(a, b):
        return f"{a / b:.2f}" if a is not None and b else "-"
    def d(a, b):
        return f"{(a - b) / 1000:+.3f}" if a is not None and b is not None else "-"
    print(f"{'proxy vs direct (medians)':44}{'value':>10}   goal")
    print(f"{'answered q/s at the fixed rate, ratio':44}{r(med('fixed-rate', 'proxy'), med('fixed-rate', 'direct')):>10}   >= 0.9")
    print(f"{'added p99 at the fixed rate, ms':44}{d(med('fixed-p99', 'proxy'), med('fixed-p99', 'direct')):>10}   <= 0.3")
    print(f"{'added p50 at the fixed rate, ms':44}{d(med('fixed-p50', 'proxy'), med('fixed-p50', 'direct')):>10}")
    print(f"{'max q/s, ratio':44}{r(med('max', 'proxy'), med('max', 'direct')):>10}")
PY
timings_report

[ "$NAMES" -gt 0 ] || exit 0
# Learning N names: each asked once through the proxy; the agent learns each address and puts
# it in node Y's policy maps (toFQDNs) before the answer goes to the pod.
python3 -c "import sys
for i in range(int(sys.argv[1])): print(f'm{i}.names.test A')" "$NAMES" >"$STATE/names"
fqdn_names() { "$BIN/ciliate" --socket "$SOCK_y" fqdn cache list -o json 2>/dev/null |
  python3 -c 'import json,sys; print(len({e["name"] for e in json.load(sys.stdin) if e["name"].endswith("names.test.")}))' 2>/dev/null || echo 0; }
ppid=$(proxy_pid)
agent=${AGENTS[1]}
r0_agent=$(rss_kb "$agent"); r0_proxy=$(rss_kb "$ppid")
c0_agent=$(cpu_s "$agent"); c0_proxy=$(cpu_s "$ppid")
t0=$(date +%s.%N)
read -r ns ip <<<"${DST[proxy]}"
pin_client nsenter --net=/var/run/netns/"$ns" dnsperf -s "$ip" -d "$STATE/names" -n 1 -Q 2000 \
  -c 4 -q 100 -t 5 >"$STATE/names.out" 2>&1
learned=0
for _ in $(seq 120); do
  learned=$(fqdn_names)
  [ "$learned" -ge "$NAMES" ] && break
  sleep 0.5
done
c1_agent=$(cpu_s "$agent"); c1_proxy=$(cpu_s "$ppid")
r1_agent=$(rss_kb "$agent"); r1_proxy=$(rss_kb "$ppid")
t1=$(date +%s.%N)
# And once the burst is over: the agent gives its free memory back after a second without
# answers to learn (the temporaries of each batch's policy computation).
sleep 3
r2_agent=$(rss_kb "$agent"); r2_proxy=$(rss_kb "$ppid")
read -r _ sent done lost _ _ <<<"$(parse <"$STATE/names.out")"
printf '\nLearning %s names (each asked once at 2,000 q/s, %s answered, %s lost): %s learned in %.1f s; load %s\n' \
  "$NAMES" "$done" "$lost" "$learned" "$(python3 -c "print($t1 - $t0)")" "$(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$NAMES" "$learned" "$r0_agent" "$r1_agent" "$r0_proxy" "$r1_proxy" "$c0_agent" "$c1_agent" "$c0_proxy" "$c1_proxy" "$r2_agent" "$r2_proxy" <<'PY'
import sys
n, learned, ra0, ra1, rp0, rp1 = (int(x) for x in sys.argv[1:7])
ca0, ca1, cp0, cp1 = (float(x) for x in sys.argv[7:11])
ra2, rp2 = (int(x) for x in sys.argv[11:13])
print(f"agent RSS   {ra0 / 1024:8.1f} -> {ra1 / 1024:8.1f} MB  ({(ra1 - ra0) / 1024:+.1f} MB) at the end of the burst, {ra2 / 1024:.1f} MB ({(ra2 - ra0) / 1024:+.1f} MB) 3 s later")
print(f"proxy RSS   {rp0 / 1024:8.1f} -> {rp1 / 1024:8.1f} MB  ({(rp1 - rp0) / 1024:+.1f} MB) at the end of the burst, {rp2 / 1024:.1f} MB ({(rp2 - rp0) / 1024:+.1f} MB) 3 s later")
print(f"together    {(ra2 - ra0 + rp2 - rp0) / 1024:+.1f} MB for {learned:,} names 3 s after the burst (goal <= +20 MB for 10,000)")
per = max(learned, 1)
print(f"agent CPU   {1e3 * (ca1 - ca0) / per:.3f} ms per learned name ({ca1 - ca0:.2f} s)")
print(f"proxy CPU   {1e3 * (cp1 - cp0) / per:.3f} ms per learned name ({cp1 - cp0:.2f} s)")
if learned < n:
    print(f"NOTE: only {learned:,} of {n:,} names were learned")
    sys.exit(1)
PY
