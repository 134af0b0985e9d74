#!/usr/bin/env bash
# One set-up command for a fresh Debian machine (Python 3.11, root): apt packages, ./.venv with
# everything (engine, CLI, Triton client, Girder plugin stack, tests, training), the real data
# files (sha256-checked), the isolated Triton server env and the HistomicsUI web client.
# Idempotent: running it again only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

echo "== apt packages"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  for p in $(cat scripts/apt-packages.txt); do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
fi

echo "== python venv ./.venv"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e '.[cli,triton,plugin,train,dev]' 2>&1 | grep -v "^WARNING: Location" || true
# HistomicsTK (our classical peer and feature reference) pins dask<2024.11: install it without
# its pins, with its runtime dependencies listed explicitly (docs/DESIGN.md section 5).
.venv/bin/python -m pip install -q -r scripts/histomicstk-deps.txt 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --no-deps histomicstk==1.4.0 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import slicer_cli.nuclei.pipeline, histomicstk, girder, tritonclient.grpc"

echo "== data"
.venv/bin/python scripts/fetch_data.py 2>&1 | grep -v "^WARNING: Location" || true

echo "== wheels the GPU machine lacks (docs/GPU.md)"
bash scripts/fetch_gpu_wheels.sh

for extra in scripts/setup_triton_env.sh scripts/setup_girder.sh; do
  if [ -f "$extra" ]; then
    echo "== $extra"
    bash "$extra"
  fi
done
echo "set-up done: activate with 'source .venv/bin/activate'"
