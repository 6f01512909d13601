"""A custom reward given to `trl-omni rl` by dotted path in tests/test_cli_rl.py."""


def length_reward(prompts, completions, completion_ids=None, **kwargs):
    """Longer completions score higher (spread within each group, so the policy gradient is not zero)."""
    return [len(ids) / 100.0 for ids in completion_ids]
