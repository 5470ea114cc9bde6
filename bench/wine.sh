#!/usr/bin/env bash
# The supervisor on Windows (under Wine) against the library's classic example, in one run:
#
#   bash bench/wine.sh [--duration SECS] [--reps R] [--conc C] [--workers N]
#
# Servers (release builds for x86_64-pc-windows-gnu, run by Wine 8.0, pinned to CPU 0):
#   classic      examples/classic_server.rs --mode channel --http: the parent accepts and starts
#                a child per connection, which gets the socket over a channel
#                (WSADuplicateSocketW + named pipe: the classic Windows pattern)
#   prefork      handover.exe serve -w N -- handover-demo-worker.exe
#   spawn        handover.exe serve --mode spawn -- handover-demo-worker.exe (stdin/stdout)
# Load: bench-servers' loadgen (Linux, CPU 1), a fresh connection per request, nothing retried.
# CPU per request: user + system time of the server's session (every Windows process of the
# server, reaped children included) plus the wineserver's, which works for all of them,
# divided by requests answered. Each figure is the median of --reps runs; ratios are against
# the classic example measured in the same run. Wine is not Windows: these figures say what
# handover costs relative to the classic pattern under the same emulation, not what Windows
# would do.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=5 REPS=3 CONC=8 WORKERS=2
while (($#)); do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --conc) CONC=$2; shift 2 ;;
        --workers) WORKERS=$2; shift 2 ;;
        *) echo "usage: bash bench/wine.sh [--duration SECS] [--reps R] [--conc C] [--workers N]" >&2; exit 2 ;;
    esac
done
[ "$(nproc)" -ge 2 ] || { echo "bench: needs 2 CPUs (servers on CPU 0, load on CPU 1)" >&2; exit 1; }

bash .ci/setup-wine.sh
# shellcheck source=/dev/null
. .ci/wine-env.sh
command -v taskset >/dev/null || { echo "bench: taskset missing (apt-get install util-linux)" >&2; exit 1; }
echo "building release binaries..." >&2
cargo build --quiet --release -p bench-servers
cargo build --quiet --release --target x86_64-pc-windows-gnu -p handover-cli -p handover-demo-worker --bins
cargo build --quiet --release --target x86_64-pc-windows-gnu -p handover --example classic_server
T=${CARGO_TARGET_DIR:-target}
L=$T/release
W=$T/x86_64-pc-windows-gnu/release
winpath() { printf 'Z:%s' "$(realpath "$1")" | tr / '\\'; }
HANDOVER=$W/handover.exe
WORKER=$(winpath "$W/handover-demo-worker.exe")
CLASSIC=$W/examples/classic_server.exe

logdir=$(mktemp -d)
server_sid=
cleanup() {
    [ -n "$server_sid" ] && kill -KILL -- "-$server_sid" 2>/dev/null || true
    wineserver -k >/dev/null 2>&1 || true
    rm -rf "$logdir"
}
trap cleanup EXIT
# Wine's helper processes start once, quietly, outside the servers' sessions.
wineserver -p </dev/null >/dev/null 2>&1
wine cmd /c exit </dev/null >/dev/null 2>&1 || true

hz=$(getconf CLK_TCK)
ticks() { # the server session's processes (reaped children included), plus the wineserver
    local ws
    ws=$(pgrep -d, -x 'wineserver|wineserver64' || true)
    cat /proc/[0-9]*/stat 2>/dev/null | awk -v sid="$server_sid" -v ws=",$ws," '
        { pid = $1; sub(/^.*\) /, "");
          if ($4 == sid) t += $12 + $13 + $14 + $15;
          else if (index(ws, "," pid ",")) t += $12 + $13 }
        END { print t + 0 }'
}

port=19500
start_server() { # name, then the command
    local name=$1; shift
    port=$((port + 1))
    local cmd=("${@//\{PORT\}/$port}")
    setsid taskset -c 0 "${cmd[@]}" >"$logdir/$name.log" 2>&1 </dev/null &
    server_sid=$!
    for _ in $(seq 400); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then sleep 1; return 0; fi
        kill -0 "$server_sid" 2>/dev/null || break
        sleep 0.05
    done
    echo "bench: $name did not start:" >&2; cat "$logdir/$name.log" >&2
    stop_server; return 1
}
stop_server() {
    [ -n "$server_sid" ] || return 0
    kill -KILL -- "-$server_sid" 2>/dev/null || true
    wait "$server_sid" 2>/dev/null || true
    server_sid=
    sleep 1
}

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print 0 }'; }
field() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

declare -A RPS CPU ERR
NAMES=()
measure() { # name
    local name=$1 rps=() cpu=() errs=() b a out n
    # Warm-up: the first connections start processes and fill caches.
    taskset -c 1 "$L/loadgen" "127.0.0.1:$port" --mode connect --concurrency "$CONC" --duration 1 >/dev/null
    for _ in $(seq "$REPS"); do
        b=$(ticks)
        out=$(taskset -c 1 "$L/loadgen" "127.0.0.1:$port" --mode connect --concurrency "$CONC" --duration "$DURATION")
        a=$(ticks)
        n=$(field requests "$out")
        rps+=("$(field rps "$out")")
        cpu+=("$(awk -v d=$((a - b)) -v n="$n" -v hz="$hz" 'BEGIN { printf "%.0f", n ? d * 1e6 / hz / n : 0 }')")
        errs+=("$(( $(field refused "$out") + $(field reset "$out") + $(field unanswered "$out") + $(field timeouts "$out") + $(field other "$out") ))")
    done
    RPS[$name]=$(printf '%s\n' "${rps[@]}" | median)
    CPU[$name]=$(printf '%s\n' "${cpu[@]}" | median)
    ERR[$name]=$(printf '%s\n' "${errs[@]}" | sort -g | tail -n1)
    NAMES+=("$name")
    echo "  $name: ${RPS[$name]} req/s, ${CPU[$name]} us CPU/req (runs: ${rps[*]}; CPU ${cpu[*]})" >&2
}

run() { # name, command...
    local name=$1; shift
    echo "== $name" >&2
    start_server "$name" "$@" || return 0
    measure "$name"
    stop_server
}

run classic wine "$CLASSIC" "127.0.0.1:{PORT}" --mode channel --http
run prefork wine "$HANDOVER" serve -l "tcp://127.0.0.1:{PORT}" -w "$WORKERS" \
    --control "$(winpath "$logdir")\\prefork.ctl" -- "$WORKER"
run spawn wine "$HANDOVER" serve --mode spawn -l "tcp://127.0.0.1:{PORT}" -w 16 \
    --control "$(winpath "$logdir")\\spawn.ctl" -- "$WORKER"

echo
echo "Wine $(wine --version 2>/dev/null | tr -d '\r'), $(nproc) CPUs, connect-per-request, $CONC clients, ${DURATION}s x $REPS (median)"
echo
echo "| server (under Wine) | req/s | x classic | CPU us/req | x classic | errors |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
base_rps=${RPS[classic]:-0} base_cpu=${CPU[classic]:-0}
for n in "${NAMES[@]}"; do
    awk -v n="$n" -v r="${RPS[$n]}" -v c="${CPU[$n]}" -v e="${ERR[$n]}" -v br="$base_rps" -v bc="$base_cpu" 'BEGIN {
        printf "| %s | %.0f | %.2f | %.0f | %.2f | %d |\n", n, r, br ? r / br : 0, c, bc ? c / bc : 0, e }'
done
