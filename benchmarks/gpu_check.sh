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
OUTDIR=${OUT:-out/gpu_check}
mkdir -p "$OUTDIR"
. scripts/gpu_env.sh GPU_CHECK_PYTHON
exec "$PY" -m benchmarks.gpu_check --out "$OUTDIR" "$@"
