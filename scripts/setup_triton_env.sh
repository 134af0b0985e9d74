#!/usr/bin/env bash
# Isolated environment ./.venv-triton for a local, CPU-only Triton Inference Server
# (scripts/serve_triton.py, tests marked `triton`, benchmarks/bench_backends.py).
#
# nvidia-pytriton 0.7.0 bundles a real tritonserver (2.51) with the Python backend. It pins
# numpy<2, which clashes with the engine's numpy 2, so it lives in its own venv; the engine
# (./.venv) only needs tritonclient, which works with numpy 2. pytriton 0.7.0 itself requires
# numpy<2,>=1.21, protobuf, pyzmq, sh, tritonclient[grpc,http]~=2.50, grpcio, typing_inspect,
# wrapt, typer and importlib_metadata; pip resolves those. We add onnxruntime (the served
# model runs the same ONNX file through it), at the engine's version when ./.venv has one, so
# both sides compute with the same kernels.
#
# Idempotent: a second run only checks that the environment imports.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-triton

"$PY" -c 'import sys; assert (3, 8) <= sys.version_info[:2] <= (3, 13), sys.version' || {
  echo "error: the pytriton 0.7.0 Python backend stubs exist for Python 3.8-3.13 only" >&2
  exit 1
}
"$PY" -c 'import sysconfig, sys; sys.exit(0 if sysconfig.get_config_var("Py_ENABLE_SHARED") else 1)' || {
  echo "error: $PY was built without a shared libpython; the Python backend stub needs one" >&2
  exit 1
}

ORT_SPEC=onnxruntime
if [ -x .venv/bin/python ]; then
  ORT_VERSION=$(.venv/bin/python -c 'import onnxruntime; print(onnxruntime.__version__)' \
    2>/dev/null || true)
  [ -n "$ORT_VERSION" ] && ORT_SPEC="onnxruntime==$ORT_VERSION"
fi

check() {
  "$VENV/bin/python" - <<'EOF'
import pathlib

import numpy
import onnxruntime
import pytriton

server = pathlib.Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver"
assert numpy.__version__.startswith("1."), numpy.__version__
assert server.is_file(), server
print(f"{__import__('sys').prefix}: pytriton OK, numpy {numpy.__version__}, "
      f"onnxruntime {onnxruntime.__version__}, tritonserver {server}")
EOF
}

if [ -x "$VENV/bin/python" ] && check 2>/dev/null; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# pip's exit status matters here: do not hide it behind the warning filter.
"$VENV/bin/python" -m pip install -q "nvidia-pytriton==0.7.0" "$ORT_SPEC" "numpy<2" \
  > "$VENV/pip.log" 2>&1 || { grep -v "^WARNING: Location" "$VENV/pip.log" >&2; exit 1; }
check
