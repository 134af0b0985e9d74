#!/usr/bin/env bash
# The Python packages the GPU check needs that the GPU machine lacks (docs/GPU.md), as
# CPython 3.12 manylinux wheels in ./.gpu_wheels (git-ignored; the device tool carries it).
# Everything else (torch, cupy, numpy, scipy, scikit-image, pandas, pyarrow, opencv, pillow,
# tifffile, grpcio, protobuf, pytest) is on that machine already. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.gpu_wheels
mkdir -p "$DEST"
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" \
  large-image==1.35.6 large-image-source-openslide==1.35.6 openslide-python==1.4.7 \
  openslide-bin==4.0.1.2 tifftools cachetools palettable shapely==2.2.0 \
  tritonclient==2.73.0 python-rapidjson 2>&1 | grep -v "^WARNING: Location" || true
ls "$DEST"/*.whl >/dev/null
du -sh "$DEST"
