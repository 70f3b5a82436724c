#!/usr/bin/env bash
# Install everything the tests need (system packages for the container tests, Python packages)
# and run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-system.sh
scripts/install.sh test,skypilot
exec .venv/bin/python -m pytest "$@"
