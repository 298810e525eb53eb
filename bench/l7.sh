#!/usr/bin/env bash
# HTTP/1.1 keep-alive requests with 1 KB responses through Ciliate's L7 proxy (issue #12), in one
# run, as ratios against (a) the direct pod-to-pod path with no policy and (d) nginx as a
# reverse proxy in the same spot (the node's network namespace). Paths, all from a client pod
# to a server pod on one node:
#
#   direct     node X, no policy: the client straight to the server pod, port 8000
#   http-rule  node Y, the server's ingress allows port 8001 with an HTTP rule (GET /.*): the
#              datapath hands the connection to ciliate-proxy, which checks every request
#   allow-all  node Y, port 8002: the client is allowed at L4 only, but the port has HTTP rules
#              for another peer, so the client is redirected too and may send any request
#   nginx      node X: the client to nginx (Debian's package) listening in the node namespace,
#              which proxies to the server pod over keep-alive upstream connections
#   l4         node Y, port 8000: allowed at L4 only, never redirected, with the proxy running
#              (compared with direct: "L4-only connections keep their rate")
#
# Node X and node Y are two agents in two node namespaces built alike (pods by the CNI plugin),
# measured in interleaved rounds. Maximum rate: wrk (Debian's package), 1 thread, 16 connections.
# Fixed rate (1,000 req/s over 4 connections): `ciliate-bench http --rate` (wrk2 is not in
# Debian), latency counted from when each request was due. Proxy CPU: user + system time of
# ciliate-proxy (and of nginx's master and workers, for comparison) from /proc/<pid>/stat over
# each fixed-rate measurement, and the context switches of their threads per request
# (/proc/<pid>/task/*/status); RSS: VmRSS / VmHWM. At the maximum rate, the CPU time per
# request of the proxy (nginx) and of the agent: on two CPUs shared by the client, the server,
# the proxy and the agent, the rate is made of these, and unlike the rate they hardly move with
# the machine's other load. Within each round, nginx's maximum is measured
# right before or after ours (alternating), and the ratio of each such pair is reported as well
# as the ratio of the medians: the load of a shared machine drifts between rounds more than
# within one.
#
#   sudo bench/l7.sh [--secs N] [--runs N] [--quick] [--no-build]
#
#   --secs N    seconds per measurement (default 10)
#   --runs N    rounds, interleaved (default 5)
#   --quick     checks that it works and cleans up: 1 s, 1 round, the binaries already built
#               (in $CILIATE_BIN_DIR, default target/release)
#   --no-build  do not run `cargo build --release` first
#
# Needs root, wrk and nginx (apt-get install wrk nginx; a missing one is an error, never a
# skip). The client (wrk or ciliate-bench) is pinned to CPU 0, the server to the last CPU;
# ciliate-proxy, nginx and the agents run unpinned, as in production. Everything it makes is
# named cb<pid>-*, recorded, and removed on exit; the proxy runs in a process group of its own
# and outlives its agent, so cleanup also stops every process left in this run's node namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SECS=10
RUNS=5
BUILD=1
RATE=1000
usage() { echo "usage: $0 [--secs N] [--runs N] [--quick] [--no-build]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) [ $# -ge 2 ] || usage; SECS=$2; shift 2 ;;
    --runs) [ $# -ge 2 ] || usage; RUNS=$2; shift 2 ;;
    --quick) SECS=1; RUNS=1; BUILD=0; shift ;;
    --no-build) BUILD=0; shift ;;
    *) usage ;;
  esac
done
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || PATH=$PATH:/usr/sbin command -v "$tool" >/dev/null || {
    echo "$0: $tool is not installed (apt-get install -y wrk nginx)" >&2
    exit 1
  }
done
NGINX=$(PATH=$PATH:/usr/sbin command -v nginx)

[ "$BUILD" = 1 ] && cargo build --release --bins -q
BIN=${CILIATE_BIN_DIR:-$PWD/target/release}
nodes_init

node x 10.251.0.0/24 192.0.2.1
node y 10.251.4.0/24 192.0.2.1
for n in x y; do for p in web client; do mkns "$RUN-$n-$p"; done; done
X_WEB=$(pod x web app=web)
pod x client app=client >/dev/null
Y_WEB=$(pod y web app=web)
pod y client app=client >/dev/null

for n in x y; do
  pin_server nsenter --net=/var/run/netns/"$RUN-$n-web" "$BIN/ciliate-bench" http-server \
    --port 8000 --port 8001 --port 8002 --body 1024 >"$STATE/server-$n.log" 2>&1 &
  track $!
done

cat >"$STATE/y/l7.yaml" <<'YAML'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8001", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/.*"}]
    - ports: [{port: "8000", protocol: TCP}, {port: "8002", protocol: TCP}]
  # Port 8002 also has an HTTP rule for every endpoint, so the whole port goes to the proxy;
  # the client, allowed there at L4 by the rule above, may send any request through it.
  - fromEndpoints: [{}]
    toPorts:
    - ports: [{port: "8002", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/never"}]
YAML
"$BIN/ciliate" --socket "$SOCK_y" apply -f "$STATE/y/l7.yaml" >/dev/null

# nginx in node X's namespace, as our proxy sits in node Y's: same hops (client pod -> node
# namespace -> server pod), one keep-alive connection on each side, as many workers as
# ciliate-proxy has threads (2), no access log (ours keeps no log either; it counts requests).
# keepalive_requests: nginx closes a keep-alive connection after 1,000 requests by default (on
# both sides), which our proxy never does; the client then counted an error and reconnected.
# reuseport: a socket per worker, so that wrk's burst of 16 connections is spread over both
# workers; on the shared socket one worker sometimes took all 16 (its CPU 44 ticks vs 0), and
# nginx's maximum swung 3,500-16,600 req/s between neighbouring rounds with it.
mkdir -p "$STATE/nginx"
cat >"$STATE/nginx/nginx.conf" <<NGX
worker_processes 2;
daemon off;
pid $STATE/nginx/nginx.pid;
error_log $STATE/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $STATE/nginx/body;
  proxy_temp_path $STATE/nginx/proxy;
  fastcgi_temp_path $STATE/nginx/fastcgi;
  uwsgi_temp_path $STATE/nginx/uwsgi;
  scgi_temp_path $STATE/nginx/scgi;
  upstream web { server $X_WEB:8000; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 192.0.2.1:8080 reuseport;
    location / {
      proxy_pass http://web;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGX
nsenter --net=/var/run/netns/"$RUN-x" "$NGINX" -p "$STATE/nginx" -c "$STATE/nginx/nginx.conf" \
  >"$STATE/nginx/out.log" 2>&1 &
track $!
disown $!
NGINX_PID=$!
# nginx's CPU time (master and workers), for the same cores-per-1,000-req/s as the proxy's.
nginx_cpu_ticks() {
  local t=0 pid
  for pid in $NGINX_PID $(pgrep -P "$NGINX_PID"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}
# Context switches (voluntary + involuntary) of every thread of the processes $@: each one is a
# sleep and a wakeup, which on this VM cost more than the request's own work.
ctx_switches() {
  local pid
  for pid in "$@"; do cat /proc/"$pid"/task/*/status 2>/dev/null; done |
    awk '/^(non)?voluntary_ctxt_switches/ {n += $2} END {print n + 0}'
}

# dst: path -> "client-namespace ip port"
declare -A DST=(
  [direct]="$RUN-x-client $X_WEB 8000"
  [http-rule]="$RUN-y-client $Y_WEB 8001"
  [allow-all]="$RUN-y-client $Y_WEB 8002"
  [nginx]="$RUN-x-client 192.0.2.1 8080"
  [l4]="$RUN-y-client $Y_WEB 8000"
)
load() { # path secs extra-args...: ciliate-bench http JSON
  local p=$1 secs=$2; shift 2
  read -r ns ip port <<<"${DST[$p]}"
  pin_client nsenter --net=/var/run/netns/"$ns" "$BIN/ciliate-bench" http --dst "$ip" --port "$port" \
    --secs "$secs" "$@"
}
proxy_status() { "$BIN/ciliate" --socket "$SOCK_y" status -o json | python3 -c 'import json,sys; p=json.load(sys.stdin).get("proxy") or {}; print(p.get("pid") or 0, p.get("requests") or 0)'; }

# Everything answers, and each path goes where it should: through the proxy or not.
ready() {
  local p out
  for _ in $(seq 100); do
    read -r PROXY_PID _ <<<"$(proxy_status)"
    ok=1
    for p in direct http-rule allow-all nginx l4; do
      out=$(load "$p" 0.2 --conns 1 2>/dev/null) || { ok=0; break; }
      [ "$(field "$out" requests)" -gt 0 ] && [ "$(field "$out" non_2xx)" = 0 ] || { ok=0; break; }
    done
    [ "$ok" = 1 ] && [ "$PROXY_PID" != 0 ] && return 0
    sleep 0.2
  done
  echo "$0: the paths did not come up (last: $p: ${out:-no answer}); proxy pid $PROXY_PID" >&2
  return 1
}
ready
through_proxy() { # path: requests the proxy counted for one short load on it
  local before after
  sleep 2 # the proxy's counters reach the agent's status in batches: let earlier ones land
  read -r _ before <<<"$(proxy_status)"
  load "$1" 0.3 --conns 1 >/dev/null
  sleep 2
  read -r _ after <<<"$(proxy_status)"
  echo $((after - before))
}
for p in http-rule allow-all; do
  [ "$(through_proxy "$p")" -gt 0 ] || { echo "$0: $p did not go through the proxy" >&2; exit 1; }
done
[ "$(through_proxy l4)" = 0 ] || { echo "$0: the L4-only port went through the proxy" >&2; exit 1; }

proxy_cpu_ticks() { awk '{print $14 + $15}' "/proc/$PROXY_PID/stat"; }
proxy_ctx_switches() { ctx_switches "$PROXY_PID"; }
nginx_ctx_switches() { ctx_switches "$NGINX_PID" $(pgrep -P "$NGINX_PID"); }
# The agent reads every record the proxy sends: its CPU is part of what a request costs.
# Node X's agent for the paths on node X (no proxy there), node Y's for the others.
agent_cpu_ticks() { # path
  local pid=${AGENTS[1]}
  case $1 in direct | nginx) pid=${AGENTS[0]} ;; esac
  awk '{print $14 + $15}' "/proc/$pid/stat"
}
HZ=$(getconf CLK_TCK)
wrk_run() { # path: "req/s p50_us p99_us errors requests"
  read -r ns ip port <<<"${DST[$1]}"
  pin_client nsenter --net=/var/run/netns/"$ns" wrk -t1 -c16 -d"${SECS}s" --latency \
    "http://$ip:$port/bench" | python3 -c '
import re, sys
t = sys.stdin.read()
def us(v):
    n, u = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 1, "ms": 1e3, "s": 1e6}[u]
rps = re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)
p50 = us(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1))
p99 = us(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
err = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", t))
err += sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", t))
n = re.search(r"(\d+) requests in", t).group(1)
print(rps, p50, p99, err, n)'
}

: >"$RESULTS"
for round in $(seq "$RUNS"); do
  echo "round $round of $RUNS..." >&2
  for p in direct http-rule allow-all nginx; do
    cpu=proxy_cpu_ticks cs=proxy_ctx_switches
    [ "$p" = nginx ] && cpu=nginx_cpu_ticks cs=nginx_ctx_switches
    c0=$($cpu)
    s0=$($cs)
    a0=$(agent_cpu_ticks "$p")
    out=$(load "$p" "$SECS" --conns 4 --rate "$RATE")
    c1=$($cpu)
    s1=$($cs)
    a1=$(agent_cpu_ticks "$p")
    echo "fixed-p50 $p $(field "$out" p50_us)" >>"$RESULTS"
    echo "fixed-p99 $p $(field "$out" p99_us)" >>"$RESULTS"
    echo "fixed-rate $p $(field "$out" per_second)" >>"$RESULTS"
    echo "errors $p $(($(field "$out" errors) + $(field "$out" non_2xx)))" >>"$RESULTS"
    # cores used per 1,000 req/s: CPU seconds / wall seconds / (req/s / 1,000)
    echo "proxy-cpu $p $(python3 -c "print(($c1 - $c0) / $HZ / $SECS / ($(field "$out" per_second) / 1000))")" >>"$RESULTS"
    echo "agent-cpu $p $(python3 -c "print(($a1 - $a0) / $HZ / $SECS / ($(field "$out" per_second) / 1000))")" >>"$RESULTS"
    [ "$p" = direct ] || echo "ctx-switches $p $(python3 -c "print(($s1 - $s0) / $(field "$out" requests))")" >>"$RESULTS"
  done
  # nginx's maximum right before or after ours (alternating), so that each round gives a
  # ratio of two neighbouring measurements: the machine's load drifts between rounds (the
  # direct path's own maximum swung 11,000-50,000 on the shared VM), much less within one.
  order="direct http-rule nginx allow-all l4"
  [ $((round % 2)) = 0 ] && order="direct nginx http-rule allow-all l4"
  for p in $order; do
    cpu=proxy_cpu_ticks
    [ "$p" = nginx ] && cpu=nginx_cpu_ticks
    c0=$($cpu)
    a0=$(agent_cpu_ticks "$p")
    read -r rps p50 p99 err n <<<"$(wrk_run "$p")"
    c1=$($cpu)
    a1=$(agent_cpu_ticks "$p")
    # CPU per request at the maximum rate: what the rate is made of on a machine whose CPUs
    # the client, the server, the proxy (or nginx) and the agent share; unlike the rate, it
    # hardly moves with the machine's other load.
    echo "max-cpu-us $p $(python3 -c "print(($c1 - $c0) / $HZ / max($n, 1) * 1e6)")" >>"$RESULTS"
    echo "max-agent-us $p $(python3 -c "print(($a1 - $a0) / $HZ / max($n, 1) * 1e6)")" >>"$RESULTS"
    echo "max $p $rps" >>"$RESULTS"
    echo "max-p50 $p $p50" >>"$RESULTS"
    echo "max-p99 $p $p99" >>"$RESULTS"
    echo "errors $p $err" >>"$RESULTS"
    printf -v "MAX_${p//-/_}" %s "$rps"
  done
  for p in http-rule allow-all; do
    m=MAX_${p//-/_}
    echo "max-vs-nginx $p $(python3 -c "print(${!m} / $MAX_nginx)")" >>"$RESULTS"
  done
done
RSS=$(awk '/VmRSS/{print $2}' "/proc/$PROXY_PID/status")
HWM=$(awk '/VmHWM/{print $2}' "/proc/$PROXY_PID/status")
read -r PID_END _ <<<"$(proxy_status)"

printf '\nHTTP/1.1 keep-alive GETs, 1 KB responses, %s s per measurement; %s\n' "$SECS" "$(pinning)"
printf 'fixed rate: ciliate-bench http, %s req/s over 4 connections; max rate: wrk -t1 -c16\n\n' "$RATE"
python3 - "$RESULTS" "$RSS" "$HWM" <<'PY'
import statistics, sys
path, rss, hwm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = {}
for line in open(path):
    m, p, v = line.split()
    rows.setdefault((m, p), []).append(float(v))
def med(m, p):
    v = rows.get((m, p))
    return statistics.median(v) if v else None
def cell(m, p, fmt="{:,.0f}"):
    v = rows.get((m, p))
    if not v:
        return "-"
    return f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))}-{fmt.format(max(v))}]"
paths = ["direct", "http-rule", "allow-all", "nginx", "l4"]
w = 26
print(f"{'median [min-max]':34}" + "".join(f"{p:>{w}}" for p in paths))
for m, label in [("fixed-p50", "1,000 req/s: p50 us"), ("fixed-p99", "1,000 req/s: p99 us"),
                 ("max", "max req/s (wrk)"), ("max-p50", "max rate: p50 us"), ("max-p99", "max rate: p99 us")]:
    print(f"{label:34}" + "".join(f"{cell(m, p):>{w}}" for p in paths))
print(f"{'max rate: proxy CPU us per request':34}" + "".join(f"{cell('max-cpu-us', p, '{:.1f}'):>{w}}" for p in paths))
print(f"{'max rate: agent CPU us per request':34}" + "".join(f"{cell('max-agent-us', p, '{:.1f}'):>{w}}" for p in paths))
print(f"{'proxy CPU, cores per 1,000 req/s':34}" + "".join(f"{cell('proxy-cpu', p, '{:.3f}'):>{w}}" for p in paths))
print(f"{'  (nginx column: nginx own CPU)':34}")
print(f"{'agent CPU, cores per 1,000 req/s':34}" + "".join(f"{cell('agent-cpu', p, '{:.3f}'):>{w}}" for p in paths))
print(f"{'context switches per request':34}" + "".join(f"{cell('ctx-switches', p, '{:.2f}'):>{w}}" for p in paths))
print(f"{'  (proxy threads; nginx: its workers)':34}")
print(f"{'errors (sum over the run)':34}" + "".join(f"{sum(rows.get(('errors', p), [])):>{w},.0f}" for p in paths))
print(f"({len(rows.get(('max', 'direct'), []))} rounds, interleaved in the order above)\n")
def r(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"
def d(a, b):
    return f"{(a - b) / 1000:+.3f}" if a is not None and b is not None else "-"
print(f"{'ratios of medians':44}{'http-rule':>12}{'allow-all':>12}{'nginx':>12}{'l4':>12}   goal")
print(f"{'added p50 at 1,000 req/s vs direct, ms':44}" + "".join(f"{d(med('fixed-p50', p), med('fixed-p50', 'direct')):>12}" for p in paths[1:4]) + f"{'':>12}")
print(f"{'added p99 at 1,000 req/s vs direct, ms':44}" + "".join(f"{d(med('fixed-p99', p), med('fixed-p99', 'direct')):>12}" for p in paths[1:4]) + f"{'':>12}   <= 0.5")
print(f"{'max req/s vs nginx':44}" + "".join(f"{r(med('max', p), med('max', 'nginx')):>12}" for p in paths[1:3]) + f"{'1.00':>12}{'':>12}   >= 1.0")
print(f"{'  per round (median [min-max] of ratios)':44}" + "".join(f"{cell('max-vs-nginx', p, '{:.2f}'):>24}" for p in paths[1:3]))
print(f"{'max req/s vs direct':44}" + "".join(f"{r(med('max', p), med('max', 'direct')):>12}" for p in paths[1:]) + "   l4 >= 0.98")
print(f"{'proxy CPU, cores per 1,000 req/s':44}" + "".join(f"{med('proxy-cpu', p) or 0:>12.3f}" for p in paths[1:4]) + f"{'':>12}   <= 0.05")
def cost(p):
    a, b = med('max-cpu-us', p), med('max-agent-us', p)
    return a + b if a is not None and b is not None else None
print(f"{'max rate: proxy+agent CPU per request vs nginx':44}" + "".join(f"{r(cost(p), cost('nginx')):>12}" for p in paths[1:3]) + f"{'1.00':>12}{'':>12}   (lower is better)")
print(f"\nproxy RSS: {rss / 1024:.1f} MB now, {hwm / 1024:.1f} MB peak (VmHWM) (goal <= 30 MB)")
PY
[ "$PID_END" = "$PROXY_PID" ] || echo "NOTE: the proxy restarted during the run (pid $PROXY_PID -> $PID_END)"
