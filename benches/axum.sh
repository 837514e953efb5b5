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
# Each round runs herd and alone (and base, below) for each workload, in an order that rotates
# from round to round (so neither side always runs first, next to the same neighbour's load);
# ratios (herd/alone) are taken within a round; the summary gives medians. Everything listens
# on 127.0.0.1 and every run is bounded.
#
# The herd app counts and times every request for the metrics (`herd::axum::counted`), which
# the alone app does not: COUNTED=0 runs the herd workers with `--uncounted`, the very app
# alone serves. BASE=PATH adds a third side, herd with another build of the example (say the
# one before a change, `cp target/release/examples/axum /tmp/axum-base`), interleaved with the
# others, and the ratios new/base.
#
# Environment: ROUNDS (3), DURATION (5s), WARMUP (1s), CONNECTIONS (50),
# WORKLOADS ("keepalive close"), PORT (3200; alone uses PORT+1, base PORT+2), COUNTED (1),
# BASE (none), BIN (target/release/examples/axum, built here; a BIN given is not built).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
CONNECTIONS=${CONNECTIONS:-50}
WORKLOADS=${WORKLOADS:-keepalive close}
PORT=${PORT:-3200}
COUNTED=${COUNTED:-1}
BASE=${BASE:-}
bin=${BIN:-"$repo/target/release/examples/axum"}
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
[ -n "${BIN:-}" ] || (cd "$repo" && cargo build --release --features axum --example axum >&2)
herd_args=(--workers 2 --policy round-robin)
[ "$COUNTED" = 0 ] && herd_args+=(--uncounted)

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

# start_server LOG PORT BIN ARGS...: starts the example and waits for its listening line.
start_server() {
  local log=$1 port=$2 exe=$3; shift 3
  "$exe" "$port" --host 127.0.0.1 "$@" >"$log" 2>&1 &
  server_pid=$!
  for _ in $(seq 150); do
    grep -q "listening on http://" "$log" && return 0
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; return 1; }
    sleep 0.1
  done
  note "no listening line"; cat "$log" >&2; return 1
}

# failed NAME PORT: the server's log and who listens on PORT, then the server stopped.
failed() {
  note "$1: wrk failed on port $2; the server's log:"
  tail -20 "$work/$1.log" >&2
  ss -ltnp "sport = :$2" >&2 || true
  stop_server
}

# measure NAME PORT WORKLOAD BIN ARGS...: prints "req/s cpu_us_per_request". Each side uses a
# port of its own, so that none waits for another's port to be free.
measure() {
  local name=$1 port=$2 workload=$3; shift 3
  start_server "$work/$name.log" "$port" "$@"
  local header=()
  [ "$workload" = close ] && header=(-H "Connection: close")
  # A failed run shows its server's log and stops it before it gives up (this runs in a
  # subshell of its own).
  wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" "${header[@]}" "http://127.0.0.1:$port/" >/dev/null ||
    { failed "$name" "$port"; return 1; }
  local before; before=$(cpu_ticks "$server_pid")
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "${header[@]}" "http://127.0.0.1:$port/" \
    >"$work/wrk.txt" || { failed "$name" "$port"; return 1; }
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

# side NAME WORKLOAD: measures one side, into the variables NAME_rps and NAME_cpu.
side() {
  local r c
  case $1 in
    herd) read -r r c < <(measure herd "$PORT" "$2" "$bin" "${herd_args[@]}") ;;
    alone) read -r r c < <(measure alone $((PORT + 1)) "$2" "$bin" --alone --threads 2) ;;
    base) read -r r c < <(measure base $((PORT + 2)) "$2" "$BASE" "${herd_args[@]}") ;;
  esac
  printf -v "${1}_rps" %s "$r"
  printf -v "${1}_cpu" %s "$c"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }

sides=(herd alone)
[ -n "$BASE" ] && sides+=(base)
for workload in $WORKLOADS; do
  : >"$work/$workload.rows"
done
header="%-6s %-9s %10s %10s %12s %12s %8s %8s"
[ -n "$BASE" ] && header="$header %10s %12s %8s %8s"
# shellcheck disable=SC2059
printf "$header\n" round workload herd_rps alone_rps herd_us/req alone_us/req rps_x cpu_x \
  ${BASE:+base_rps base_us/req new_rps_x new_cpu_x}
for round in $(seq "$ROUNDS"); do
  for workload in $WORKLOADS; do
    # This round's order: the sides rotated by the round number.
    n=${#sides[@]}
    for i in $(seq 0 $((n - 1))); do
      side "${sides[$(((i + round - 1) % n))]}" "$workload"
    done
    row="$herd_rps $alone_rps $herd_cpu $alone_cpu $(ratio "$herd_rps" "$alone_rps")"
    row="$row $(ratio "$herd_cpu" "$alone_cpu")"
    if [ -n "$BASE" ]; then
      row="$row $base_rps $base_cpu $(ratio "$herd_rps" "$base_rps")"
      row="$row $(ratio "$herd_cpu" "$base_cpu")"
    fi
    echo "$row" >>"$work/$workload.rows"
    # shellcheck disable=SC2059,SC2086
    printf "$header\n" "$round" "$workload" $row
  done
done
echo
echo "medians over $ROUNDS rounds (ratios: median of the per-round ratios; herd COUNTED=$COUNTED)"
# shellcheck disable=SC2059
printf "${header#%-6s }\n" workload herd_rps alone_rps herd_us/req alone_us/req rps_x cpu_x \
  ${BASE:+base_rps base_us/req new_rps_x new_cpu_x}
cols=6
[ -n "$BASE" ] && cols=10
for workload in $WORKLOADS; do
  meds=()
  for c in $(seq "$cols"); do
    meds+=("$(awk -v c="$c" '{print $c}' "$work/$workload.rows" | median)")
  done
  # shellcheck disable=SC2059
  printf "${header#%-6s }\n" "$workload" "${meds[@]}"
done
