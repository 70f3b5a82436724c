#!/usr/bin/env bash
# The main job: install dstack-ray and run an example task on the embedded local Ray head.
# The head keeps running afterwards (like `dstack server`); stop it with `.venv/bin/dstack-ray server stop`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/dstack-ray apply -f examples/hello.dstack.yml -y "$@"
