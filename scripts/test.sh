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

if [ -z "${HANDOVER_NO_WINE:-}" ]; then
    echo "== Windows (x86_64-pc-windows-gnu) under Wine: the library and the shared cross-process tests"
    # shellcheck source=/dev/null
    . .ci/wine-env.sh
    # Wine's helper processes inherit stdout and linger; start them quietly, stop them after.
    wineserver -p </dev/null >/dev/null 2>&1 || true
    trap 'wineserver -k >/dev/null 2>&1 || true' EXIT
    cargo test -p handover -p integration-tests --all-features --target x86_64-pc-windows-gnu
fi
