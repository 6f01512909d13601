"""[`BootstrapConfig`]: every argument of a bootstrap run (`trl-omni bootstrap`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...utils.config_fields import check_choices, choice_field
from ...utils.type_checks import check_field_types


DEFAULT_PROMPT_TEMPLATE = (
    "{image}{question}\nReasoning step {step} of {num_steps}: {step_text}\nText step {step} -> Image step {step}:"
)


LOW_QUALITY_POLICIES = ("drop_step", "drop_sample", "keep_best")
ON_ERROR_POLICIES = ("raise", "skip")
PERCEPTION_MAPPINGS = ("inverse", "exp")
TEMPLATES = ("templated", "plain", "chat")


@dataclass
class BootstrapConfig:
    r"""Configuration of [`bootstrap_dataset`] / [`run_bootstrap`] and of `trl-omni bootstrap`.

    Parameters:
        output_dir: Directory of the shards and the manifest.
        model_name_or_path: Base model (local directory or Hub id) loaded with `load_omni_model`.
        dataset_name: Input: a local file (json / jsonl / parquet / csv), a directory of such files, or a `datasets`
            source name.
        The other fields (column mapping, step splitting, drawing prompt and sampling, quality filter, sharding)
        are described in their `help` metadata and in docs/bootstrap.md.

    Example:
        ```python
        >>> config = BootstrapConfig(output_dir="m3cot-zero", model_name_or_path="leloy/Anole-7b-v0.1-hf",
        ...                          dataset_name="m3cot_train.parquet", max_steps=4, quality_threshold=0.5)
        >>> manifest = run_bootstrap(config)
        ```
    """

    output_dir: str | None = field(default=None, metadata={"help": "Directory of the output shards and manifest."})
    overwrite: bool = field(
        default=False, metadata={"help": "Delete a previous run's shards and manifest in `output_dir` first."}
    )
    # Model
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base model (local directory or Hub id), loaded with `load_omni_model`."}
    )
    dtype: str = field(default="auto", metadata={"help": "Model dtype: 'auto', 'float32', 'bfloat16', 'float16'."})
    device: str | None = field(default=None, metadata={"help": "Device for generation; default cuda when available."})
    # Input
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Input: local file (json/jsonl/parquet/csv), directory, or a `datasets` source name."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "`datasets` configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the input dataset."})
    data_files: list[str] | None = field(
        default=None, metadata={"help": "Explicit data files for the `datasets` builder of `dataset_name`."}
    )
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N input rows."})
    image_root: str | None = field(
        default=None, metadata={"help": "Directory that image paths in the input are relative to."}
    )
    id_column: str = field(default="id", metadata={"help": "Input column of the row id."})
    question_column: str = field(default="question", metadata={"help": "Input column of the question."})
    choices_column: str | None = field(default="choices", metadata={"help": "Input column of the answer choices."})
    context_column: str | None = field(default="context", metadata={"help": "Input column of the context."})
    answer_column: str = field(default="answer", metadata={"help": "Input column of the final answer."})
    rationale_column: str = field(default="rationale", metadata={"help": "Input column of the text-only CoT."})
    image_column: str | None = field(default="image", metadata={"help": "Input column of the question image."})
    keep_columns: list[str] = field(
        default_factory=lambda: ["category", "domain", "topic", "split", "image_id"],
        metadata={"help": "Input columns copied to the output (when present)."},
    )
    # Steps
    step_splitter: str = field(
        default="auto",
        metadata={
            "help": "'auto' (numbered steps, else THOUGHT k:, else sentences), 'numbered', 'thought', 'sentences', "
            "'lines', 'regex:<pattern>' (a new step starts at every match), or a dotted path 'pkg.module:function' "
            "(str -> list[str])."
        },
    )
    max_steps: int = field(
        default=4, metadata={"help": "Steps (and so drawings) per sample; further steps are merged into the last."}
    )
    # Drawing
    prompt_template: str = field(
        default=DEFAULT_PROMPT_TEMPLATE,
        metadata={
            "help": "Drawing prompt; placeholders {image} (the question images), {question}, {step}, {num_steps}, "
            "{step_text}, {previous_steps}. BOI is appended so the model continues with exactly one image."
        },
    )
    add_bos: bool = field(default=True, metadata={"help": "Start drawing prompts with the BOS token."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the codes (0 = greedy)."})
    top_k: int | None = field(default=None, metadata={"help": "Sample among the k most likely codes only."})
    seed: int = field(default=42, metadata={"help": "Seed of every drawing (with row index, step and attempt)."})
    batch_size: int = field(default=16, metadata={"help": "Drawing prompts per `generate` call."})
    encode_batch_size: int = field(default=32, metadata={"help": "Question images per VQ-encoder forward."})
    # Quality filter
    quality_threshold: float | None = field(
        default=None,
        metadata={"help": "Minimum PerceptionReward score of a drawing (in (0, 1]); None keeps every drawing."},
    )
    max_redraws: int = field(default=2, metadata={"help": "Redraws of a drawing below the threshold."})
    on_low_quality: str = choice_field(
        "drop_step",
        LOW_QUALITY_POLICIES,
        "After the redraws: 'drop_step' (keep the step's text without image), 'drop_sample' (drop the row), "
        "'keep_best' (keep the best drawing).",
    )
    perception_tau: float = field(default=3.0, metadata={"help": "tau of the PerceptionReward mapping."})
    perception_mapping: str = choice_field("inverse", PERCEPTION_MAPPINGS, "'inverse' or 'exp'.")
    quality_fn: str | None = field(
        default=None,
        metadata={
            "help": "Extra filter, dotted path 'pkg.module:function' called as fn(codes (M, H, W), prompts: "
            "list[dict]) -> M scores; a drawing passes when its score >= quality_fn_threshold."
        },
    )
    quality_fn_threshold: float = field(default=0.5, metadata={"help": "Threshold of `quality_fn`'s scores."})
    min_distinct_codes: int = field(
        default=0,
        metadata={
            "help": "Reject drawings with fewer distinct codes (a flat image has total variation 0 and so the best "
            "perception score; e.g. 2 rejects single-code images)."
        },
    )
    max_length: int | None = field(
        default=5100,
        metadata={
            "help": "Token budget of a written row laid out with `template` (set it to the SFT max_length; 5100, the "
            "authors' limit, by default). A row that would exceed it keeps every step's text but draws images only "
            "for the first steps that fit (counted: rows_shortened, images_skipped_for_length); a row too long even "
            "without drawings is dropped (samples_too_long). None: no budget."
        },
    )
    # Output
    template: str = choice_field(
        "templated",
        TEMPLATES,
        "Collator template recorded in the manifest for training ('templated', 'plain', 'chat').",
    )
    source_name: str = field(default="m3cot-bootstrap", metadata={"help": "Value of the output `source` column."})
    shard_size: int = field(default=1000, metadata={"help": "Input rows per output shard."})
    on_error: str = choice_field(
        "raise",
        ON_ERROR_POLICIES,
        "Bad input rows (missing question / answer, unreadable image, image-token text): 'raise' names the row, "
        "field and fix; 'skip' drops the row, counts and logs it.",
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bar."})

    def __post_init__(self):
        # The two hooks are dotted paths on the command line; in Python they may be the callables themselves.
        check_field_types(self, checked_elsewhere=("step_splitter", "quality_fn"))
        for name, optional in (("step_splitter", False), ("quality_fn", True)):
            value = getattr(self, name)
            if not (isinstance(value, str) or callable(value) or (optional and value is None)):
                raise TypeError(
                    f"BootstrapConfig.{name} must be a dotted path 'pkg.module:function' or a callable"
                    f"{' (or None)' if optional else ''}, got {type(value).__name__} {value!r}."
                )
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}.")
        if self.batch_size < 1 or self.shard_size < 1 or self.encode_batch_size < 1:
            raise ValueError("batch_size, shard_size and encode_batch_size must be >= 1.")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1 or None, got {self.max_length}.")
        if self.max_redraws < 0:
            raise ValueError(f"max_redraws must be >= 0, got {self.max_redraws}.")
        check_choices(self)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}.")
        for name in ("image", "images"):
            if name in self.keep_columns:
                raise ValueError(f"keep_columns may not contain {name!r} (it switches TRL SFT to its vision path).")
        if "{step_text}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {step_text} (the step to draw).")
        try:
            self.prompt_template.replace("{image}", "").format(
                question="", step=1, num_steps=1, step_text="", previous_steps=""
            )
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"prompt_template has an unknown placeholder or a stray brace ({error!r}); known placeholders: "
                "{image}, {question}, {step}, {num_steps}, {step_text}, {previous_steps} (write {{ }} for braces)."
            ) from error
