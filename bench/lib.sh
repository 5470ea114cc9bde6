# Shared by the load benchmarks (bench/run.sh, bench/python.sh): start and stop a server
# pinned to CPU 0 in a session of its own, measure it with crates/bench-servers' load generator
# pinned to CPU 1, and keep each figure as the median of $REPS runs. Source it after setting
# T (the release target directory) and REPS.

logdir=$(mktemp -d)
server_pgid=
cleanup() {
    [ -n "$server_pgid" ] && kill -KILL -- "-$server_pgid" 2>/dev/null || true
    rm -rf "$logdir"
}
trap cleanup EXIT

# CPU ticks of the server's process tree: every process in its session (the server runs under
# setsid), user + system, plus what its reaped children used (cutime + cstime), so a
# process-per-connection server counts its children. Steadier than CPU 0's busy time, which
# also holds whatever else ran there.
server_ticks() {
    cat /proc/[0-9]*/stat 2>/dev/null | awk -v sid="$server_pgid" '
        { sub(/^.*\) /, ""); if ($4 == sid) t += $12 + $13 + $14 + $15 } END { print t + 0 }'
}
hz=$(getconf CLK_TCK)

port=19000
start_server() { # name, then the command
    local name=$1; shift
    port=$((port + 1))
    local cmd=("${@//\{PORT\}/$port}")
    setsid taskset -c 0 "${cmd[@]}" >"$logdir/$name.log" 2>&1 &
    server_pgid=$!
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then sleep 0.3; return 0; fi
        kill -0 "$server_pgid" 2>/dev/null || break
        sleep 0.05
    done
    echo "bench: $name did not start:" >&2; cat "$logdir/$name.log" >&2
    stop_server; return 1
}
stop_server() {
    [ -n "$server_pgid" ] || return 0
    kill -TERM -- "-$server_pgid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 -- "-$server_pgid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL -- "-$server_pgid" 2>/dev/null || true
    wait "$server_pgid" 2>/dev/null || true
    server_pgid=
}

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print 0 }'; }
field() { local v; v=$(sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" <<<"$2"); echo "${v:-0}"; }

declare -A RESULT
measure() { # name workload loadgen-args...
    local name=$1 workload=$2; shift 2
    local rps=() cpu=() p50=() p99=() p999=() errs=()
    for _ in $(seq "$REPS"); do
        local b a out n
        b=$(server_ticks)
        # A load generator that fails (it cannot open more sockets, say) counts as a run with
        # nothing answered and one error, instead of ending the whole benchmark.
        out=$(taskset -c 1 "$T/loadgen" "127.0.0.1:$port" "$@") \
            || { echo "  $name / $workload: the load generator failed" >&2; out="requests=0 rps=0 other=1"; }
        a=$(server_ticks)
        n=$(field requests "$out")
        rps+=("$(field rps "$out")")
        cpu+=("$(awk -v d=$((a - b)) -v n="$n" -v hz="$hz" 'BEGIN { printf "%.1f", n ? d * 1e6 / hz / n : 0 }')")
        p50+=("$(field p50_us "$out")"); p99+=("$(field p99_us "$out")"); p999+=("$(field p999_us "$out")")
        errs+=("$(( $(field refused "$out") + $(field reset "$out") + $(field unanswered "$out") + $(field timeouts "$out") + $(field other "$out") ))")
    done
    local key="$name|$workload"
    RESULT[$key.rps]=$(printf '%s\n' "${rps[@]}" | median)
    RESULT[$key.cpu]=$(printf '%s\n' "${cpu[@]}" | median)
    RESULT[$key.p50]=$(printf '%s\n' "${p50[@]}" | median)
    RESULT[$key.p99]=$(printf '%s\n' "${p99[@]}" | median)
    RESULT[$key.p999]=$(printf '%s\n' "${p999[@]}" | median)
    RESULT[$key.err]=$(printf '%s\n' "${errs[@]}" | sort -g | tail -n1)
    ROWS+=("$key")
    echo "  $name / $workload: ${RESULT[$key.rps]} req/s, ${RESULT[$key.cpu]} us CPU/req (runs: ${rps[*]})" >&2
}

