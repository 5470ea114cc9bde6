#!/usr/bin/env bash
# Installs what the build and the tests need on a Debian machine. Idempotent and quick when
# everything is already there. Run as root or with sudo available.
#
#   bash scripts/setup.sh            # Linux build + tests, and the Windows cross-build under Wine
#   HANDOVER_NO_WINE=1 bash scripts/setup.sh   # skip the Windows toolchain
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*"; }

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found. Install Rust with rustup (https://rustup.rs), then run this again." >&2
    exit 1
fi
if command -v rustup >/dev/null; then
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || { log "rustup component add $c"; rustup component add "$c"; }
    done
fi

# Debian packages used by the tests: python3 for the example Python worker, curl for the
# README's install block (scripts/install-test.sh), python3-venv for the Python package's test
# environment (scripts/setup-python.sh).
packages=(python3 curl)
missing=()
for p in "${packages[@]}"; do
    command -v "$p" >/dev/null || missing+=("$p")
done
# logrotate for the --log-file rotation test (in /usr/sbin, not on every user's PATH).
command -v logrotate >/dev/null || [ -x /usr/sbin/logrotate ] || missing+=(logrotate)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# systemd-socket-activate (package systemd) for the supervisor's socket-activation test.
command -v systemd-socket-activate >/dev/null || [ -x /usr/lib/systemd/systemd-socket-activate ] \
    || missing+=(systemd)
# man (package man-db) renders the generated man page in the supervisor's tests.
command -v man >/dev/null || missing+=(man-db)
# HAProxy (send-proxy-v2) in front of the supervisor in the PROXY protocol test.
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if ((${#missing[@]})); then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get install ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bash scripts/setup-python.sh

if [ -z "${HANDOVER_NO_WINE:-}" ]; then
    bash .ci/setup-wine.sh
    bash .ci/setup-wine-python.sh
fi
