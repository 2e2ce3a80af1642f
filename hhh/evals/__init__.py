"""Prompted evaluations: log-likelihood multiple choice after a cached prompt, tasks, and `hhh eval`."""
