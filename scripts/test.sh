#!/usr/bin/env bash
# The test command: the whole suite (GPU tests skip without a CUDA device).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
.venv/bin/python -m pytest -q --timeout=900 "$@"
rc=$?
# pytest exits 5 when nothing was collected: that is a failure here, not a pass.
exit $rc
