#!/usr/bin/env bash
# Idempotent setup for a fresh machine: gfortran (for escnn's py3nj), a virtual environment in .venv,
# torch (the local CPU wheel 2.13.0 on this kind of machine), escnn_soft in editable mode with its extras
# (data; dev: tests, lint and the docs site: sphinx, myst-parser, the furo theme),
# and the laplace-torch oracle installed without torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
STAMP=.venv/.escnn_soft_setup_v2
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt scripts/setup.sh ]; then
    exit 0
fi
if ! command -v gfortran >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gfortran
    else
        echo "setup: gfortran is missing; install it (e.g. 'sudo apt-get install gfortran') so escnn's py3nj builds" >&2
    fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# torch: the pinned CPU wheel where the machine has it; otherwise whatever torch the user already has.
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install -q "torch==${TORCH_VERSION:-2.13.0}"
$PIP install -q -c scripts/constraints.txt -e ".[data,dev]"
# laplace-torch is the reference oracle for tests on plain Conv2d/Linear nets. Its metadata pulls torchvision,
# which does not import on CPU-only torch here, so install its requirements ourselves and it with --no-deps.
$PIP install -q -c scripts/constraints.txt "curvlinops-for-pytorch==3.0.1" "backpack-for-pytorch" "asdfghjkl==0.1a4" "opt_einsum" "torchmetrics"
$PIP install -q --no-deps "laplace-torch==0.3"
# backpack pulls torchvision from the registry; that build does not import on CPU-only torch and then breaks
# torchmetrics (and laplace-torch). Remove it only when it is installed and broken.
if .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('torchvision') is None)" \
    && ! .venv/bin/python -c "import torchvision" >/dev/null 2>&1; then
    $PIP uninstall -q -y torchvision
fi
touch "$STAMP"
