#!/usr/bin/env bash
# Measures herd and its peers under the same load, side by side, and prints herd/peer ratios.
#
#   benches/peers.sh                      # 5 s per run, keepalive and close, herd's generator
#   DURATION=10s GENERATOR=wrk benches/peers.sh
#   ROUNDS=3 benches/peers.sh              # herd and every peer, 3 times; medians of the rounds
#
# Peers (each skipped, with a note, when its tools are missing):
#   node-rr    ../shared/peers/node-cluster (Express on node:cluster, round-robin); needs node, npm
#   node-none  the same with NODE_CLUSTER_SCHED_POLICY=none (shared listener)
#   nginx      nginx, 2 workers, `return 200 "Hello World!"`, shared listener
#   nginx-rp   the same with `listen ... reuseport`
# herd itself runs as round-robin and reuseport clusters with 2 workers (`herd bench`).
#
# Node pairs (issue 12; the same Node workers under two primaries, side by side in each round):
#   express    the seed's Express workers (../shared/peers/node-cluster), 2 workers
#   node-http  tests/fixtures/node/hello.js (plain node:http), 2 workers
# each under Node's own primary (round-robin) and under `herd run` (round-robin), keepalive and
# close, herd's generator, with each primary's CPU per new connection (its CPU time during the
# close run over the connections served); which primary runs first alternates per round. NODE_PAIRS=0 skips them; NODE_PAIRS=only runs them alone.
#
# Environment: DURATION (5s), WARMUP (1s), CONNECTIONS (50), WORKLOADS ("keepalive close"),
# ROUNDS (1; each round measures herd and then every peer, and a ratio is taken within a round),
# GENERATOR (herd | wrk; wrk -t1 when installed), PEER_PORT (3100), PEERS_DIR (../shared/peers
# next to the repository). Everything listens on 127.0.0.1 only and every run is bounded by
# DURATION; the peers this script starts are stopped by their process group when it exits.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
CONNECTIONS=${CONNECTIONS:-50}
WORKLOADS=${WORKLOADS:-keepalive close}
ROUNDS=${ROUNDS:-1}
GENERATOR=${GENERATOR:-herd}
PEER_PORT=${PEER_PORT:-3100}
PEERS_DIR=${PEERS_DIR:-$repo/../shared/peers}
work=$(mktemp -d "${TMPDIR:-/tmp}/herd-peers.XXXXXX")
herd="$repo/target/release/herd"
peer_pid=""

stop_peer() {
  if [ -n "$peer_pid" ]; then
    # The peer runs in its own session: its process group id is its pid.
    kill -TERM -- "-$peer_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$peer_pid" 2>/dev/null || break; sleep 0.1; done
    # The leader can exit before the rest of its group (nginx's workers hold their own
    # reuseport listeners): wait for the port too, then end whatever of the group is left.
    for _ in $(seq 50); do port_open "$PEER_PORT" || break; sleep 0.1; done
    kill -KILL -- "-$peer_pid" 2>/dev/null || true
    wait "$peer_pid" 2>/dev/null || true
    peer_pid=""
  fi
}
cleanup() { stop_peer; rm -rf "$work"; }
trap cleanup EXIT INT TERM

note() { echo "peers.sh: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 300); do
    port_open "$1" && return 0
    kill -0 "$peer_pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# rps LABEL WORKLOAD URL: requests/s of one run against URL, on stdout.
rps() {
  local label=$1 workload=$2 url=$3
  if [ "$GENERATOR" = wrk ]; then
    local extra=()
    [ "$workload" = keepalive ] || extra=(-H "Connection: close")
    wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" "${extra[@]}" "$url" >/dev/null 2>&1 || true
    wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "${extra[@]}" "$url" | awk '/Requests\/sec/ {print $2}'
  else
    "$herd" bench --target "$url" --label "$label" --workload "$workload" \
      --connections "$CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP" \
      --json "$work/$label-$workload.json" >&2
    json_rps "$work/$label-$workload.json" 1
  fi
}

# json_rps FILE N: requests_per_sec of the Nth result in a herd bench JSON file.
json_rps() {
  grep '"requests_per_sec"' "$1" | sed -n "${2}p" | tr -dc '0-9.'
}

# start_peer NAME COMMAND...: runs a peer in its own session and waits for its port.
start_peer() {
  local name=$1
  shift
  if port_open "$PEER_PORT"; then
    note "port $PEER_PORT is busy; set PEER_PORT"
    exit 1
  fi
  setsid "$@" >"$work/$name.log" 2>&1 &
  peer_pid=$!
  if ! wait_port "$PEER_PORT"; then
    note "$name did not come up on port $PEER_PORT; skipping it (log: $(tail -n 3 "$work/$name.log" | tr '\n' ' '))"
    stop_peer
    return 1
  fi
}

nginx_conf() {
  local reuseport=$1
  mkdir -p "$work/nginx/logs"
  cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$PEER_PORT $reuseport;
    location / { return 200 "Hello World!"; }
  }
}
EOF
}

[ "$GENERATOR" = wrk ] && ! command -v wrk >/dev/null && { note "wrk is not installed; using herd's generator"; GENERATOR=herd; }
(cd "$repo" && cargo build --release --quiet)
declare -A herd_rps
rows=()

# --- herd first: the numbers every ratio of the round divides by ---
measure_herd() {
for w in $WORKLOADS; do
  if [ "$GENERATOR" = wrk ]; then
    for p in round-robin reuseport; do
      start_peer "herd-$p" "$herd" serve --host 127.0.0.1 --port "$PEER_PORT" --workers 2 --policy "$p" || exit 1
      herd_rps[$p-$w]=$(rps "herd-$p" "$w" "http://127.0.0.1:$PEER_PORT/")
      stop_peer
    done
  else
    "$herd" bench --policies round-robin,reuseport --workers 2 --workload "$w" \
      --connections "$CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP" --json "$work/herd-$w.json"
    herd_rps[round-robin-$w]=$(json_rps "$work/herd-$w.json" 1)
    herd_rps[reuseport-$w]=$(json_rps "$work/herd-$w.json" 2)
  fi
done
}

# --- the peers ---
measure_peer() {
  local name=$1
  for w in $WORKLOADS; do
    local r
    r=$(rps "$name" "$w" "http://127.0.0.1:$PEER_PORT/")
    rows+=("$name $w $r ${herd_rps[round-robin-$w]} ${herd_rps[reuseport-$w]}")
  done
}

measure_peers() {
if command -v node >/dev/null && command -v npm >/dev/null && [ -x "$PEERS_DIR/node-cluster/run.sh" ]; then
  for sched in rr none; do
    if start_peer "node-$sched" env PORT="$PEER_PORT" WORKERS=2 NODE_CLUSTER_SCHED_POLICY="$sched" \
      "$PEERS_DIR/node-cluster/run.sh"; then
      measure_peer "node-$sched"
      stop_peer
    fi
  done
else
  note "node/npm (or $PEERS_DIR/node-cluster) not found: skipping the Node peer"
fi

if command -v nginx >/dev/null; then
  for variant in shared reuseport; do
    name=nginx
    opt=""
    [ "$variant" = reuseport ] && { name=nginx-rp; opt=reuseport; }
    nginx_conf "$opt"
    if start_peer "$name" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g "daemon off;"; then
      measure_peer "$name"
      stop_peer
    fi
  done
else
  note "nginx not found (apt-get install -y nginx-light): skipping nginx"
fi
}

# --- Node pairs: one app, Node's primary vs herd run ---
NODE_PAIRS=${NODE_PAIRS:-1}
pair_rows=()

# cpu_ticks PID: user + system clock ticks of PID.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# pair_run LABEL WORKLOAD: warm up, then measure; prints "rps cpu_us_per_conn" for the peer
# now running (its primary is $peer_pid). CPU per connection is for the close workload only.
pair_run() {
  local label=$1 workload=$2 url="http://127.0.0.1:$PEER_PORT/" t0 t1 r
  "$herd" bench --target "$url" --label "$label" --workload "$workload" --connections "$CONNECTIONS" \
    --duration "$WARMUP" --warmup 0s >/dev/null 2>&1 || true
  t0=$(cpu_ticks "$peer_pid")
  "$herd" bench --target "$url" --label "$label" --workload "$workload" --connections "$CONNECTIONS" \
    --duration "$DURATION" --warmup 0s --json "$work/$label-$workload.json" >&2
  t1=$(cpu_ticks "$peer_pid")
  r=$(json_rps "$work/$label-$workload.json" 1)
  awk -v r="$r" -v d="${DURATION%s}" -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { n = r * d; printf "%s %.1f\n", r, (n > 0 ? t / hz * 1e6 / n : 0) }'
}

# wait_lines FILE PATTERN N: waits (at most 30 s) until N lines of FILE match PATTERN: every
# worker listens before the load starts (the port alone opens before the workers are ready).
wait_lines() {
  for _ in $(seq 300); do
    [ "$(grep -c -- "$2" "$1" 2>/dev/null || true)" -ge "$3" ] && return 0
    sleep 0.1
  done
  note "timed out waiting for '$2' in $1"
}

# pair_side LABEL WORKLOAD PATTERN LINES CMD...: starts CMD, waits for LINES log lines matching
# PATTERN, measures it and stops it; the result ("rps cpu_us_per_conn") is left in pair_out.
pair_side() {
  local label=$1 w=$2 pattern=$3 lines=$4
  shift 4
  pair_out="0 0"
  if start_peer "$label" "$@"; then
    wait_lines "$work/$label.log" "$pattern" "$lines"
    pair_out=$(pair_run "$label" "$w")
    stop_peer
  fi
}

measure_node_pairs() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    note "node/npm not found: skipping the Node pairs"
    return
  fi
  local app w node_out herd_out side sides=(node herd)
  # Which primary runs first alternates from round to round: on a machine whose speed drifts,
  # neither side always gets the earlier (or later) moment.
  [ $((${round:-1} % 2)) = 0 ] && sides=(herd node)
  for app in express node-http; do
    local cmd=()
    if [ "$app" = express ]; then
      cmd=("$PEERS_DIR/node-cluster/run.sh")
      [ -x "${cmd[0]}" ] || { note "$PEERS_DIR/node-cluster not found: skipping express"; continue; }
    else
      cmd=(node "$repo/tests/fixtures/node/hello.js")
    fi
    # run.sh installs Express and execs node: herd runs node on the installed copy directly.
    local hcmd=("${cmd[@]}")
    [ "$app" = express ] && hcmd=(node "${HERD_PEER_CACHE:-${TMPDIR:-/tmp}/herd-peer-node-cluster}/server.js")
    for w in $WORKLOADS; do
      for side in "${sides[@]}"; do
        if [ "$side" = node ]; then
          pair_side "node-$app" "$w" "started\|listening" 2 \
            env PORT="$PEER_PORT" WORKERS=2 NODE_CLUSTER_SCHED_POLICY=rr "${cmd[@]}"
          node_out=$pair_out
        else
          pair_side "herd-$app" "$w" "listening on http://" 1 \
            "$herd" run --workers 2 --host 127.0.0.1 --port "$PEER_PORT" -- "${hcmd[@]}"
          herd_out=$pair_out
        fi
      done
      pair_rows+=("$app $w $node_out $herd_out")
    done
  done
}

for round in $(seq "$ROUNDS"); do
  [ "$ROUNDS" -gt 1 ] && note "round $round of $ROUNDS"
  if [ "$NODE_PAIRS" != only ]; then
    measure_herd
    measure_peers
  fi
  [ "$NODE_PAIRS" = 0 ] || measure_node_pairs
done

if [ ${#pair_rows[@]} -gt 0 ]; then
  echo
  echo "Node apps, Node's primary vs herd run (round-robin, 2 workers, $CONNECTIONS connections, $DURATION per run, median of $ROUNDS round(s))"
  printf '%-10s %-10s %12s %12s %9s %16s %16s %9s  %s\n' app workload "node req/s" "herd req/s" herd/node \
    "node us/conn" "herd us/conn" herd/node "req/s ratio by round; cpu ratio by round"
  printf '%s\n' "${pair_rows[@]}" | awk '
    function median(list,   a, n, i, j, t) {
      n = split(list, a, " ")
      for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    NF == 6 {
      k = $1 " " $2
      if (!(k in seen)) { seen[k] = 1; order[++m] = k }
      nr[k] = nr[k] " " $3; nc[k] = nc[k] " " $4; hr[k] = hr[k] " " $5; hc[k] = hc[k] " " $6
      q = ($3 > 0 ? $5 / $3 : 0); c = ($4 > 0 ? $6 / $4 : 0)
      qr[k] = qr[k] " " q; cr[k] = cr[k] " " c
      byq[k] = byq[k] sprintf(" %.2f", q); byc[k] = byc[k] sprintf(" %.2f", c)
    }
    END {
      for (i = 1; i <= m; i++) {
        k = order[i]; split(k, aw, " ")
        cpu = (aw[2] == "close") ? sprintf("%16.1f %16.1f %8.2fx", median(nc[k]), median(hc[k]), median(cr[k])) : sprintf("%16s %16s %9s", "-", "-", "-")
        printf "%-10s %-10s %12.0f %12.0f %8.2fx %s %s;%s\n", aw[1], aw[2], median(nr[k]), median(hr[k]), median(qr[k]), cpu, byq[k], (aw[2] == "close" ? byc[k] : " -")
      }
    }'
fi
[ "$NODE_PAIRS" = only ] && exit 0

echo
echo "herd vs peers: $CONNECTIONS connections, $DURATION per run after $WARMUP warm-up, generator: $GENERATOR, 2 workers each, median of $ROUNDS round(s)"
printf '%-10s %-10s %12s %14s %12s %14s %12s  %s\n' peer workload "peer req/s" "herd-rr req/s" "rr/peer" "herd-rp req/s" "rp/peer" "rr/peer by round"
# Rows arrive in round order; each column's median is taken on its own, the ratios from each
# round's own pair (not from the medians).
printf '%s\n' "${rows[@]}" | awk '
  function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  NF == 5 {
    k = $1 " " $2
    if (!(k in seen)) { seen[k] = 1; order[++m] = k }
    peer[k] = peer[k] " " $3; rr[k] = rr[k] " " $4; rp[k] = rp[k] " " $5
    r1 = ($3 > 0 ? $4 / $3 : 0); r2 = ($3 > 0 ? $5 / $3 : 0)
    q1[k] = q1[k] " " r1; q2[k] = q2[k] " " r2; by[k] = by[k] sprintf(" %.2f", r1)
  }
  END {
    for (i = 1; i <= m; i++) {
      k = order[i]; split(k, nw, " ")
      printf "%-10s %-10s %12.0f %14.0f %11.2fx %14.0f %11.2fx %s\n", nw[1], nw[2], median(peer[k]), median(rr[k]), median(q1[k]), median(rp[k]), median(q2[k]), by[k]
    }
  }'
[ ${#rows[@]} -gt 0 ] || note "no peer was available: only herd's own numbers above"
