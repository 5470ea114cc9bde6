#!/usr/bin/env bash
# The test suite: sets up what it needs, then runs every Linux test and the Windows build's
# tests under Wine.
#
#   bash scripts/test.sh                   # everything
#   HANDOVER_NO_WINE=1 bash scripts/test.sh   # Linux only
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== Linux: cargo test --workspace --all-features"
cargo test --workspace --all-features

echo "== Linux: the Python package handover-worker (python/tests), served by the real supervisor"
cargo build --workspace --all-features --bin handover  # as cargo test built it: no rebuild
# No `|| true` anywhere: pytest's exit 5 (no test collected) fails the suite like a failure.
HANDOVER_BIN="$PWD/target/debug/handover" target/pyenv/bin/python3 -m pytest -q -p no:cacheprovider python/tests

if [ -z "${HANDOVER_NO_WINE:-}" ]; then
    echo "== Windows (x86_64-pc-windows-gnu) under Wine: the library, the worker helper, the shared cross-process tests"
    # shellcheck source=/dev/null
    . .ci/wine-env.sh
    # Wine's helper processes inherit stdout and linger; start them quietly, stop them after.
    wineserver -p </dev/null >/dev/null 2>&1 || true
    trap 'wineserver -k >/dev/null 2>&1 || true' EXIT
    cargo test -p handover -p integration-tests -p handover-worker --all-features \
        --target x86_64-pc-windows-gnu
    # The demo worker played against a test supervisor. (The supervisor's other test files
    # drive a Linux supervisor; the Windows one is driven from Linux below.)
    echo "== Windows under Wine: the demo worker (prefork, spawn, shared)"
    cargo test -p handover-demo-worker --all-features --target x86_64-pc-windows-gnu \
        --test windows_demo_worker
    echo "== Windows under Wine: handover.exe serve (prefork, spawn, shared, upgrade, stop) driven from Linux clients"
    cargo build -p handover-cli -p handover-demo-worker -p integration-tests --bins --target x86_64-pc-windows-gnu
    cargo test -p handover-cli --test wine -- --ignored
    echo "== Windows under Wine: handover-worker (python/tests/test_serve.py): handover.exe and the embeddable CPython 3.13, driven from Linux clients"
    HANDOVER_TEST_WINE=1 target/pyenv/bin/python3 -m pytest -q -p no:cacheprovider python/tests/test_serve.py
fi
