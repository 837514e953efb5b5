#!/usr/bin/env bash
# The handoff's cost under wrk (issue 13), side by side, in rounds:
#   - the whole server's CPU per new-connection request (primary + workers, or nginx's master +
#     workers) under `wrk -t1 -c50 -H 'Connection: close'`: herd round-robin against nginx;
#   - the primary's CPU per new connection by `perf stat` (task-clock) during the same herd run;
#   - saturated, `wrk -t2 -c200` with a new connection per request: round-robin against reuseport.
#
#   ROUNDS=3 DURATION=5 benches/handoff.sh
#
# Needs wrk, nginx (apt-get install -y wrk nginx-light) and perf (linux-perf) for the perf
# column (left out, with a note, when perf is missing). HERD=PATH measures another build. Everything listens on 127.0.0.1; every
# process started here is stopped by its pid.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
herd=${HERD:-"$repo/target/release/herd"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
PORT=${PORT:-3130}
WORKERS=${WORKERS:-2}
work=$(mktemp -d "${TMPDIR:-/tmp}/herd-handoff.XXXXXX")
server=""
hz=$(getconf CLK_TCK)

stop() {
  if [ -n "$server" ]; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
  fi
}
trap 'stop; rm -rf "$work"' EXIT INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 300); do port_open "$PORT" && return 0; sleep 0.1; done; return 1; }

# The server's process and its children (workers).
pids() { echo "$server" $(cat /proc/"$server"/task/*/children 2>/dev/null); }
# Total CPU ticks (utime + stime) of the given pids.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' /proc/"$p"/stat 2>/dev/null || echo 0))); done; echo "$t"; }

start_herd() {
  "$herd" serve --host 127.0.0.1 --port "$PORT" --workers "$WORKERS" --policy "$1" \
    >"$work/herd.log" 2>&1 &
  server=$!
  wait_port
}

start_nginx() {
  mkdir -p "$work/nginx/logs"
  cat >"$work/nginx/nginx.conf" <<CONF
worker_processes $WORKERS;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  server {
    listen 127.0.0.1:$PORT;
    location / { return 200 "Hello World!"; }
  }
}
CONF
  nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g "daemon off;" &
  server=$!
  wait_port
}

# run THREADS CONNS: requests/s and whole-server CPU us per request of one wrk run (new
# connection per request); with PERF=1 also the primary's task-clock us per connection.
run() {
  wrk -t"$1" -c"$2" -d1s -H 'Connection: close' "http://127.0.0.1:$PORT/" >/dev/null 2>&1 || true
  local ps before after out perf_us="-"
  ps=$(pids)
  before=$(ticks $ps)
  if [ "${PERF:-0}" = 1 ] && command -v perf >/dev/null; then
    perf stat -x, -e task-clock -p "$server" -o "$work/perf.txt" -- sleep "$((DURATION - 1))" &
    local perf_pid=$!
  fi
  out=$(wrk -t"$1" -c"$2" -d"${DURATION}s" -H 'Connection: close' "http://127.0.0.1:$PORT/")
  after=$(ticks $ps)
  local reqs rps
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  if [ -n "${perf_pid:-}" ]; then
    wait "$perf_pid" || true
    local ms
    ms=$(awk -F, '/task-clock/ {print $1}' "$work/perf.txt")
    perf_us=$(awk -v ms="$ms" -v rps="$rps" -v d="$((DURATION - 1))" 'BEGIN {printf "%.2f", ms * 1000 / (rps * d)}')
  fi
  awk -v r="$rps" -v n="$reqs" -v t="$((after - before))" -v hz="$hz" -v p="$perf_us" \
    'BEGIN {printf "%.0f %.2f %s\n", r, t * 1e6 / hz / n, p}'
}

echo "round  herd-rr(req/s cpu-us/req primary-perf-us/conn)  nginx(req/s cpu-us/req)  cpu ratio  |  saturated rr req/s  reuseport req/s  ratio"
for r in $(seq "$ROUNDS"); do
  start_herd round-robin
  h=$(PERF=1 run 1 50)
  s_rr=$(run 2 200)
  stop
  start_nginx
  n=$(run 1 50)
  stop
  start_herd reuseport
  s_rp=$(run 2 200)
  stop
  read -r h_rps h_cpu h_perf <<<"$h"
  read -r n_rps n_cpu _ <<<"$n"
  read -r rr_rps _ _ <<<"$s_rr"
  read -r rp_rps _ _ <<<"$s_rp"
  awk -v r="$r" -v hr="$h_rps" -v hc="$h_cpu" -v hp="$h_perf" -v nr="$n_rps" -v nc="$n_cpu" \
    -v a="$rr_rps" -v b="$rp_rps" \
    'BEGIN {printf "%5d  %7d %6.2f %6s  %7d %6.2f  %5.2f  |  %7d  %7d  %5.2f\n", r, hr, hc, hp, nr, nc, hc / nc, a, b, a / b}'
done
