"""A custom reward given to `trl-omni rl` by dotted path in tests/test_cli_rl.py."""


def length_reward(prompts, completions, completion_ids=None, **kwargs):
    """Longer completions score higher (spread within each group, so the policy gradient is not zero)."""
    return [len(ids) / 100.0 for ids in completion_ids]


def token_sum_reward(prompts, completions, completion_ids=None, **kwargs):
    """Differs between any two different completions, so even equal-length rollouts get a non-zero policy gradient."""
    return [sum(ids) % 997 / 997.0 for ids in completion_ids]
