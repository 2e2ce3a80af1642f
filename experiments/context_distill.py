"""Context distillation of the HHH prompt into SmolLM2-135M-Instruct (a CPU-sized run).

  hhh distill experiments/context_distill.py --out runs/distill
  hhh eval hhh_alignment --model runs/distill/student --prompt none --data ../shared/data/hhh_alignment

The student learns KL(p(x | HHH prompt) || p_theta(x)) on 64 dialogue-shaped texts sampled from the prompted
model; on an accelerator raise samples/steps (`--set samples=2048 --set steps=2000`).
"""

from hhh.studies.distill import DistillConfig


def config() -> DistillConfig:
  return DistillConfig(model="smollm2-135m-instruct", prompt="hhh", samples=64, sample_tokens=96, steps=40,
                       batch_size=4, lr=1e-5)
