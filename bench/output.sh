#!/usr/bin/env bash
# What prefixing workers' output costs (issue 12): prefork, 2 demo workers that write one line to
# stdout per request (--log-requests), the supervisor's stdout to /dev/null, connect-per-request
# load from loadgen; --worker-output prefix (the lines go through the supervisor) against
# inherit (the workers write to /dev/null themselves), alternating, median of --reps.
#
#   bash bench/output.sh [--duration SECS] [--reps R]
#
# Servers run on CPU 0, the load generator on CPU 1. Reports requests/s and the supervisor's
# own CPU time per request (user + system, from /proc/<pid>/stat).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=4 REPS=3
while (($#)); do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        *) echo "usage: bash bench/output.sh [--duration SECS] [--reps R]" >&2; exit 2 ;;
    esac
done
[ "$(nproc)" -ge 2 ] || { echo "bench: needs 2 CPUs" >&2; exit 1; }
cargo build --quiet --release -p bench-servers -p handover-cli -p handover-demo-worker
T=${CARGO_TARGET_DIR:-target}/release
dir=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

run() { # how -> "req/s us-per-req"
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    taskset -c 0 "$T/handover" serve --listen "tcp://127.0.0.1:$port" --workers 2 --control "$dir/c.sock" \
        --worker-output "$1" -- "$T/handover-demo-worker" --log-requests >/dev/null 2>"$dir/err" &
    pid=$!
    for _ in $(seq 100); do "$T/handover" status --control "$dir/c.sock" >/dev/null 2>&1 && break; sleep 0.05; done
    taskset -c 1 "$T/loadgen" "127.0.0.1:$port" --mode connect --concurrency 32 --duration 1 >/dev/null
    local t0 out t1 n
    t0=$(ticks "$pid")
    out=$(taskset -c 1 "$T/loadgen" "127.0.0.1:$port" --mode connect --concurrency 32 --duration "$DURATION")
    t1=$(ticks "$pid")
    kill -TERM "$pid"; wait "$pid" || true; pid=
    n=$(sed -n "s/.*requests=\([0-9]*\).*/\1/p" <<<"$out")
    echo "$((n / DURATION)) $(( (t1 - t0) * 1000000 / hz / (n > 0 ? n : 1) ))"
}

declare -A rate cpu
for how in prefix inherit; do rate[$how]=""; cpu[$how]=""; done
for _ in $(seq "$REPS"); do
    for how in prefix inherit; do
        read -r r c < <(run "$how")
        rate[$how]+="$r "; cpu[$how]+="$c "
    done
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| --worker-output | req/s (median of $REPS) | supervisor CPU us/req | runs (req/s) |"
echo "| --- | ---: | ---: | --- |"
for how in prefix inherit; do
    echo "| $how | $(median <<<"${rate[$how]}") | $(median <<<"${cpu[$how]}") | ${rate[$how]}|"
done
