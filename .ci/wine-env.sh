# Source this (after .ci/setup-wine.sh) to run x86_64-pc-windows-gnu test
# binaries under Wine:
#
#   . .ci/wine-env.sh && cargo test --target x86_64-pc-windows-gnu
#
# Afterwards, `wineserver -k` ends the wineserver that lingers a few seconds.
export WINEPREFIX="${HANDOVER_WINEPREFIX:-$HOME/.cache/handover/wineprefix}"
export WINEARCH=win64
export WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree,mshtml="
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
