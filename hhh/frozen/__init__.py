"""Preference models on a frozen pretrained trunk: cache the trunk's states once, train small tails on them.

A pretrained decoder of N layers (SmolLM2-135M-Instruct, 30) is cut at depth d (the model "sizes" are d = 8, 16,
30). Everything below block d - 2 is frozen, so its output for a dataset never changes: `cache` runs it once and
stores the residual stream entering the chosen blocks (fp16, memory-mapped shards, keyed by model, layers,
tokenizer and data). Training then reads those states and runs only what it trains (`tail`):

  tier "head"  the depth-d states through the final norm: a reward head (binary, ranked) or the 576x576 readout
               before the frozen tied LM head (imitation); nothing else runs, so a run takes seconds.
  tier "lora"  blocks d-2 and d-1 with rank-16 LoRA on every projection, then the heads; the cache holds the
               states entering block d-2.

A truncated trunk's states are not what the tied LM head was trained to read, so each depth first gets a readout
trained on offline text (`train.fit_readout`, its LM loss reported), which imitation starts from. Rewards are
read at the end-of-context token (SmolLM2's <|im_end|>), as every hhh PM does, and a trained tail merges into an
ordinary truncated `Transformer` (`tail.merged_params`): bundles score raw text end to end.
"""
