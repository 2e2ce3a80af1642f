#!/usr/bin/env bash
# The PyTorch side of benchmarks/train_step.py lives in its own virtual environment, so torch, transformers and
# trl never become hhh dependencies. Usage: bash benchmarks/setup_torch_env.sh [VENV_DIR]
set -euo pipefail
venv="${1:-$(dirname "$0")/.venv-torch}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# torch is pinned to the CPU build: an open range pulls a multi-GB CUDA wheel on machines without a GPU.
"$venv/bin/python" -m pip install --quiet "torch==${HHH_BENCH_TORCH:-2.13.0}"
"$venv/bin/python" -m pip install --quiet "transformers>=4.45" "trl>=0.12" "datasets>=3.0" "accelerate>=1.0"
"$venv/bin/python" -c "import torch, transformers, trl; print('torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"
