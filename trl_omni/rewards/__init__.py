"""Rewards for PeRPO and TRL's GRPOTrainer: accuracy, format, 2D-TV perception, drawn-vs-reference images, their
calibrated combination, model-based rewards, and a registry for contributed rewards.

Every reward follows TRL's reward contract, `fn(prompts, completions, completion_ids=None, **kwargs) ->
list[float | None]`, and is a plain callable (never an `nn.Module`), so it drops into `GRPOTrainer` unchanged.
"""

from ._common import OutputTags
from .accuracy import (
    ACCURACY_RULES,
    OmniR1Thresholds,
    accuracy_reward,
    answer_score,
    extract_answer,
    make_accuracy_reward,
    parse_choice,
    parse_formula,
    parse_number,
    similarity,
)
from .calibrated import PerceptionCalibratedReward
from .format import format_reward, format_score, format_thought_reward, make_format_reward
from .model_reward import ModelReward, RewardBatch
from .perception import PerceptionReward, total_variation_energy
from .reference import ReferenceImageReward
from .registry import ENTRY_POINT_GROUP, get_reward, list_rewards, resolve_reward
from .validation import (
    AsyncSafeReward,
    RewardError,
    SafeReward,
    safe_reward,
    safe_reward_funcs,
    validate_reward_output,
)


__all__ = [
    "ACCURACY_RULES",
    "ENTRY_POINT_GROUP",
    "AsyncSafeReward",
    "ModelReward",
    "OmniR1Thresholds",
    "OutputTags",
    "PerceptionCalibratedReward",
    "PerceptionReward",
    "RewardBatch",
    "ReferenceImageReward",
    "RewardError",
    "SafeReward",
    "accuracy_reward",
    "answer_score",
    "extract_answer",
    "format_reward",
    "format_score",
    "format_thought_reward",
    "get_reward",
    "list_rewards",
    "make_accuracy_reward",
    "make_format_reward",
    "parse_choice",
    "parse_formula",
    "parse_number",
    "resolve_reward",
    "safe_reward",
    "safe_reward_funcs",
    "similarity",
    "total_variation_energy",
    "validate_reward_output",
]
