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
