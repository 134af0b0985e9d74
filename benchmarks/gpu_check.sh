#!/usr/bin/env bash
# The prepared GPU check (docs/GPU.md): GPU tests, backend parity and a whole-slide benchmark
# on a 40x-equivalent slide, with its report in $OUT (or out/gpu_check).
#
# On the GPU machine (device tool; carry .gpu_wheels and data/cmu_small_region.svs):
#     bash benchmarks/gpu_check.sh
# Dry run on a CPU machine (same script, small slide; checks the wheel set and the script):
#     bash benchmarks/gpu_check.sh --device cpu --small
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_CHECK_PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${GPU_CHECK_PYTHON:-}" ] && [ ! -e /opt/torch ] && PY=.venv/bin/python
OUTDIR=${OUT:-out/gpu_check}
mkdir -p "$OUTDIR"
# the wheels the machine lacks (CPython 3.12 builds), into a folder of their own; a dry run
# on another Python uses its own environment and only checks the wheel set
if [ -d .gpu_wheels ] && "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  rm -rf .gpu_deps
  "$PY" -m pip install -q --no-index --no-deps --target .gpu_deps .gpu_wheels/*.whl \
    2>&1 | grep -v "^WARNING" || true
  export PYTHONPATH="$PWD:$PWD/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" -m benchmarks.gpu_check --out "$OUTDIR" "$@"
