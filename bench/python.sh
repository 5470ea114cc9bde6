#!/usr/bin/env bash
# Python app servers, in one run, on 127.0.0.1: handover's prefork workers
# (`python3 -m handover_worker wsgi|asgi`) against gunicorn (sync and gthread) and
# `uvicorn --workers`, serving the same app (bench/python_app.py) with the same number of
# workers.
#
#   bash bench/python.sh [--workers N] [--threads N] [--duration SECS] [--reps R] [--only REGEX]
#
# Servers run pinned to CPU 0, the load generator (crates/bench-servers' loadgen) to CPU 1.
# Workloads: close (a new connection per request saying `Connection: close`; the server ends
# the stream) and keepalive (32 connections, requests back to back), 32 clients; then a kill
# storm: the close workload for 6 s while a random worker is `kill -9`ed every 100 ms, and the
# share of requests answered (nothing is retried). CPU per request is every process of the
# server's session (see bench/lib.sh). Ratios are against gunicorn (WSGI) and uvicorn (ASGI)
# measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=2 THREADS=4 DURATION=4 REPS=3 CONC=32 STORM=6 ONLY=.
while (($#)); do
    case "$1" in
        --workers) WORKERS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        *) echo "usage: bash bench/python.sh [--workers N] [--threads N] [--duration SECS] [--reps R] [--only REGEX]" >&2; exit 2 ;;
    esac
done
[ "$(nproc)" -ge 2 ] || { echo "bench: needs 2 CPUs (servers on CPU 0, load on CPU 1)" >&2; exit 1; }

# --- install and build --------------------------------------------------------------------
command -v taskset >/dev/null || { echo "bench: taskset (util-linux) is missing" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true
echo "building release binaries and the benchmark's Python environment..." >&2
cargo build --quiet --release -p bench-servers -p handover-cli
T=${CARGO_TARGET_DIR:-target}/release
VENV=${CARGO_TARGET_DIR:-target}/bench-pyenv
if [ ! -x "$VENV/bin/python3" ]; then
    python3 -m venv "$VENV"
fi
# The servers compared, pinned; the handover worker from this checkout.
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    gunicorn==27.0.1 uvicorn==0.55.0 h11==0.16.0 click==8.5.1 ./python
PY=$VENV/bin/python3
export PYTHONPATH=$PWD/bench

# shellcheck source=bench/lib.sh
. bench/lib.sh

# --- the servers --------------------------------------------------------------------------
ROWS=()
declare -A BASE STORM_SHARE STORM_KILLS STORM_N
# The worker processes of the server under test: its session leader's children, bar
# multiprocessing's resource tracker.
worker_pids() {
    ps -o pid=,args= --ppid "$server_pgid" 2>/dev/null | grep -v resource_tracker | awk '{ print $1 }'
}
kill_storm() { # name
    local name=$1 kills=0 lg out n e
    taskset -c 1 "$T/loadgen" "127.0.0.1:$port" --mode close --concurrency "$CONC" --duration "$STORM" >"$logdir/storm.out" &
    lg=$!
    while kill -0 "$lg" 2>/dev/null; do
        sleep 0.1
        mapfile -t pids < <(worker_pids)
        if ((${#pids[@]})); then
            kill -KILL "${pids[RANDOM % ${#pids[@]}]}" 2>/dev/null && kills=$((kills + 1))
        fi
    done
    wait "$lg" || true
    out=$(cat "$logdir/storm.out")
    n=$(field requests "$out")
    e=$(( $(field refused "$out") + $(field reset "$out") + $(field unanswered "$out") + $(field timeouts "$out") + $(field other "$out") ))
    STORM_SHARE[$name]=$(awk -v n="$n" -v e="$e" 'BEGIN { printf "%.2f", (n + e) ? 100 * n / (n + e) : 0 }')
    STORM_KILLS[$name]=$kills
    STORM_N[$name]="$n answered, $e failed"
    echo "  $name / kill -9 storm: ${STORM_SHARE[$name]}% answered ($n answered, $e failed, $kills kills)" >&2
}
run_server() { # name, baseline, workloads (comma list), command...
    local name=$1 base=$2 workloads=$3; shift 3
    BASE[$name]=$base
    [[ $name =~ $ONLY ]] || return 0
    echo "== $name" >&2
    start_server "$name" "$@" || return 0
    IFS=, read -ra wl <<<"$workloads"
    for w in "${wl[@]}"; do
        case $w in
            close) measure "$name" close --mode close --concurrency "$CONC" --duration "$DURATION" ;;
            keepalive) measure "$name" keepalive --mode keepalive --concurrency "$CONC" --duration "$DURATION" ;;
            storm) kill_storm "$name" ;;
        esac
    done
    stop_server
}

SYNC="gunicorn sync (-w $WORKERS)"
GTHREAD="gunicorn gthread (-w $WORKERS --threads $THREADS)"
UVICORN="uvicorn --workers $WORKERS"
LISTEN=(--listen "tcp://127.0.0.1:{PORT}" --workers "$WORKERS" --log error)
# gunicorn's sync worker closes every connection: it has no keep-alive row.
run_server "$SYNC" "$SYNC" "close,storm" "$PY" -m gunicorn -w "$WORKERS" -b "127.0.0.1:{PORT}" --log-level warning python_app:wsgi
run_server "$GTHREAD" "$GTHREAD" "close,keepalive,storm" "$PY" -m gunicorn -w "$WORKERS" -k gthread --threads "$THREADS" -b "127.0.0.1:{PORT}" --log-level warning python_app:wsgi
run_server "handover wsgi (--threads $THREADS)" "$GTHREAD" "close,keepalive,storm" "$T/handover" serve "${LISTEN[@]}" -- "$PY" -m handover_worker wsgi python_app:wsgi --threads "$THREADS"
run_server "$UVICORN" "$UVICORN" "close,keepalive,storm" "$PY" -m uvicorn --workers "$WORKERS" --host 127.0.0.1 --port "{PORT}" --log-level warning --no-access-log python_app:asgi
run_server "handover asgi" "$UVICORN" "close,keepalive,storm" "$T/handover" serve "${LISTEN[@]}" -- "$PY" -m handover_worker asgi python_app:asgi

# --- the table ----------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "$(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)), Python $($PY -c 'import platform; print(platform.python_version())'), $WORKERS workers, ${DURATION}s runs, median of $REPS; servers on CPU 0, load on CPU 1"
echo
echo "| server | workload | req/s | x baseline | server CPU us/req | x baseline | p50 us | p99 us | errors | baseline |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
for key in "${ROWS[@]}"; do
    name=${key%%|*} workload=${key#*|}
    base="${BASE[$name]}|$workload"
    r=${RESULT[$key.rps]} c=${RESULT[$key.cpu]}
    echo "| $name | $workload | $r | $(ratio "$r" "${RESULT[$base.rps]:-0}") | $c | $(ratio "$c" "${RESULT[$base.cpu]:-0}") | ${RESULT[$key.p50]} | ${RESULT[$key.p99]} | ${RESULT[$key.err]} | ${BASE[$name]} |"
done
echo
echo "| server | kill -9 of a random worker every 100 ms, ${STORM}s of the close workload | answered |"
echo "| --- | --- | ---: |"
for name in "$SYNC" "$GTHREAD" "handover wsgi (--threads $THREADS)" "$UVICORN" "handover asgi"; do
    [ -n "${STORM_SHARE[$name]:-}" ] || continue
    echo "| $name | ${STORM_N[$name]}, ${STORM_KILLS[$name]} kills | ${STORM_SHARE[$name]}% |"
done
