#!/usr/bin/env bash
# Install dstack-ray into ./.venv (creating it with uv). Usage: scripts/install.sh [extras]
# e.g. scripts/install.sh test,skypilot. Safe to rerun; only Python packages are touched.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check uv
fi
[ -x .venv/bin/python ] || uv venv --quiet --python "$(command -v python3)" .venv
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
VIRTUAL_ENV="$PWD/.venv" uv pip install --quiet -e "$spec"
# Bytecode ahead of time (uv does not write it): with PYTHONDONTWRITEBYTECODE set, as on some
# machines, Python would compile every module again on each `dstack-ray` call (+0.5 s to a 0.35 s
# `ps`). A file that does not compile (a package's test data) only stays without bytecode.
.venv/bin/python -m compileall -q -j 0 .venv/lib/python*/site-packages dstack_ray cli >/dev/null || true
