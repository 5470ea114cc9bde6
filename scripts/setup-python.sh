#!/usr/bin/env bash
# The Python test environment: a venv at target/pyenv with the pinned packages of
# python/requirements-test.txt and handover-worker (python/) installed editable.
# Called by scripts/setup.sh. Idempotent: does nothing when the pins have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/pyenv
req=python/requirements-test.txt
stamp=$venv/.installed
want="$(sha256sum "$req" python/pyproject.toml | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python3" ]; then
    exit 0
fi
echo "setup-python: creating $venv"
rm -rf "$venv"
python3 -m venv "$venv"
# --no-deps, then pip check: every package comes from the pins, and a missing pin fails here.
"$venv/bin/python3" -m pip install --quiet --disable-pip-version-check --no-deps -r "$req"
"$venv/bin/python3" -m pip check >/dev/null
# --no-build-isolation: the build backend (flit-core) is pinned above, not fetched again.
"$venv/bin/python3" -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation -e python
echo "$want" >"$stamp"
