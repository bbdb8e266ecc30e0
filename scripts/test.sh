#!/usr/bin/env bash
# Set up a fresh machine and run every test: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test

# The tests use the machine's PostgreSQL (127.0.0.1:5432, database `test`); start it if it is down.
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "== starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
fi

. .venv/bin/activate
echo "== generated gRPC code is up to date"
python -m proto.codegen --check
echo "== C kernel tests: every SIMD variant against the scalar reference (x86 here, NEON under qemu)"
make -s -C kernels/tests_c native aarch64
echo "== pytest"
python -m pytest -q "$@"
