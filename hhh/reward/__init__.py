"""Trained preference models as reward functions.

    rm = hhh.reward.load("runs/tiny_pm_bundle")          # a bundle written by `hhh export`
    rm.score(["Human: hi\n\nAssistant:"], [" Hello!"])    # -> np.ndarray of raw rewards
    rm.score(contexts, responses, normalize=True)         # (r - mean) / std of the export-time reference set
    rm.compare(context, [resp_a, resp_b, resp_c])         # ranking and sigmoid(r_i - r_j) preference matrix
    fn = rm.reward_fn()                                   # pure JAX: fn(params, tokens_NxL, lengths_N) -> rewards_N
"""

from hhh.reward.api import RewardModel, load  # noqa: F401
