#!/usr/bin/env bash
# axum under herd against the same axum app alone (issue 17), side by side, in rounds.
#
#   benches/axum.sh                        # 3 rounds, 5 s per run, keepalive and close
#   ROUNDS=5 DURATION=10s benches/axum.sh
#
# herd: examples/axum.rs with 2 workers, each a current-thread tokio runtime, round-robin.
# alone: the same binary with --alone: one process, one tokio runtime with 2 threads, axum's
# own TcpListener. Load: wrk -t1 (installed with apt-get when missing), CONNECTIONS
# connections, keep-alive or `Connection: close`. CPU per request is the servers' user+system
# time (primary and workers for herd) over the measured window divided by the requests.
# Each round runs herd then alone for each workload; ratios (herd/alone) are taken within a
# round; the summary gives medians. Everything listens on 127.0.0.1 and every run is bounded.
#
# Environment: ROUNDS (3), DURATION (5s), WARMUP (1s), CONNECTIONS (50),
# WORKLOADS ("keepalive close"), PORT (3200; alone uses PORT+1).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
CONNECTIONS=${CONNECTIONS:-50}
WORKLOADS=${WORKLOADS:-keepalive close}
PORT=${PORT:-3200}
bin="$repo/target/release/examples/axum"
work=$(mktemp -d "${TMPDIR:-/tmp}/herd-axum.XXXXXX")
server_pid=""

note() { echo "axum.sh: $*" >&2; }

stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
cleanup() { stop_server; rm -rf "$work"; }
trap cleanup EXIT INT TERM

if ! command -v wrk >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq wrk
fi
(cd "$repo" && cargo build --release --features axum --example axum >&2)

# CPU ticks (user + system) of a process and its children.
cpu_ticks() {
  local total=0 p
  for p in "$1" $(cat "/proc/$1/task/$1/children" 2>/dev/null); do
    if [ -r "/proc/$p/stat" ]; then
      # Fields 14 and 15 after the ")" that ends the command name.
      total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    fi
  done
  echo "$total"
}

# start_server LOG PORT ARGS...: starts the example and waits for its listening line.
start_server() {
  local log=$1 port=$2; shift 2
  "$bin" "$port" --host 127.0.0.1 "$@" >"$log" 2>&1 &
  server_pid=$!
  for _ in $(seq 150); do
    grep -q "listening on http://" "$log" && return 0
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; return 1; }
    sleep 0.1
  done
  note "no listening line"; cat "$log" >&2; return 1
}

# measure NAME PORT WORKLOAD ARGS...: prints "req/s cpu_us_per_request". herd and alone use
# ports of their own, so that neither waits for the other's port to be free.
measure() {
  local name=$1 port=$2 workload=$3; shift 3
  start_server "$work/$name.log" "$port" "$@"
  local header=()
  [ "$workload" = close ] && header=(-H "Connection: close")
  # A failed run stops its server before it gives up (this runs in a subshell of its own).
  wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" "${header[@]}" "http://127.0.0.1:$port/" >/dev/null ||
    { stop_server; return 1; }
  local before; before=$(cpu_ticks "$server_pid")
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "${header[@]}" "http://127.0.0.1:$port/" \
    >"$work/wrk.txt" || { stop_server; return 1; }
  local after; after=$(cpu_ticks "$server_pid")
  stop_server
  local requests errors
  requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  errors=$(awk '/Socket errors|Non-2xx/ {print}' "$work/wrk.txt" | tr '\n' ' ')
  [ -n "$errors" ] && note "$name $workload: $errors"
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  local hz; hz=$(getconf CLK_TCK)
  awk -v rps="$rps" -v t=$((after - before)) -v hz="$hz" -v n="$requests" \
    'BEGIN { printf "%.0f %.2f\n", rps, (t / hz) * 1e6 / n }'
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

for workload in $WORKLOADS; do
  : >"$work/$workload.rows"
done
printf "%-6s %-9s %10s %10s %12s %12s %8s %8s\n" round workload herd_rps alone_rps \
  herd_us/req alone_us/req rps_x cpu_x
for round in $(seq "$ROUNDS"); do
  for workload in $WORKLOADS; do
    read -r h_rps h_cpu < <(measure herd "$PORT" "$workload" --workers 2 --policy round-robin)
    read -r a_rps a_cpu < <(measure alone $((PORT + 1)) "$workload" --alone --threads 2)
    ratio=$(awk -v h="$h_rps" -v a="$a_rps" 'BEGIN {printf "%.3f", h / a}')
    cpu_ratio=$(awk -v h="$h_cpu" -v a="$a_cpu" 'BEGIN {printf "%.3f", h / a}')
    echo "$h_rps $a_rps $h_cpu $a_cpu $ratio $cpu_ratio" >>"$work/$workload.rows"
    printf "%-6s %-9s %10s %10s %12s %12s %8s %8s\n" "$round" "$workload" "$h_rps" "$a_rps" \
      "$h_cpu" "$a_cpu" "$ratio" "$cpu_ratio"
  done
done
echo
echo "medians over $ROUNDS rounds (ratios: median of the per-round ratios)"
printf "%-9s %10s %10s %12s %12s %8s %8s\n" workload herd_rps alone_rps herd_us/req \
  alone_us/req rps_x cpu_x
for workload in $WORKLOADS; do
  col() { awk -v c="$1" '{print $c}' "$work/$workload.rows" | median; }
  printf "%-9s %10s %10s %12s %12s %8s %8s\n" "$workload" "$(col 1)" "$(col 2)" "$(col 3)" \
    "$(col 4)" "$(col 5)" "$(col 6)"
done
