"""Reward outputs are validated in one place (`validate_reward_output`), by the wrappers `safe_reward` puts around
every reward, and PeRPOTrainer wraps the rewards it is given: a bad output stops training with a `RewardError`
naming the reward and the sample, instead of TRL reading NaN as "unscored" and training on a zero loss."""

import asyncio
import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from trl_omni.rewards import (
    AsyncSafeReward,
    RewardError,
    SafeReward,
    safe_reward,
    safe_reward_funcs,
    validate_reward_output,
)


def returning(value):
    def bad_reward(prompts, completions, completion_ids=None, **kwargs):
        return value(len(completions)) if callable(value) else value

    return bad_reward


GOOD = [
    ([0.5, None, 1], [0.5, None, 1.0]),
    ((0, 1, 2), [0.0, 1.0, 2.0]),
    (np.array([0.25, 0.5, 1.0], dtype=np.float32), [0.25, 0.5, 1.0]),
    (torch.tensor([1.0, 2.0, 3.0]), [1.0, 2.0, 3.0]),
    ([np.float64(0.5), torch.tensor(2.0), np.int64(3)], [0.5, 2.0, 3.0]),
]


@pytest.mark.parametrize("output, expected", GOOD)
def test_good_outputs_pass_as_floats(output, expected):
    checked = validate_reward_output(output, 3, "r")
    assert checked == expected
    assert all(v is None or type(v) is float for v in checked)


# (output for 3 completions, pattern the message must match, sample index named or None)
BAD = [
    (None, r"'bad_reward' returned None \(NoneType\) for 3 completions; a reward must return a list", None),
    ("0.5", r"returned '0.5' \(str\)", None),
    (0.5, r"returned 0.5 \(float\)", None),
    ({"a": 1.0}, r"returned \{'a': 1.0\} \(dict\)", None),
    ([1.0, 2.0], r"returned 2 values for 3 completions", None),
    (torch.ones(3, 1), r"shape \(3, 1\)", None),
    ([1.0, float("nan"), 0.0], r"returned nan for sample 1; return None to leave a sample unscored", 1),
    ([1.0, 0.0, math.inf], r"returned inf for sample 2", 2),
    (torch.tensor([0.0, float("nan"), 1.0]), r"returned nan for sample 1", 1),
    (["1.0", 0.0, 0.0], r"returned '1.0' \(str\) for sample 0; rewards must be real numbers or None", 0),
    ([1.0, True, 0.0], r"returned True \(bool\) for sample 1", 1),
    ([1.0, 0.0, [1.0]], r"returned \[1.0\] \(list\) for sample 2", 2),
]


@pytest.mark.parametrize("output, message, index", BAD)
def test_bad_outputs_name_the_reward_and_the_sample(output, message, index):
    with pytest.raises(RewardError, match=message) as caught:
        SafeReward(returning(output))(["p"] * 3, ["a", "b", "c"])
    assert caught.value.reward_name == "bad_reward"
    assert caught.value.sample_index == index


def test_async_rewards_are_validated_too():
    async def judge(prompts, completions, completion_ids=None, **kwargs):
        return [0.5, float("nan")]

    wrapped = safe_reward(judge)
    assert isinstance(wrapped, AsyncSafeReward)
    from trl.trainer.utils import is_async_callable

    assert is_async_callable(wrapped)  # TRL still runs it on its async path
    with pytest.raises(RewardError, match=r"'judge' returned nan for sample 1"):
        asyncio.run(wrapped(["p", "q"], ["a", "b"]))

    async def raising(prompts, completions, completion_ids=None, **kwargs):
        if "b" in completions:
            raise KeyError("no answer")
        return [1.0] * len(completions)

    with pytest.raises(RewardError, match=r"'raising' raised KeyError on sample 1"):
        asyncio.run(safe_reward(raising)(["p", "q"], ["a", "b"]))


def test_wrapping_is_idempotent_and_leaves_models_alone():
    reward = returning([1.0])
    wrapped = safe_reward(reward)
    assert safe_reward(wrapped) is wrapped
    module = torch.nn.Linear(2, 1)
    assert safe_reward(module) is module
    assert safe_reward("some/reward-model") == "some/reward-model"
    wrapped_list = safe_reward_funcs([reward, module])
    assert isinstance(wrapped_list[0], SafeReward) and wrapped_list[1] is module
    assert wrapped.__name__ == "bad_reward"


@pytest.mark.parametrize(
    "output, message",
    [
        (lambda n: [0.0] * (n - 1) + [float("nan")], r"'bad_reward' returned nan for sample 3"),
        (lambda n: None, r"'bad_reward' returned None \(NoneType\)"),
        (lambda n: ["0.5"] * n, r"'bad_reward' returned '0.5' \(str\) for sample 0"),
    ],
)
def test_perpo_trainer_validates_reward_outputs(tmp_path, output, message):
    from trl_omni.testing import tiny_chameleon
    from trl_omni.trainers import PeRPOConfig, PeRPOTrainer

    model, processor = tiny_chameleon(seed=0)
    args = PeRPOConfig(
        output_dir=str(tmp_path), max_completion_length=80, num_generations=2, per_device_train_batch_size=4,
        max_steps=1, bf16=False, use_cpu=True, report_to="none", save_strategy="no", max_images_per_completion=0,
    )  # fmt: skip
    trainer = PeRPOTrainer(
        model,
        reward_funcs=[returning(output)],
        args=args,
        processing_class=processor,
        train_dataset=Dataset.from_dict({"prompt": ["Let me draw it."] * 4}),
    )
    with pytest.raises(RewardError, match=message):
        trainer.train()
