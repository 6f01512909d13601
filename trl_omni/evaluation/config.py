"""[`EvalConfig`] (the arguments of an evaluation and of `trl-omni eval`) and [`EvalResult`]."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..utils.type_checks import check_field_types


# Omni-Bench's four task groups; names are matched after lower-casing and dropping non-alphanumerics.
DEFAULT_TASK_GROUPS: dict[str, list[str]] = {
    "natural_scene": ["vstar", "v*", "v_star", "vstarbench", "natural_scene"],
    "structured_image": ["arxivqa", "chartqa", "structured_image"],
    "diagrammatic_math": ["geometry3k", "geo3k", "mathvista", "diagrammatic_math", "diagram_math"],
    "vision_operational": ["vicbench", "vic-bench", "vic_bench", "vision_operational"],
}
OTHER_GROUP = "other"
# The default generation budget: room for this many images of the model, plus this many text tokens.
DEFAULT_EVAL_IMAGES = 2
DEFAULT_EVAL_TEXT_TOKENS = 512


@dataclass
class EvalConfig:
    r"""
    Configuration of [`evaluate`] (and of `trl-omni eval`).

    Parameters:
        output_dir (`str`):
            Directory of the predictions, images, metrics and report. Re-running with the same arguments resumes.
        overwrite (`bool`, *optional*, defaults to `False`):
            Delete earlier predictions in `output_dir` instead of resuming.
        template (`str`, *optional*, defaults to `"templated"`):
            Prompt layout of the [`InterleavedDataCollator`]: `"templated"` (Omni-R1 control tokens), `"plain"` or
            `"chat"`.
        batch_size (`int`, *optional*, defaults to `8`):
            Rows generated together.
        max_new_tokens (`int`, *optional*):
            Generation budget per row. Defaults to room for `max_images` images of *this* model (2 when
            `max_images` is unset) plus 512 text tokens: `ImageVocabulary.generation_budget(...)`, 2,564 on Anole,
            whose images are 1,026 tokens. A value that cannot hold one image while images are allowed is refused.
        max_images (`int` or `None`, *optional*):
            Cap on images drawn per completion (`None`: no cap, `0`: text only).
        open_with_image (`bool`, *optional*, defaults to `False`):
            Open every answer with an image, like the authors' `--append-boi`: BOI is appended to each prompt, so the
            model starts by drawing (continued by the constrained generation up to a whole image). That drawing is the
            answer's first image: it counts towards `max_images` and `num_images`, is saved and shown in the report.
            Needs `max_new_tokens` of at least one image (`tokens_per_image + 1`: the codes and EOI).
        do_sample (`bool`, *optional*, defaults to `False`):
            Sample instead of greedy decoding (seeded per batch, so results are reproducible and resumable).
        temperature (`float`, *optional*, defaults to `1.0`), top_p (`float`, *optional*, defaults to `1.0`):
            Sampling parameters.
        seed (`int`, *optional*, defaults to `0`):
            Seed of sampling.
        answer_column (`str`, *optional*, defaults to `"answer"`):
            Column with the gold answer.
        id_column (`str`, *optional*, defaults to `"id"`):
            Column naming a row.
        source_columns (`list[str]`, *optional*, defaults to `["dataset", "source"]`):
            Columns naming where a row comes from, most specific first; the first non-empty one is the row's source,
            and the first whose value belongs to a task group gives its group.
        task_groups (`dict[str, list[str]]` or JSON `str`, *optional*):
            Task group -> source names. Defaults to Omni-Bench's four groups ([`DEFAULT_TASK_GROUPS`]).
        answer_style (`str`, *optional*, defaults to `"auto"`):
            How the answer is read from a completion (see [`~trl_omni.rewards.extract_answer`]).
        strict_answers (`bool`, *optional*, defaults to `False`):
            Score answers by exact text match instead of the rule cascade's soft similarity credit (e.g. for short
            labels such as colour names, where a similar string is a wrong answer).
        max_samples (`int` or `None`, *optional*):
            Evaluate only the first N rows.
        save_images (`bool`, *optional*, defaults to `True`):
            Decode and save the completions' images as PNG.
        report_max_rows (`int`, *optional*, defaults to `50`):
            Trajectories rendered in `report.html`.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar.
        print_table (`bool`, *optional*, defaults to `True`):
            Print the accuracy table at the end.
    """

    output_dir: str = field(default="eval", metadata={"help": "Directory of predictions, images, metrics, report."})
    overwrite: bool = field(default=False, metadata={"help": "Delete earlier predictions instead of resuming."})
    template: str = field(
        default="templated",
        metadata={"help": "Prompt layout: 'templated', 'plain' or 'chat'.", "choices": ["templated", "plain", "chat"]},
    )
    batch_size: int = field(default=8, metadata={"help": "Rows generated together."})
    max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Generation budget per row. Default: room for max_images images of the model (2 when unset) plus "
            "512 text tokens (2,564 on Anole)."
        },
    )
    max_images: int | None = field(default=None, metadata={"help": "Cap on images per completion (0: text only)."})
    open_with_image: bool = field(
        default=False,
        metadata={
            "help": "Open every answer with an image (the authors' --append-boi): BOI ends each prompt and the model "
            "starts by drawing; that drawing is the answer's first image (counted in max_images and num_images)."
        },
    )
    do_sample: bool = field(default=False, metadata={"help": "Sample (seeded per batch) instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    seed: int = field(default=0, metadata={"help": "Seed of sampling."})
    answer_column: str = field(default="answer", metadata={"help": "Column with the gold answer."})
    id_column: str = field(default="id", metadata={"help": "Column naming a row."})
    source_columns: list[str] = field(
        default_factory=lambda: ["dataset", "source"],
        metadata={"help": "Columns naming a row's origin, most specific first (source and task group)."},
    )
    task_groups: str | None = field(
        default=None,
        metadata={
            "help": "Task group -> list of source names, as JSON (or a mapping in the YAML config). Defaults to "
            "Omni-Bench's groups: natural_scene (V*), structured_image (ArxivQA, ChartQA), diagrammatic_math "
            "(Geometry3k, MathVista), vision_operational (ViC-Bench)."
        },
    )
    answer_style: str = field(
        default="auto",
        metadata={"help": "Answer extraction: 'auto', 'tags' or 'thought'.", "choices": ["auto", "tags", "thought"]},
    )
    strict_answers: bool = field(
        default=False,
        metadata={"help": "Exact text match for answers instead of soft similarity credit (short labels)."},
    )
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows."})
    save_images: bool = field(default=True, metadata={"help": "Decode and save the completions' images."})
    report_max_rows: int = field(default=50, metadata={"help": "Trajectories rendered in report.html."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    print_table: bool = field(default=True, metadata={"help": "Print the accuracy table at the end."})

    def __post_init__(self):
        # `task_groups` is JSON text on the command line or a mapping in Python; it is checked below.
        check_field_types(self, checked_elsewhere=("task_groups",))
        if isinstance(self.task_groups, str):
            try:
                self.task_groups = json.loads(self.task_groups)
            except json.JSONDecodeError as error:
                raise ValueError(f"task_groups must be a JSON mapping group -> list of sources: {error}") from error
        if self.task_groups is None:
            self.task_groups = {group: list(names) for group, names in DEFAULT_TASK_GROUPS.items()}
        if not isinstance(self.task_groups, Mapping) or not all(
            isinstance(names, list | tuple) for names in self.task_groups.values()
        ):
            raise ValueError("task_groups must map each group name to a list of source names.")
        if self.batch_size < 1 or (self.max_new_tokens is not None and self.max_new_tokens < 1):
            raise ValueError("batch_size and max_new_tokens must be >= 1.")
        if self.max_images is not None and self.max_images < 0:
            raise ValueError(f"max_images must be None (no cap) or >= 0, got {self.max_images}.")
        if self.open_with_image and self.max_images == 0:
            raise ValueError(
                "open_with_image=True opens every answer with an image, but max_images=0 allows none: set max_images "
                ">= 1 (or None), or drop open_with_image."
            )

    def generation_budget(self, image_vocabulary: Any) -> int:
        """`max_new_tokens`, or its default for the model of `image_vocabulary`; checked against the image span.

        Raises:
            ValueError: When images are allowed and the budget cannot hold one (naming the span and a value to set).
        """
        images_allowed = self.max_images != 0
        if self.max_new_tokens is None:
            images = DEFAULT_EVAL_IMAGES if self.max_images is None else self.max_images
            return image_vocabulary.generation_budget(num_images=images, text_tokens=DEFAULT_EVAL_TEXT_TOKENS)
        if images_allowed and self.max_new_tokens < image_vocabulary.span_length:
            grid = image_vocabulary.grid_size
            raise ValueError(
                f"max_new_tokens={self.max_new_tokens} cannot hold one image of this model: an image takes "
                f"{image_vocabulary.span_length} tokens (BOI + {grid[0]}x{grid[1]} codes + EOI), so the model could "
                f"never draw. Set max_new_tokens >= {image_vocabulary.span_length} plus room for text (e.g. "
                f"{image_vocabulary.generation_budget(1, DEFAULT_EVAL_TEXT_TOKENS)}), leave it unset to derive it, or "
                "set max_images=0 to evaluate text-only answers."
            )
        return self.max_new_tokens


@dataclass
class EvalResult:
    """What [`evaluate`] produced: `metrics` (overall / groups / sources) and the paths of its files."""

    metrics: dict[str, Any]
    table: str
    predictions_path: str
    metrics_path: str
    report_path: str
    num_generated: int
