"""`trl-omni rl`: PeRPO (perception-calibrated RL with image rollouts, Omni-R1 stage 2).

```bash
# LoRA on one GPU from a PeSFT checkpoint, the default perception-calibrated reward
trl-omni rl \
    --model_name_or_path anole-pesft \
    --dataset_name data/rl.jsonl --dataset_format interleaved \
    --use_peft --lora_r 16 --lora_alpha 32 \
    --num_generations 8 --max_completion_length 2048 --max_images_per_completion 1 \
    --output_dir anole-perpo

# explicit rewards: built-in names, entry-point names or dotted paths
trl-omni rl --config perpo.yaml --reward_funcs accuracy format my_package.rewards:length_penalty
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl_omni.cli.common import OmniScriptArguments
from trl_omni.utils.config_fields import choice_field


@dataclass
class RLScriptArguments(OmniScriptArguments):
    """Dataset and reward arguments of `trl-omni rl`.

    Parameters:
        reward_funcs (`list[str]` or `None`, *optional*):
            Reward functions by built-in name (`accuracy`, `format`, `format_thought`, `perception`,
            `perception_calibrated`, `reference_image`, `model_reward`), by name registered under the
            `trl_omni.rewards` entry-point group, or by dotted path (`package.module:function`). Default: PeRPO's
            perception-calibrated reward.
        on_error (`str`, *optional*, defaults to `"raise"`):
            Bad rows / images met while converting the dataset and encoding its images: `"raise"` (an error naming
            the row, the field and the fix) or `"skip"` (dropped, counted, logged, summarised at the end).
    """

    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward functions: built-in names (accuracy, format, format_thought, perception, "
            "perception_calibrated, reference_image, model_reward), names registered under the 'trl_omni.rewards' "
            "entry-point group, or dotted paths ('package.module:function'). Default: the perception-calibrated "
            "reward."
        },
    )
    on_error: str = choice_field(
        "raise",
        ("raise", "skip"),
        "Bad rows / images: 'raise' (an error naming the row, the field and the fix) or 'skip' (dropped, "
        "counted, logged and summarised at the end).",
    )


def check_rewards(reward_funcs: list[str] | None, reward_weights: list[float] | None = None) -> None:
    """Resolves every reward name (an unknown one raises, listing the available names) and checks that
    `reward_weights`, when given, has one weight per reward."""
    from trl_omni.rewards.registry import resolve_reward

    for name in reward_funcs or []:
        resolve_reward(name)
    if reward_funcs and reward_weights is not None and len(reward_weights) != len(reward_funcs):
        raise ValueError(
            f"--reward_weights has {len(reward_weights)} values for {len(reward_funcs)} rewards "
            f"({', '.join(reward_funcs)}). Fix: give one weight per reward, in the same order."
        )


def preflight(namespace: Any) -> None:
    """Checks run by `trl-omni rl` before launching any process: reward names and weights, the checkpoint
    directory, the dataset's file, split and columns."""
    from trl_omni.cli.common import preflight_training

    check_rewards(namespace.reward_funcs, namespace.reward_weights)
    preflight_training(namespace)


def main(script_args: Any, training_args: Any, model_args: Any) -> int:
    """Loads the model, the data and the rewards named by the arguments, trains with [`PeRPOTrainer`], saves."""
    from trl_omni.cli.common import (
        load_model_and_processor,
        load_train_split,
        peft_config_for,
        prepare_datasets,
        train_and_save,
    )
    from trl_omni.data.report import SkipReport
    from trl_omni.models import ImageVocabulary
    from trl_omni.rewards.registry import build_reward_funcs
    from trl_omni.trainers import PeRPOTrainer
    from trl_omni.trainers.perpo_config import reward_options

    # Unknown rewards fail here, before any loading (the launcher already checked them once).
    check_rewards(script_args.reward_funcs, training_args.reward_weights)
    _, train = load_train_split(script_args)
    model, processor = load_model_and_processor(model_args, trust_remote_code=training_args.trust_remote_code)
    reward_funcs = None
    if script_args.reward_funcs:
        reward_funcs = build_reward_funcs(
            script_args.reward_funcs,
            processor,
            ImageVocabulary.from_model(model, processor),
            options=reward_options(training_args),
        )

    report = SkipReport()
    text_prompts = "prompt" in train.column_names and len(train) > 0 and isinstance(train[0]["prompt"], str)
    if not text_prompts and script_args.dataset_format != "pretokenized":
        (train,) = prepare_datasets(
            [train], script_args, training_args, model, processor, script_args.on_error, report
        )

    trainer = PeRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train,
        processing_class=processor,
        peft_config=peft_config_for(model, model_args),
    )
    return train_and_save(trainer, training_args, script_args, skip_report=report)


def make_parser(prog: str | None = None):
    """The `TrlParser` of `trl-omni rl`: dataset + reward arguments, [`PeRPOConfig`] and TRL's `ModelConfig`."""
    from trl_omni.cli.common import training_parser
    from trl_omni.trainers import PeRPOConfig

    description = "PeRPO: perception-calibrated RL with image rollouts (Omni-R1 stage 2)."
    return training_parser(RLScriptArguments, PeRPOConfig, description, prog=prog)


if __name__ == "__main__":
    from trl_omni.cli.launch import run_script

    raise SystemExit(run_script(make_parser, main, "trl-omni rl"))
