#!/usr/bin/env bash
# The README's "Quick start", as a new user follows it:
#  1. cargo install --locked --path crates/handover-cli, into a fresh --root;
#  2. that root's bin holds `handover` and nothing else (no demo worker on users' PATH);
#  3. the README block marked "scripts/install-test.sh runs the next block" runs as written,
#     with PATH = that bin + /usr/bin:/bin (python3, curl), a private XDG_RUNTIME_DIR (so the
#     default control socket is this run's own) and port 8080 replaced by a free one (other
#     programs on the machine may hold 8080); its output must show a worker's answer and
#     both workers in the status table, and the supervisor must have exited 0 after
#     `handover stop`.
# Bounded: the install by `timeout 600` (a first build on a fresh machine), the block by 60 s.
#
# --debug and the workspace's target directory: the install reuses what the build and the
# tests compiled (a release build from nothing takes several minutes on 2 cores); the release
# profile differs only in optimisation, which this test does not exercise.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

tmp=$(mktemp -d)
cleanup() {
    # A block that failed half-way may have left its supervisor running.
    if [ -S "$tmp/run/handover.sock" ]; then
        timeout 10 "$tmp/root/bin/handover" stop --control "$tmp/run/handover.sock" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

echo "== cargo install --locked --path crates/handover-cli --root $tmp/root"
install=(cargo install --quiet --locked --debug --root "$tmp/root" --path crates/handover-cli
    --target-dir "${CARGO_TARGET_DIR:-$repo/target}")
# Offline when everything is fetched already (in CI: the build before this); else online.
timeout 600 "${install[@]}" --offline 2>/dev/null || timeout 600 "${install[@]}"
installed=$(cd "$tmp/root/bin" && ls)
[ "$installed" = handover ] || { echo "install-test: expected only handover in bin/, got: $installed" >&2; exit 1; }

# The block: the ```sh block right after the marker line.
block=$(awk '/^<!-- scripts\/install-test.sh runs the next block/ {m = 1; next}
             m == 1 && /^```sh$/ {m = 2; next}
             m == 2 && /^```$/ {exit}
             m == 2 {print}' README.md)
[ -n "$block" ] || { echo "install-test: no marked block in README.md" >&2; exit 1; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -m 700 "$tmp/run"
echo "== the README block, PATH=$tmp/root/bin:/usr/bin:/bin, port 8080 -> $port"
printf '%s\n' "$block" | sed 's/^/   /'

# The block's trailing `&` leaves the supervisor running in the block's shell; `wait` there
# reports how it exited after `handover stop`.
script="set -euo pipefail
[ \"\$(command -v handover)\" = '$tmp/root/bin/handover' ]
$(printf '%s\n' "$block" | sed "s/8080/$port/g")
wait \$! && echo 'install-test: supervisor exited 0'"
out=$tmp/out
if ! env -i PATH="$tmp/root/bin:/usr/bin:/bin" HOME="$tmp" XDG_RUNTIME_DIR="$tmp/run" LANG=C.UTF-8 \
    timeout 60 bash -c "$script" >"$out" 2>&1; then
    echo "install-test: the README block failed:" >&2
    cat "$out" >&2
    exit 1
fi
sed 's/^/   /' "$out"
grep -q '^hello from the python worker [0-9]' "$out" || { echo "install-test: no answer from a worker" >&2; exit 1; }
# Both workers in the status table; the one that answered is ready (the other may still be
# starting on a loaded machine).
if [ "$(grep -cE ' (ready|starting) ' "$out")" -lt 2 ] || ! grep -q ' ready ' "$out"; then
    echo "install-test: status does not show the two workers" >&2
    exit 1
fi
grep -q '^install-test: supervisor exited 0$' "$out" || { echo "install-test: the supervisor did not exit 0" >&2; exit 1; }
echo "install-test: ok"
