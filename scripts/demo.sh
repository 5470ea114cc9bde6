#!/usr/bin/env bash
# The demo, on 127.0.0.1 only:
#  1. `handover serve` runs three Python workers in prefork mode: the supervisor accepts each
#     connection and hands it to a worker; we kill one worker with SIGKILL under way and the
#     supervisor replaces it; `handover status` shows the workers; `handover stop` drains.
#  2. The classic pattern with the library alone: a parent accepts, and a child process per
#     connection serves it, the socket inherited at spawn or sent over a channel.
set -euo pipefail
cd "$(dirname "$0")/.."

HANDOVER_NO_WINE=1 bash scripts/setup.sh >/dev/null
echo "== building (cargo build -p handover-cli, the classic_server example)"
cargo build --quiet -p handover-cli -p handover --bins --example classic_server
tdir=${CARGO_TARGET_DIR:-target}
bin=$tdir/debug/handover

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "demo: nothing listens on port $1" >&2
    return 1
}
http_get() { # prints the response body
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf 'GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n' >&3
    timeout 10 cat <&3 | sed -n '/^\r\{0,1\}$/,$p' | sed '1d'
    exec 3<&-
}

# --- 1. the supervisor ----------------------------------------------------------------------
port=$(free_port)
ctl="$tmp/handover.sock"
echo
echo "== handover serve --listen tcp://127.0.0.1:$port --workers 3 -- python3 examples/workers/worker.py"
"$bin" serve --listen "tcp://127.0.0.1:$port" --workers 3 --control "$ctl" --log warn \
    -- python3 examples/workers/worker.py &
sup=$!
pids+=("$sup")
wait_port "$port"
ready_workers() {
    "$bin" status --control "$ctl" --json |
        python3 -c 'import json, sys; print(sum(w["state"] == "ready" for p in json.load(sys.stdin)["programs"] for w in p["workers"]))'
}
for _ in $(seq 100); do
    [ "$(ready_workers)" -ge 3 ] && break
    sleep 0.05
done
for i in 1 2 3 4 5 6; do
    printf '   request %s -> %s\n' "$i" "$(http_get "$port")"
done
echo "== handover status"
"$bin" status --control "$ctl" | sed 's/^/   /'
victim=$("$bin" status --control "$ctl" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["programs"][0]["workers"][0]["pid"])')
echo "== kill -9 $victim (a worker), then six more requests"
kill -9 "$victim"
for i in 7 8 9 10 11 12; do
    printf '   request %s -> %s\n' "$i" "$(http_get "$port")"
done
sleep 1.5
echo "== handover status (the killed worker was replaced)"
"$bin" status --control "$ctl" | sed 's/^/   /'
echo "== handover stop (drain, then exit)"
"$bin" stop --control "$ctl"
wait "$sup" && echo "   supervisor exited with status 0"

# --- 2. the classic pattern, library only ---------------------------------------------------
echo
echo "== the classic pattern: cargo run -p handover --example classic_server -- 127.0.0.1:0"
log="$tmp/classic.log"
"$tdir"/debug/examples/classic_server 127.0.0.1:0 --max-conns 3 >"$log" 2>&1 &
server=$!
pids+=("$server")
addr=
for _ in $(seq 100); do
    addr=$(sed -n 's/.*listening on \(.*\)$/\1/p' "$log")
    [ -n "$addr" ] && break
    sleep 0.05
done
[ -n "$addr" ] || { echo "demo: the classic server did not start:" >&2; cat "$log" >&2; exit 1; }
cport=${addr##*:}
for i in 1 2 3; do
    exec 3<>"/dev/tcp/127.0.0.1/$cport"
    printf 'hello number %s\nquit\n' "$i" >&3
    echo "   client $i got:"
    timeout 10 cat <&3 | sed 's/^/     /'
    exec 3<&-
done
wait "$server"
echo "   server log:"
sed 's/^/     /' "$log"
