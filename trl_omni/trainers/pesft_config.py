"""Configuration of [`PeSFTTrainer`]: perception-aligned supervised fine-tuning (Omni-R1 stage 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import SFTConfig

from ..collators.interleaved import LENGTH_POLICIES
from ..collators.templates import TEMPLATES as INTERLEAVED_TEMPLATES
from ..utils.config_fields import check_choices, choice_field
from ..utils.type_checks import check_field_types
from .config_defaults import gradient_checkpointing_field, set_activation_checkpointing_default


PERCEPTION_ALIGNMENTS = ("next_token", "same_position")
PERCEPTION_REDUCTIONS = ("paper", "mean")
ON_ERROR_POLICIES = ("raise", "skip")


@dataclass
class PeSFTConfig(SFTConfig):
    r"""
    Configuration class for the [`PeSFTTrainer`].

    PeSFT trains `L = L_CE + perception_loss_weight * L_Pe` where, over the set `Omega` of image tokens of the
    *completion* (positions whose label is an image token), `L_Pe = 1/|Omega| * sum_t ||W h - E[c_t]||^2`: `W` is a
    trainable linear projection (the perception head, registered on the model), `h` the final hidden state after
    the decoder's last norm, `E` the frozen VQ codebook and `c_t` the ground-truth code at `t`. Only the parameters
    specific to PeSFT are listed here; see [`~trl.SFTConfig`] for the rest.

    Parameters:
        perception_loss_weight (`float`, *optional*, defaults to `1.0`):
            `lambda` in `L_CE + lambda * L_Pe`. `0.0` trains exactly like `SFTTrainer` (the perception loss is
            still computed and logged).
        perception_alignment (`str`, *optional*, defaults to `"next_token"`):
            Which hidden state is paired with the code `c_t` of the image token at position `t`:
            `"next_token"` takes `h_{t-1}`, the state the LM head reads to *predict* that token; `"same_position"`
            takes `h_t`, the state whose input already is that token (what the authors' code does). The default is
            `"next_token"`: it shapes the representation that decides which code gets drawn, whereas `h_t` can
            satisfy the loss by copying its own input embedding, which teaches the model nothing about drawing.
        perception_reduction (`str`, *optional*, defaults to `"paper"`):
            `"paper"`: squared L2 distance summed over the codebook dimension, averaged over image tokens (the
            paper's formula). `"mean"`: also averaged over the codebook dimension (the authors' code; `1/D` of
            `"paper"`, so with `D = 256` on Anole it needs a ~256x larger weight for the same pull). The default
            follows the paper, so `perception_loss_weight` keeps the meaning of the paper's `lambda`.
        perception_head_seed (`int`, *optional*):
            Seed of the perception head's initialisation; defaults to `seed`. The head is only initialised when the
            model does not carry one yet (a model from a PeSFT checkpoint keeps its trained head).

        log_rendered_trajectories (`int`, *optional*, defaults to `2`):
            At each evaluation, this many eval prompts (interleaved rows) are answered with constrained drawing,
            rendered and logged to the active trackers (or written under `<output_dir>/rendered_trajectories/`);
            `0` disables.
        eval_generation_max_new_tokens (`int`, *optional*):
            Generation budget of those answers. Defaults to room for one image plus 256 text tokens of *this* model
            (`ImageVocabulary.generation_budget(1, 256)`: 1,282 on Anole); a value that cannot hold one image span is
            refused when the trainer is built.
        interleaved_template (`str`, *optional*, defaults to `"templated"`):
            Layout of interleaved rows built by the default [`InterleavedDataCollator`]: `"templated"`, `"plain"`
            or `"chat"`. Ignored for pre-tokenized rows or when a `data_collator` is passed.
        image_root (`str`, *optional*):
            Directory that image parts given by `path` are read from.
        length_policy (`str`, *optional*, defaults to `"drop"`):
            `"drop"` or `"truncate"` (at an image boundary) for interleaved rows longer than `max_length`.
        on_error (`str`, *optional*, defaults to `"raise"`):
            Bad rows: `"raise"` (an error naming the row, the field, what was found and the fix) or `"skip"`
            (dropped, counted, logged and summarised at the end of training). Applies to the pre-tokenized rows
            the trainer checks (cut image spans, stray image tokens, mask lengths, ...) and, in `trl-omni sft`, to
            dataset conversion and image encoding.

    > [!NOTE]
    > `max_length` defaults to `5100` (the authors' limit: four 1,026-token Anole images plus text) instead of
    > `1024`. Rows that do not fit are dropped (counted and logged) once per dataset, before batching, so no batch is
    > ever left empty, at any batch size: pre-tokenized rows longer than `max_length` (never truncated, since a cut
    > would slice an image) and interleaved rows the collator's `length_policy` would drop.

    Example:
        ```python
        >>> from trl_omni.trainers import PeSFTConfig
        >>> args = PeSFTConfig(
        ...     output_dir="pesft-tiny",
        ...     perception_loss_weight=1.0,
        ...     perception_alignment="next_token",
        ...     perception_reduction="paper",
        ...     per_device_train_batch_size=2,
        ...     max_steps=10,
        ...     bf16=False,  # CPU
        ...     use_cpu=True,
        ...     report_to="none",
        ... )
        ```
    """

    max_length: int | None = field(
        default=5100,
        metadata={
            "help": "Maximum sequence length. Rows longer than this are dropped (counted and logged) before "
            "batching, never cut inside an image. Defaults to the Omni-R1 authors' limit (4 Anole images + text)."
        },
    )
    gradient_checkpointing: bool | None = gradient_checkpointing_field()
    perception_loss_weight: float = field(
        default=1.0,
        metadata={"help": "lambda in L = L_CE + lambda * L_Pe. 0.0 trains exactly like SFTTrainer."},
    )
    perception_alignment: str = choice_field(
        "next_token",
        PERCEPTION_ALIGNMENTS,
        "Hidden state paired with the code of the image token at t: 'next_token' (h_{t-1}, the state "
        "that predicts the token) or 'same_position' (h_t, as the authors' code).",
    )
    perception_reduction: str = choice_field(
        "paper",
        PERCEPTION_REDUCTIONS,
        "'paper': squared L2 summed over the codebook dimension, mean over image tokens (the paper's "
        "formula). 'mean': also averaged over the codebook dimension (the authors' code).",
    )
    perception_head_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the perception head's initialisation. Defaults to `seed`."},
    )
    log_rendered_trajectories: int = field(
        default=2,
        metadata={
            "help": "At each evaluation, this many eval prompts (interleaved rows) are answered by the model with "
            "constrained drawing, rendered (text + images) and logged to the active trackers, or written under "
            "`<output_dir>/rendered_trajectories/` when none is active; 0 disables."
        },
    )
    eval_generation_max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Generation budget of those rendered evaluation answers. Default: room for one image of the "
            "model plus 256 text tokens (1,282 on Anole)."
        },
    )
    interleaved_template: str = choice_field(
        "templated",
        INTERLEAVED_TEMPLATES,
        "Layout of interleaved rows (prompt/completion parts) built by the default "
        "`InterleavedDataCollator`: 'templated' (the Omni-R1 control-token format, which the default PeRPO "
        "reward scores), 'plain' or 'chat'.",
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "Directory that image parts given as `path` are read from (paths may not leave it)."},
    )
    length_policy: str = choice_field(
        "drop",
        LENGTH_POLICIES,
        "What happens to an interleaved row longer than `max_length`: 'drop' it (counted and logged "
        "before batching, as the authors did) or 'truncate' it at an image boundary.",
    )
    on_error: str = choice_field(
        "raise",
        ON_ERROR_POLICIES,
        "Bad rows: 'raise' (an error naming the row, the field and the fix) or 'skip' (dropped, counted, "
        "logged and summarised at the end). Applies to pre-tokenized rows and, in `trl-omni sft`, to dataset "
        "conversion and image encoding.",
    )

    def __post_init__(self):
        check_field_types(self)
        set_activation_checkpointing_default(self)
        super().__post_init__()
        if self.eval_generation_max_new_tokens is not None and self.eval_generation_max_new_tokens < 1:
            raise ValueError(
                f"eval_generation_max_new_tokens must be >= 1 (or unset), got {self.eval_generation_max_new_tokens}."
            )
        if self.log_rendered_trajectories < 0:
            raise ValueError(f"log_rendered_trajectories must be >= 0, got {self.log_rendered_trajectories}.")
        check_choices(self)
        if not math.isfinite(self.perception_loss_weight) or self.perception_loss_weight < 0:
            raise ValueError(
                f"perception_loss_weight must be a finite number >= 0, got {self.perception_loss_weight}."
            )
        if self.perception_head_seed is None:
            self.perception_head_seed = self.seed
