# Sourced by the GPU machine's scripts (benchmarks/gpu_check.sh, training/gpu_train.sh), from
# the repository root: the Python to use ($PY; the machine's python3 there, ./.venv's on a
# dry run here; ${1} names an environment variable that overrides it) and the wheels the
# machine lacks (CPython 3.12 builds, docs/GPU.md) installed into .gpu_deps and put on
# PYTHONPATH; a dry run on another Python uses its own environment.
override=${1:-GPU_PYTHON}
PY=${!override:-python3}
[ -x .venv/bin/python ] && [ -z "${!override:-}" ] && [ ! -e /opt/torch ] && PY=.venv/bin/python
if [ -d .gpu_wheels ] && "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  # once per wheel set (a second script sourcing this, e.g. benchmarks/gpu_all.sh's
  # training beside its check, finds .gpu_deps ready and leaves it alone)
  stamp=$(ls .gpu_wheels/*.whl | sort | tr '\n' ' ')
  if [ "$(cat .gpu_deps/.wheels 2>/dev/null)" != "$stamp" ]; then
    rm -rf .gpu_deps
    "$PY" -m pip install -q --no-index --no-deps --target .gpu_deps .gpu_wheels/*.whl \
      2>&1 | grep -v "^WARNING" || true
    echo "$stamp" > .gpu_deps/.wheels
  fi
  export PYTHONPATH="$PWD:$PWD/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
