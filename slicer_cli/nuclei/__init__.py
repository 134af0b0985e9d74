"""Whole-slide nucleus analysis engine: a pure library (no argparse, no Girder).

Data flows one way; each stage is one module with one verb-named public function::

    tiling.plan_tiles      slide -> tile plan (model mpp, overlap, ROI)
    tissue.detect_tissue   thumbnail -> tissue mask; tiles on glass are dropped
    stain.normalize_stain  optional Macenko normalisation (NumPy / CuPy)
    backends.open_backend  local ONNX Runtime or Triton (by URL scheme) -> network maps
    instances.extract_instances   maps -> nuclei of one tile   (where a nucleus is born)
    seams.keep_owned       ownership by centroid across tile seams (where it is merged)
    features.compute_features     per-nucleus HistomicsTK features  (where it is measured)
    writers                annotation JSON + feature table       (where it is written)
    pipeline.run_analysis  the only module that imports the stages
"""
