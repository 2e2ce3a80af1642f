#!/usr/bin/env bash
# GPU checks in one command (under 8 minutes on one H100): bf16 train-step MFU at the 800m shape and packed
# HH-RLHF throughput at SmolLM2-135M's shape. Carry runs/hh_rlhf_conv (hhh data load hh_rlhf ... --resplit) and,
# for SmolLM2's tokenizer, its cached GGUF. Writes $OUT/device_check.json (benchmarks/results/ without $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import jax; assert jax.default_backend() != 'cpu', 'no accelerator: jax sees only the CPU'" 
exec timeout 470 python3 benchmarks/device_check.py "$@"
