"""A reward given to `trl-omni rl` by dotted path in tests/test_user_paths_anole.py: it scores nothing (weight 0)
and records what every reward function receives, so the test can check the rollouts themselves."""

ROLLOUTS: list[dict] = []


def record_rollouts(prompts, completions, completion_ids, image_segments=None, **kwargs):
    for ids, segments in zip(completion_ids, image_segments or [None] * len(completion_ids)):
        ROLLOUTS.append({"completion_ids": list(ids), "image_segments": segments})
    return [0.0] * len(completion_ids)
