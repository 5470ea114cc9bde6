#!/usr/bin/env bash
# Load benchmark: handover against the alternatives, in one run, on 127.0.0.1.
#
#   bash bench/run.sh [--workers N] [--duration SECS] [--reps R] [--rate CONN_PER_SEC] [--only REGEX]
#
# Workloads (the load generator is crates/bench-servers/src/bin/loadgen.rs):
#   close      what most clients do: a new connection per request saying `Connection: close`;
#              the server answers and ends the stream, the client reads to the end, then closes
#              (the server's FIN and TIME_WAIT are in the cost); 32 clients
#   reset      a new connection per request that the client resets (SO_LINGER 0) right after
#              the response: the server's close is not measured (kept for comparison only); 32
#   keepalive  32 connections, requests back to back on each
#   rate       the close workload at a fixed rate (--rate, default 3000/s), open loop: latency
#              counts from the scheduled start
# Full workers: the same workers declaring a capacity of 1 and of 4 connections at once, against
# a hand-rolled acceptor whose workers serve as many at a time and tell it when done.
#
# Servers run pinned to CPU 0, the load generator to CPU 1 (taskset), so the generator's
# saturation does not hide the servers' cost. For each server and workload it reports
# requests/s at full load, server CPU microseconds per request (user + system time of every
# process of the server, its exited children included, from /proc/<pid>/stat, divided by
# requests answered), latency percentiles, and errors; each figure is the
# median of --reps runs. Ratios are against the SO_REUSEPORT ceiling (rate) and the hand-rolled
# SCM_RIGHTS acceptor (CPU per connection), measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=2 DURATION=4 REPS=3 RATE=3000 CONC=32 ONLY=.
while (($#)); do
    case "$1" in
        --workers) WORKERS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        *) echo "usage: bash bench/run.sh [--workers N] [--duration SECS] [--reps R] [--rate N] [--only REGEX]" >&2; exit 2 ;;
    esac
done
[ "$(nproc)" -ge 2 ] || { echo "bench: needs 2 CPUs (servers on CPU 0, load on CPU 1)" >&2; exit 1; }

# --- install and build --------------------------------------------------------------------
need=()
command -v socat >/dev/null || need+=(socat)
command -v node >/dev/null || need+=(nodejs)
command -v taskset >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
    sudo=(); [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || { "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
fi
ulimit -n 65536 2>/dev/null || true
echo "building release binaries..." >&2
cargo build --quiet --release -p bench-servers
HANDOVER_BIN=
if [ -f crates/handover-cli/Cargo.toml ]; then
    cargo build --quiet --release -p handover-cli && HANDOVER_BIN=${CARGO_TARGET_DIR:-target}/release/handover
fi
T=${CARGO_TARGET_DIR:-target}/release
RUST_WORKER=$T/bench-worker
HANDOVER_RUST_WORKER=${HANDOVER_RUST_WORKER:-$T/bench-worker prefork}
HANDOVER_NODE_WORKER=${HANDOVER_NODE_WORKER:-examples/workers/worker.js}

# --- helpers ------------------------------------------------------------------------------
# shellcheck source=bench/lib.sh
. bench/lib.sh

ROWS=()
declare -A BASE # server name -> the server its ratios are against
run_server() { # name, workloads (comma list), command...
    local name=$1 workloads=$2; shift 2
    BASE[$name]=${BASE[$name]:-$ACCEPTOR}
    [[ $name =~ $ONLY ]] || return 0
    echo "== $name" >&2
    start_server "$name" "$@" || return 0
    IFS=, read -ra wl <<<"$workloads"
    for w in "${wl[@]}"; do
        case $w in
            close) measure "$name" close --mode close --concurrency "$CONC" --duration "$DURATION" ;;
            reset) measure "$name" reset --mode connect --concurrency "$CONC" --duration "$DURATION" ;;
            keepalive) measure "$name" keepalive --mode keepalive --concurrency "$CONC" --duration "$DURATION" ;;
            rate) measure "$name" "rate $RATE/s" --mode close --concurrency 256 --duration "$DURATION" --rate "$RATE" ;;
        esac
    done
    stop_server
}

# --- the servers --------------------------------------------------------------------------
ACCEPTOR="hand-rolled SCM_RIGHTS acceptor"
CEILING="SO_REUSEPORT x$WORKERS (ceiling)"
BASE[$CEILING]=$ACCEPTOR
run_server "$CEILING" "close,reset,keepalive,rate" sh -c "for i in \$(seq $WORKERS); do $RUST_WORKER reuseport 127.0.0.1:{PORT} & done; wait"
run_server "$ACCEPTOR" "close,reset,keepalive,rate" "$T/scm-acceptor" "127.0.0.1:{PORT}" "$WORKERS" "$RUST_WORKER"
if [ -n "$HANDOVER_BIN" ] && [ -n "$HANDOVER_RUST_WORKER" ]; then
    run_server "handover prefork (Rust worker)" "close,reset,keepalive,rate" "$HANDOVER_BIN" serve --listen "tcp://127.0.0.1:{PORT}" --workers "$WORKERS" --mode prefork -- $HANDOVER_RUST_WORKER
fi
# Full workers: each serves at most CAP connections at once.
for cap in 4 1; do
    acceptor="$ACCEPTOR, capacity $cap"
    BASE[$acceptor]=$acceptor
    run_server "$acceptor" "close" "$T/scm-acceptor" "127.0.0.1:{PORT}" "$WORKERS" "$RUST_WORKER" "$cap"
    if [ -n "$HANDOVER_BIN" ]; then
        BASE["handover prefork, capacity $cap"]=$acceptor
        run_server "handover prefork, capacity $cap" "close" "$HANDOVER_BIN" serve --listen "tcp://127.0.0.1:{PORT}" --workers "$WORKERS" --mode prefork -- "$T/bench-worker" prefork --capacity "$cap"
    fi
done
if [ -n "$HANDOVER_BIN" ]; then
    run_server "handover shared (Rust worker)" "close,keepalive" "$HANDOVER_BIN" serve --listen "tcp://127.0.0.1:{PORT}" --workers "$WORKERS" --mode shared -- "$RUST_WORKER" inherited
    run_server "handover spawn (once-http)" "close,rate" "$HANDOVER_BIN" serve --listen "tcp://127.0.0.1:{PORT}" --mode spawn -- "$T/once-http"
fi
run_server "fork+exec per connection (once-http)" "close,rate" "$T/forkexec-server" "127.0.0.1:{PORT}" "$T/once-http"
run_server "socat fork (once-http)" "close,rate" socat "TCP-LISTEN:{PORT},bind=127.0.0.1,reuseaddr,fork,backlog=1024" "EXEC:$T/once-http"
run_server "Node.js cluster round-robin" "close,keepalive" node bench/node-cluster.js "{PORT}" "$WORKERS" rr
run_server "Node.js cluster OS scheduling" "close,keepalive" node bench/node-cluster.js "{PORT}" "$WORKERS" os
if [ -n "$HANDOVER_BIN" ] && [ -f "$HANDOVER_NODE_WORKER" ]; then
    # Node's standard library cannot receive SCM_RIGHTS, so the Node worker runs in shared mode.
    run_server "handover shared (Node.js worker)" "close" "$HANDOVER_BIN" serve --listen "tcp://127.0.0.1:{PORT}" --workers "$WORKERS" --mode shared -- node "$HANDOVER_NODE_WORKER"
fi

# --- the table ----------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "$(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)), $WORKERS workers, ${DURATION}s runs, median of $REPS; servers on CPU 0, load on CPU 1"
echo "Ratios are against the baseline named in the row (the hand-rolled acceptor with the same worker capacity), in the same workload and run; x ceiling is against SO_REUSEPORT."
echo
echo "| server | workload | req/s | x baseline | x ceiling | server CPU us/req | x baseline | p50 us | p99 us | x baseline | p99.9 us | errors | baseline |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
for key in "${ROWS[@]}"; do
    name=${key%%|*} workload=${key#*|}
    base="${BASE[$name]}|$workload"
    r=${RESULT[$key.rps]} c=${RESULT[$key.cpu]} p99=${RESULT[$key.p99]}
    echo "| $name | $workload | $r | $(ratio "$r" "${RESULT[$base.rps]:-0}") | $(ratio "$r" "${RESULT[$CEILING|$workload.rps]:-0}") | $c | $(ratio "$c" "${RESULT[$base.cpu]:-0}") | ${RESULT[$key.p50]} | $p99 | $(ratio "$p99" "${RESULT[$base.p99]:-0}") | ${RESULT[$key.p999]} | ${RESULT[$key.err]} | ${BASE[$name]} |"
done

# --- scale: supervisor memory and descriptors --------------------------------------------
[[ scale =~ $ONLY ]] || [ "$ONLY" = . ] || exit 0
[ -n "$HANDOVER_BIN" ] || exit 0
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
prefork() { # workers
    start_server "scale" "$HANDOVER_BIN" serve --listen "tcp://127.0.0.1:{PORT}" --workers "$1" --mode prefork \
        --control "$logdir/scale.sock" --log error -- "$T/bench-worker" prefork
    # Every worker has said hello once the status lists them all ready.
    for _ in $(seq 100); do
        [ "$("$HANDOVER_BIN" status --control "$logdir/scale.sock" --json | grep -o '"state":"ready"' | wc -l)" -ge "$1" ] && break
        sleep 0.1
    done
}
echo
echo "| supervisor (prefork, Rust workers) | resident memory | descriptors |"
echo "| --- | ---: | ---: |"
for w in 2 16 64; do
    prefork "$w"
    echo "| $w workers, idle | $(rss_kib "$server_pgid") KiB | $(fds "$server_pgid") |"
    stop_server
done
prefork 2
taskset -c 1 "$T/loadgen" "127.0.0.1:$port" --mode close --concurrency 32 --duration 2 >/dev/null
echo "| 2 workers, after warm-up | $(rss_kib "$server_pgid") KiB | $(fds "$server_pgid") |"
total=0
while [ "$total" -lt 1000000 ]; do
    out=$(taskset -c 1 "$T/loadgen" "127.0.0.1:$port" --mode connect --concurrency 32 --duration 5)
    total=$((total + $(field requests "$out")))
done
# The supervisor keeps its copy of a connection until it reads the worker's FINISHED, which it
# does within a tick (20 ms) once the load stops: count after that.
sleep 0.2
echo "| 2 workers, after $total more hand-offs | $(rss_kib "$server_pgid") KiB | $(fds "$server_pgid") |"
taskset -c 1 "$T/loadgen" "127.0.0.1:$port" --mode hold --concurrency 10000 --duration 3 >"$logdir/hold.out" &
hold=$!
for _ in $(seq 600); do grep -q holding "$logdir/hold.out" && break; sleep 0.1; done
echo "| 2 workers, 10,000 connections held open | $(rss_kib "$server_pgid") KiB | $(fds "$server_pgid") |"
wait "$hold"
echo
echo "10,000 held connections: $(tail -n1 "$logdir/hold.out")"
stop_server
