#!/usr/bin/env bash
# The classic pattern, live: a parent accepts TCP connections on 127.0.0.1 and hands each one
# to a new child process, alternately inherited at spawn and sent over a channel. Three
# clients talk to it; each is served by a different process.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
    echo "demo: cargo not found; install Rust (https://rustup.rs), then run this again" >&2
    exit 1
fi
cargo build --quiet -p handover --example classic_server
log=$(mktemp)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT
target/debug/examples/classic_server 127.0.0.1:0 --max-conns 3 >"$log" 2>&1 &
server_pid=$!
addr=
for _ in $(seq 100); do
    addr=$(sed -n 's/.*listening on \(.*\)$/\1/p' "$log")
    [ -n "$addr" ] && break
    sleep 0.05
done
[ -n "$addr" ] || { echo "demo: the server did not start:" >&2; cat "$log" >&2; exit 1; }
port=${addr##*:}
echo "== server: $(head -n1 "$log")"
for i in 1 2 3; do
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    printf 'hello number %s\nquit\n' "$i" >&3
    echo "== client $i got:"
    timeout 10 cat <&3 | sed 's/^/   /'
    exec 3<&-
done
wait "$server_pid"
server_pid=
echo "== server log:"
sed 's/^/   /' "$log"
