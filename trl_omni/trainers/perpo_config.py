"""Configuration of [`PeRPOTrainer`]: GRPO with image rollouts and perception-calibrated rewards (Omni-R1 stage 2)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from ..utils.config_fields import check_choices, choice_field
from ..utils.type_checks import check_field_types
from .config_defaults import gradient_checkpointing_field, set_activation_checkpointing_default


_MAPPINGS = ("inverse", "exp")
_AGGREGATIONS = ("min", "mean", "max", "median")
_FORMAT_STYLES = ("tags", "thought")
_ACCURACY_RULES = ("default", "omni_r1")


@dataclass
class PeRPOConfig(GRPOConfig):
    r"""
    Configuration class for [`PeRPOTrainer`].

    Only the parameters specific to PeRPO, or whose defaults differ from [`~trl.GRPOConfig`], are listed here; every
    other GRPO parameter (including every `loss_type`) keeps its meaning. The defaults follow the DAPO-style recipe
    the Omni-R1 authors trained with: asymmetric clipping (`epsilon=0.2`, `epsilon_high=0.28`), no KL term
    (`beta=0.0`) and the token-level `"dapo"` loss.

    The number of tokens per image is never configured: it is read from the model
    ([`~trl_omni.ImageVocabulary.tokens_per_image`]).

    Parameters:
        > Parameters whose defaults differ from GRPO

        epsilon (`float`, *optional*, defaults to `0.2`):
            Lower clipping bound.
        epsilon_high (`float`, *optional*, defaults to `0.28`):
            Upper clipping bound (DAPO's "clip-higher").
        beta (`float`, *optional*, defaults to `0.0`):
            KL coefficient. With PEFT and `beta > 0` the reference is the adapter-disabled model.
        loss_type (`str`, *optional*, defaults to `"dapo"`):
            Token-level loss normalised over the active tokens of the global batch. Any GRPO loss type is accepted.

        > Image rollouts

        constrain_image_generation (`bool`, *optional*, defaults to `True`):
            Sample rollouts through [`~trl_omni.ImageSpanLogitsProcessor`], so that every image a completion opens is
            an exact span (`BOI + H*W codes + EOI`) unless the length limit cuts it. Turning it off gives plain GRPO
            sampling (image tokens may then appear anywhere).
        max_images_per_completion (`int` or `None`, *optional*, defaults to `None`):
            Cap on the images a completion may open (`None`: no cap, `0`: text-only rollouts), enforced by the
            constrained sampling. Images already in the prompt do not count. While images are allowed,
            `max_completion_length` must hold at least one whole image span.

        > Perception-calibrated reward (used when `reward_funcs=None`)

        perception_tau (`float`, *optional*, defaults to `3.0`):
            Temperature of the mapping from 2D total variation to a perception score.
        perception_mapping (`str`, *optional*, defaults to `"inverse"`):
            `"inverse"`: `1 / (1 + E / tau)`; `"exp"`: `exp(-E / tau)`.
        perception_aggregation (`str`, *optional*, defaults to `"min"`):
            How the scores of a completion's images are combined: `"min"`, `"mean"`, `"max"` or `"median"`.
        perception_reward_weight (`float`, *optional*, defaults to `0.05`):
            Weight `w` of the perception score in `(1 - w) * (0.9 acc + 0.1 fmt) + w * pe`.
        format_style (`str`, *optional*, defaults to `"tags"`):
            Output format the calibrated reward's format term checks: `"tags"`, the Omni-R1 control tags (reasoning
            and answer tags in order, non-empty answer); `"thought"`, the authors' released rule for Zebra-CoT-style
            traces (`THOUGHT` ... `Final Answer:`). The accuracy term reads the answer in either format.
        accuracy_rules (`str`, *optional*, defaults to `"default"`):
            Rules of the accuracy term: `"default"`, this project's cascade (never pays a wrong number); `"omni_r1"`,
            the authors' released cascade, rule for rule. See `trl_omni.rewards.answer_score`.

        > Interleaved prompts

        interleaved_template (`str`, *optional*, defaults to `"templated"`):
            Layout of prompts given as interleaved parts (the `InterleavedDataCollator`'s `"templated"`, `"plain"` or
            `"chat"`); use the template the policy was fine-tuned with.
        image_root (`str`, *optional*):
            Directory that prompt image parts given as `path` are read from.

        > Visibility

        log_rendered_trajectories (`int`, *optional*, defaults to `2`):
            Rollouts rendered as text + drawn images (weight-free false-colour view; pass your own
            `RenderedTrajectoriesCallback(decoder=...)` for pixels) and logged per logging step to the active trackers,
            or written under `<output_dir>/rendered_trajectories/`; `0` disables.

        > Degenerate groups

        filter_degenerate_groups (`bool`, *optional*, defaults to `False`):
            When True, groups whose rewards have zero spread (including groups with fewer than two scored
            completions) contribute no loss during training, as DAPO's dynamic sampling; the fraction of filtered
            groups is logged as `filtered_groups/frac`.

    Example:
        ```python
        >>> from trl_omni.trainers import PeRPOConfig
        >>> args = PeRPOConfig(output_dir="perpo", max_completion_length=2048, max_images_per_completion=1)
        >>> args.epsilon_high, args.loss_type
        (0.28, 'dapo')
        ```
    """

    # Parameters whose default values are overridden from GRPOConfig (the authors' DAPO-style recipe)
    epsilon: float = field(default=0.2, metadata={"help": "Lower clipping bound."})
    epsilon_high: float | None = field(
        default=0.28, metadata={"help": "Upper clipping bound (DAPO's clip-higher; the authors used 0.28)."}
    )
    beta: float = field(
        default=0.0,
        metadata={"help": "KL coefficient; 0.0 (no reference model) as in the authors' recipe."},
    )
    loss_type: str = field(
        default="dapo",
        metadata={
            "help": "Loss formulation; 'dapo' (token-level, the authors' recipe) by default. Every GRPO loss type "
            "('grpo', 'dr_grpo', 'dapo', 'bnpo', 'cispo', 'sapo', 'luspo', 'vespo') is accepted."
        },
    )
    gradient_checkpointing: bool | None = gradient_checkpointing_field()

    # Image rollouts
    constrain_image_generation: bool = field(
        default=True,
        metadata={
            "help": "Sample rollouts through ImageSpanLogitsProcessor so that every image is an exact span "
            "(BOI + H*W codes + EOI). Off: plain GRPO sampling."
        },
    )
    max_images_per_completion: int | None = field(
        default=None,
        metadata={"help": "Cap on images opened per completion (None: no cap, 0: text-only rollouts)."},
    )

    # Perception-calibrated reward, used when `reward_funcs=None`
    perception_tau: float = field(
        default=3.0, metadata={"help": "Temperature of the total-variation -> perception-score mapping."}
    )
    perception_mapping: str = choice_field("inverse", _MAPPINGS, "Mapping of the 2D total variation E to a score.")
    perception_aggregation: str = choice_field(
        "min", _AGGREGATIONS, "Aggregation of per-image scores in a completion."
    )
    perception_reward_weight: float = field(
        default=0.05, metadata={"help": "Weight of the perception score in the calibrated reward."}
    )
    format_style: str = choice_field(
        "tags",
        _FORMAT_STYLES,
        "Output format the calibrated reward's format term checks: 'tags' (Omni-R1 control tags) or "
        "'thought' (THOUGHT ... Final Answer:, the authors' released rule).",
    )
    accuracy_rules: str = choice_field(
        "default",
        _ACCURACY_RULES,
        "Rules of the calibrated reward's accuracy term: 'default' (never pays a wrong number) or "
        "'omni_r1' (the authors' released cascade, rule for rule).",
    )

    # Interleaved prompts
    interleaved_template: str = field(
        default="templated",
        metadata={
            "help": "Layout of prompts given as interleaved parts (text and images), as built by the "
            "`InterleavedDataCollator`: 'templated' (the Omni-R1 control-token format), 'plain' or 'chat'. Use the "
            "template the policy was fine-tuned with."
        },
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "Directory that prompt image parts given as `path` are read from."},
    )

    # Visibility
    log_rendered_trajectories: int = field(
        default=2,
        metadata={
            "help": "Rollouts rendered (text + drawn images) and logged per logging step to the active trackers "
            "(tensorboard / wandb / trackio), or written as PNG + HTML under `<output_dir>/rendered_trajectories/` "
            "when none is active; 0 disables."
        },
    )

    # Degenerate groups
    filter_degenerate_groups: bool = field(
        default=False,
        metadata={
            "help": "Groups whose rewards have zero spread contribute no loss (DAPO dynamic sampling); the filtered "
            "fraction is logged as `filtered_groups/frac`."
        },
    )

    def __post_init__(self):
        check_field_types(self)
        set_activation_checkpointing_default(self)
        super().__post_init__()
        if self.max_images_per_completion is not None and self.max_images_per_completion < 0:
            raise ValueError(
                f"max_images_per_completion must be None (no cap) or >= 0, got {self.max_images_per_completion}."
            )
        if self.log_rendered_trajectories < 0:
            raise ValueError(f"log_rendered_trajectories must be >= 0, got {self.log_rendered_trajectories}.")
        check_choices(self)
        if not 0.0 <= self.perception_reward_weight <= 1.0:
            raise ValueError(f"perception_reward_weight must lie in [0, 1], got {self.perception_reward_weight}.")
        if self.perception_tau <= 0:
            raise ValueError(f"perception_tau must be > 0, got {self.perception_tau}.")


def reward_options(training_args: Any) -> dict[str, Any]:
    """The reward settings of a [`PeRPOConfig`] set away from their defaults, as reward constructor arguments
    (`format_style`, `rules`): named rewards that take them get them, and one that no named reward takes is an
    error rather than ignored."""
    settings = {"format_style": "format_style", "rules": "accuracy_rules"}
    defaults = {f.name: f.default for f in dataclasses.fields(PeRPOConfig)}
    return {
        argument: getattr(training_args, field_name)
        for argument, field_name in settings.items()
        if getattr(training_args, field_name) != defaults[field_name]
    }
