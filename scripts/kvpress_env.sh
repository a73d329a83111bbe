#!/usr/bin/env bash
# Build the side environment of the fidelity harness (python -m kvpress_lab.benchmarks.fidelity):
# NVIDIA kvpress 0.5.5 with transformers >= 5.0, < 5.3 and the CPU build of torch 2.13.0, in a
# virtual environment of its own (kvpress 0.5.5 needs transformers < 5.3; kvpress_lab needs >= 5.24).
# kvpress_lab is not installed there: the harness runs benchmarks/kvpress_side.py with its Python.
#
#   bash scripts/kvpress_env.sh [PATH]      # default PATH: .kvpress-venv (or $KVPRESS_VENV)
#
# Idempotent: rerunning on an existing environment only installs what changed. Needs Python >= 3.10
# as `python3` (or set PYTHON=/path/to/python). Then pass --kvpress-python PATH/bin/python to the
# harness when PATH is not the default.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
VENV="${1:-${KVPRESS_VENV:-.kvpress-venv}}"
TORCH_VERSION="2.13.0"
KVPRESS_VERSION="0.5.5"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install --quiet)
"${pip[@]}" --upgrade pip
# torch first and pinned (then pinned again below): a bare `torch` requirement resolved first would
# pull the multi-GB CUDA build; the CPU build is all the harness uses.
"${pip[@]}" "torch==${TORCH_VERSION}"
"${pip[@]}" "torch==${TORCH_VERSION}" "kvpress==${KVPRESS_VERSION}" "transformers>=5.0,<5.3"
# kvpress's install may pull `kernels`, which breaks `import kvpress` under transformers 5.2 (at the
# time of writing); kvpress runs without it.
if "$VENV/bin/python" -m pip show --quiet kernels >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip uninstall --yes --quiet kernels
    echo "uninstalled 'kernels' (it breaks import kvpress under transformers 5.2)"
fi
TRANSFORMERS_VERBOSITY=error "$VENV/bin/python" -c '
import importlib.metadata, kvpress, torch, transformers
print("kvpress", importlib.metadata.version("kvpress") + ", transformers", transformers.__version__ + ", torch",
      torch.__version__ + ": import kvpress works")'
echo "kvpress side environment: $VENV/bin/python"
