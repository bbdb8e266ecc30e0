#!/usr/bin/env bash
# Set up a fresh machine and run the end-to-end demo: bash scripts/demo.sh [demo options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/edgefleet demo "$@"
