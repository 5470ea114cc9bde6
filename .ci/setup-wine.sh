#!/usr/bin/env bash
# Prepare this Debian 12 machine to cross-build Rust for x86_64-pc-windows-gnu
# and run the .exe files under Wine (cargo's runner), so that
#
#   . .ci/wine-env.sh && cargo test --target x86_64-pc-windows-gnu
#
# works. Idempotent: a second run changes nothing and takes well under a second.
#
# Steps: Debian packages (wine, wine64, mingw-w64 gcc), the rustup target, a
# Wine prefix of the project's own outside the repo
# (${HANDOVER_WINEPREFIX:-$HOME/.cache/handover/wineprefix}), and a stand-in
# bcryptprimitives.dll (ProcessPrng) in that prefix when Wine lacks one:
# without it every Rust >= 1.78 .exe exits with code 53 before main.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
target=x86_64-pc-windows-gnu
prefix="${HANDOVER_WINEPREFIX:-$HOME/.cache/handover/wineprefix}"
packages=(wine wine64 gcc-mingw-w64-x86-64)
did=()

log() { printf 'setup-wine: %s\n' "$*"; }

# --- 1. Debian packages ------------------------------------------------------
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    # apt-get update only when a package has no candidate (no or old lists).
    need_update=0
    for p in "${missing[@]}"; do
        cand="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')"
        if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; fi
    done
    if ((need_update)); then
        log "apt-get update"
        "${sudo[@]}" apt-get update -qq
    fi
    log "apt-get install ${missing[*]}"
    if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        # Lists can be stale (404 on a superseded .deb): refresh once, retry.
        log "install failed; apt-get update and retry"
        "${sudo[@]}" apt-get update -qq
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    did+=("installed ${missing[*]}")
fi

# --- 2. Rust target (for the toolchain the repo selects) ---------------------
if ! (cd "$repo" && rustup target list --installed) | grep -qx "$target"; then
    log "rustup target add $target"
    (cd "$repo" && rustup target add "$target")
    did+=("added rust target $target")
fi

# --- 3. Wine prefix ------------------------------------------------------------
export WINEPREFIX="$prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
export WINEARCH=win64
unset DISPLAY WAYLAND_DISPLAY # headless: no dialogs, no X connection attempts
wineserver_bin="$(command -v wineserver || true)"
for c in /usr/lib/wine/wineserver64 /usr/lib/wine/wineserver; do
    [ -n "$wineserver_bin" ] || { [ -x "$c" ] && wineserver_bin="$c"; }
done
[ -n "$wineserver_bin" ] || { echo "setup-wine: wineserver not found" >&2; exit 1; }

sys32="$prefix/drive_c/windows/system32"
if [ ! -f "$prefix/system.reg" ] || [ ! -d "$sys32" ]; then
    log "creating Wine prefix $prefix"
    mkdir -p "$(dirname "$prefix")"
    wine wineboot -i >/dev/null 2>&1
    "$wineserver_bin" -w # wait until the prefix is fully written
    [ -f "$prefix/system.reg" ] || { echo "setup-wine: wineboot did not create $prefix" >&2; exit 1; }
    did+=("created Wine prefix $prefix")
fi

# --- 4. ProcessPrng (bcryptprimitives.dll) -------------------------------------
# Wine >= 9 ships bcryptprimitives.dll with ProcessPrng; Wine 8.0 has none.
wine_provides_prng=0
for d in /usr/lib/x86_64-linux-gnu/wine/x86_64-windows /usr/lib/wine/x86_64-windows \
         /usr/lib64/wine/x86_64-windows /opt/wine*/lib*/wine/x86_64-windows; do
    f="$d/bcryptprimitives.dll"
    if [ -f "$f" ] && grep -qa ProcessPrng "$f"; then wine_provides_prng=1; fi
done
src="$here/wine/bcryptprimitives.c"
def="$here/wine/bcryptprimitives.def"
stamp="$prefix/.handover-bcryptprimitives.sha256"
dll="$sys32/bcryptprimitives.dll"
if ((wine_provides_prng)); then
    log "Wine provides ProcessPrng itself; no stand-in DLL needed"
else
    want="$(cat "$src" "$def" | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$dll" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "building bcryptprimitives.dll (ProcessPrng -> RtlGenRandom)"
        tmp="$(mktemp -d)"
        trap 'rm -rf "$tmp"' EXIT
        x86_64-w64-mingw32-gcc -shared -O2 -s -Wall -Werror \
            -o "$tmp/bcryptprimitives.dll" "$src" "$def" -ladvapi32
        install -m 0644 "$tmp/bcryptprimitives.dll" "$dll"
        echo "$want" >"$stamp"
        did+=("installed bcryptprimitives.dll into $sys32")
    fi
fi

# --- 5. Leave no wineserver behind (it would hold stdout/stderr open) --------
"$wineserver_bin" -k >/dev/null 2>&1 || true

if ((${#did[@]})); then
    for d in "${did[@]}"; do log "$d"; done
else
    log "nothing to do (already set up)"
fi
log "ready: WINEPREFIX=$prefix; use: . .ci/wine-env.sh && cargo test --target $target"
