"""Omni-R1-Zero bootstrapping: interleaved trajectories drawn by the base model from text-only chain-of-thought.

A text-only CoT dataset (M3CoT schema by default) goes in; every rationale is split into steps, the base model draws
one image per step ("Text step k -> Image step k", conditioned on the question image), the drawings are scored with
[`~trl_omni.rewards.PerceptionReward`] (redrawn or dropped below a threshold), and the trajectories come out in the
interleaved schema (`prompt` / `completion` lists of parts with pre-tokenized `codes`, `answer`), as sharded parquet
plus a `manifest.json`. A run killed at any moment continues where it stopped when re-run with the same arguments.

Determinism: every drawing is sampled with the Gumbel-max trick from noise of a generator seeded by
`(seed, input row index, step, attempt)`, inside `model.generate` (greedy over noised logits == sampling). The
noise of a drawing therefore does not depend on which other prompts share its batch. Guaranteed: the same seed, the
same arguments (batch size included) and the same model/input give identical rows, also across kill-and-resume.
Other batch sizes use the same noise; their rows differ only where batched floating-point arithmetic changes a
logit enough to flip an argmax (on the tiny CPU model they are identical, which the tests check). The noise comes
from generators on the model's device, so a CPU run and a CUDA run draw different (equally valid) images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..models import ImageEncoder, ImageSpanLogitsProcessor, ImageVocabulary
from .converters import m3cot_row_to_interleaved
from .images import load_image
from .schema import InterleavedDataError, image_part, interleaved_features, normalize_parts, text_part


logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
DATA_DIR = "data"
MANIFEST_VERSION = 1
# Testing hook: SIGKILL this process right after the N-th shard file is renamed into place (before the manifest
# records it), to test resuming from the worst moment. Never set outside tests.
KILL_AFTER_SHARDS_ENV = "TRL_OMNI_TESTING_BOOTSTRAP_KILL_AFTER_SHARDS"

DEFAULT_PROMPT_TEMPLATE = (
    "{image}{question}\nReasoning step {step} of {num_steps}: {step_text}\nText step {step} -> Image step {step}:"
)
# Arguments that do not change the rows written (so they may differ between a run and its resumption).
_NON_OUTPUT_ARGUMENTS = ("output_dir", "overwrite", "disable_tqdm")
LOW_QUALITY_POLICIES = ("drop_step", "drop_sample", "keep_best")


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
    on_low_quality: str = field(
        default="drop_step",
        metadata={
            "help": "After the redraws: 'drop_step' (keep the step's text without image), 'drop_sample' (drop the "
            "row), 'keep_best' (keep the best drawing)."
        },
    )
    perception_tau: float = field(default=3.0, metadata={"help": "tau of the PerceptionReward mapping."})
    perception_mapping: str = field(default="inverse", metadata={"help": "'inverse' or 'exp'."})
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
    # Output
    template: str = field(
        default="templated",
        metadata={"help": "Collator template recorded in the manifest for training ('templated', 'plain', 'chat')."},
    )
    source_name: str = field(default="m3cot-bootstrap", metadata={"help": "Value of the output `source` column."})
    shard_size: int = field(default=1000, metadata={"help": "Input rows per output shard."})
    on_error: str = field(
        default="raise",
        metadata={
            "help": "Bad input rows (missing question / answer, unreadable image, image-token text): 'raise' names "
            "the row, field and fix; 'skip' drops the row, counts and logs it."
        },
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bar."})

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}.")
        if self.batch_size < 1 or self.shard_size < 1 or self.encode_batch_size < 1:
            raise ValueError("batch_size, shard_size and encode_batch_size must be >= 1.")
        if self.max_redraws < 0:
            raise ValueError(f"max_redraws must be >= 0, got {self.max_redraws}.")
        if self.on_low_quality not in LOW_QUALITY_POLICIES:
            raise ValueError(f"on_low_quality must be one of {LOW_QUALITY_POLICIES}, got {self.on_low_quality!r}.")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}.")
        if self.template not in ("templated", "plain", "chat"):
            raise ValueError(f"template must be 'templated', 'plain' or 'chat', got {self.template!r}.")
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


# --------------------------------------------------------------------------------------------- step splitting
_NUMBERED = re.compile(r"(?:^|(?<=\s))(?:Step\s*(\d+)\s*[:.)]|\((\d+)\)|(\d+)[.)](?=\s))", re.IGNORECASE)
_THOUGHT = re.compile(r"THOUGHT\s*\d+\s*:")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def _split_at(text: str, pattern: re.Pattern | str) -> list[str]:
    """Splits `text` so that every match of `pattern` starts a new step (text before the first match is kept)."""
    return _split_before(text, [m.start() for m in re.finditer(pattern, text)])


def _numbered_starts(text: str) -> list[int]:
    """Positions of step markers numbered 0/1, 2, 3, ... in sequence (so "Take 1. 2. Add" splits only before 2)."""
    starts, expected = [], None
    for match in _NUMBERED.finditer(text):
        before = text[: match.start()]
        # A bare "3." / "3)" opens the text, a line or a sentence ("Add 3. 3) Done" has one marker, "3)");
        # "Step 3:" and "(3)" are markers anywhere.
        if (
            match.group(3) is not None
            and before.strip()
            and "\n" not in before[len(before.rstrip()) :]
            and before.rstrip()[-1] not in ".!?:;"
        ):
            continue
        number = int(next(group for group in match.groups() if group is not None))
        if (expected is None and number in (0, 1)) or number == expected:
            starts.append(match.start())
            expected = number + 1
    return starts


def _split_before(text: str, starts: list[int]) -> list[str]:
    if not starts:
        return [text.strip()] if text.strip() else []
    bounds = ([0] if starts[0] > 0 else []) + starts + [len(text)]
    pieces = [text[a:b].strip() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return [p for p in pieces if p]


def split_steps(text: str, splitter: str | Callable[[str], Sequence[str]] = "auto") -> list[str]:
    """Splits a rationale into reasoning steps.

    Args:
        text: The rationale.
        splitter: `"auto"` (steps numbered in sequence from 0 or 1, as `1.`, `Step 1:`, `(1)`, when there are at
            least two, else `THOUGHT k:` markers, else sentences), `"numbered"`, `"thought"`, `"sentences"`, `"lines"`,
            `"regex:<pattern>"` (every match starts a step), a dotted path `"pkg.module:function"`, or a callable.

    Returns:
        Non-empty step texts, in order, together covering the rationale.

    Example:
        ```python
        >>> split_steps("Step 1: look. Step 2: count.")
        ['Step 1: look.', 'Step 2: count.']
        ```
    """
    if callable(splitter):
        return [s for s in (str(x).strip() for x in splitter(text)) if s]
    text = text or ""
    if splitter == "auto":
        starts = _numbered_starts(text)
        if len(starts) >= 2:
            return _split_before(text, starts)
        if len(_THOUGHT.findall(text)) >= 1:
            return _split_at(text, _THOUGHT)
        return split_steps(text, "sentences")
    if splitter == "numbered":
        return _split_before(text, _numbered_starts(text))
    if splitter == "thought":
        return _split_at(text, _THOUGHT)
    if splitter == "sentences":
        return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]
    if splitter == "lines":
        return [s.strip() for s in text.splitlines() if s.strip()]
    if splitter.startswith("regex:"):
        return _split_at(text, re.compile(splitter[len("regex:") :]))
    return split_steps(text, resolve_callable(splitter, "step_splitter"))


def resolve_callable(path: str, argument: str) -> Callable:
    """Imports `"pkg.module:function"` (or `"pkg.module.function"`)."""
    module_name, _, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"{argument}={path!r} is neither a known name nor a dotted path 'pkg.module:function'.")
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{argument}={path!r} could not be imported: {error}") from error
    if not callable(obj):
        raise ValueError(f"{argument}={path!r} is not callable.")
    return obj


def cap_steps(steps: list[str], max_steps: int) -> list[str]:
    """Keeps at most `max_steps` steps; the text of further steps is appended to the last kept one (nothing lost)."""
    if len(steps) <= max_steps:
        return steps
    return steps[: max_steps - 1] + [" ".join(steps[max_steps - 1 :])]


# --------------------------------------------------------------------------------------------- seeded sampling
def drawing_seed(seed: int, row_index: int, step: int, attempt: int) -> int:
    """The seed of one drawing: a hash of the run seed, the input row index, the step and the attempt."""
    digest = hashlib.sha256(f"{seed}:{row_index}:{step}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class SeededGumbelSampler(LogitsProcessor):
    """Per-row seeded sampling inside greedy `model.generate`: adds Gumbel noise to `scores / temperature`.

    `argmax(log p / T + G)` with `G ~ Gumbel(0, 1)` is a sample from `softmax(log p / T)`. Each row draws its noise
    from its own generator (one `V`-vector per generated token), so a row's tokens depend on its seed only, never on
    the other rows of the batch. Put it after the constraint processors and call `generate(do_sample=False)`.
    The generators live on the scores' device; CPU and CUDA generators give different streams, so drawings are
    reproducible per device type.

    Args:
        seeds: One seed per batch row.
        temperature: Sampling temperature; 0 leaves the scores unchanged (greedy).
        top_k: Optional: only the k best tokens stay possible.
        support: Optional token ids outside which every score is already `-inf` (e.g. the image tokens and EOI while
            drawing): noise is drawn for these ids only, `V / len(support)` times less work (8x for Anole).

    Example:
        ```python
        >>> sampler = SeededGumbelSampler([11, 12], temperature=1.0)
        >>> model.generate(input_ids, logits_processor=LogitsProcessorList([sampler]), do_sample=False)
        ```
    """

    def __init__(
        self,
        seeds: Sequence[int],
        temperature: float = 1.0,
        top_k: int | None = None,
        support: torch.Tensor | None = None,
    ):
        self.seeds = [int(s) for s in seeds]
        self.generators: list[torch.Generator] | None = None
        self.temperature = float(temperature)
        self.top_k = top_k
        self.support = None if support is None else torch.as_tensor(support, dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.temperature == 0:
            return scores
        scores = scores.float() / self.temperature
        if self.top_k is not None and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        device = scores.device
        if self.generators is None:  # on the scores' device: no host-to-device copy of B x V noise per token
            self.generators = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]
            if self.support is not None:
                self.support = self.support.to(device)
        size = scores.shape[-1] if self.support is None else self.support.numel()
        uniform = torch.stack([torch.rand(size, generator=g, device=device) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(min=torch.finfo(torch.float32).tiny, max=1.0 - 1e-7)))
        if self.support is None:
            return scores + gumbel
        noised = torch.full_like(scores, float("-inf"))
        return noised.index_copy_(1, self.support, scores.index_select(1, self.support) + gumbel)


# --------------------------------------------------------------------------------------------- drawing
@dataclass
class _Job:
    sample: int  # position in the shard
    step: int
    attempt: int
    prompt_ids: list[int]
    seed: int


class StepDrawer:
    """Draws one image per prompt, batched, through `model.generate` with `ImageSpanLogitsProcessor`.

    Every prompt ends with BOI, so the constrained generation continues that span: exactly `tokens_per_image` codes,
    then EOI (`max_new_tokens = tokens_per_image + 1`).
    """

    def __init__(self, model: Any, processor: Any, vocab: ImageVocabulary, config: BootstrapConfig):
        self.model = model
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.vocab = vocab
        self.config = config
        self.device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id
        self.bos = [self.tokenizer.bos_token_id] if config.add_bos and self.tokenizer.bos_token_id is not None else []
        self.num_generate_calls = 0
        self._forbidden = {vocab.boi_token_id, vocab.eoi_token_id, vocab.image_placeholder_id}
        # While drawing, ImageSpanLogitsProcessor leaves only image tokens and EOI possible: noise for those only.
        vocab_size = model.get_output_embeddings().weight.shape[0]
        image_ids = vocab.image_token_mask(vocab_size, torch.device("cpu")).nonzero().flatten()
        self._support = torch.cat([image_ids, torch.tensor([vocab.eoi_token_id])]).sort().values

    def prompt_ids(
        self, question: str, images: Sequence[torch.Tensor], steps: Sequence[str], step: int, row: Any = "?"
    ) -> list[int]:
        """Token ids of the drawing prompt for `steps[step]`: BOS, the template (question images spliced in at
        `{image}` through `ImageVocabulary.image_span_ids`), BOI."""
        filled = self.config.prompt_template.replace("{image}", "\0")
        filled = filled.format(
            question=question,
            step=step + 1,
            num_steps=len(steps),
            step_text=steps[step],
            previous_steps=" ".join(steps[:step]),
        )
        ids = list(self.bos)
        for i, piece in enumerate(filled.split("\0")):
            if i > 0:
                for codes in images:
                    ids += self.vocab.image_span_ids(codes).tolist()
            if piece:
                piece_ids = self.tokenizer(piece, add_special_tokens=False).input_ids
                if (
                    any(t in self._forbidden for t in piece_ids)
                    or self.vocab.is_image_token(torch.tensor(piece_ids)).any()
                ):
                    raise InterleavedDataError(
                        row,
                        f"step {step + 1}",
                        "the drawing prompt's text tokenizes to an image token, BOI, EOI or the image placeholder.",
                        "remove image-token strings from the question / rationale / prompt_template.",
                    )
                ids += piece_ids
        return ids + [self.vocab.boi_token_id]

    @torch.inference_mode()
    def draw(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int]) -> torch.Tensor:
        """Draws one image per prompt (each ending with BOI, as `prompt_ids` builds them). Returns `(N, H*W)` codes
        on CPU."""
        tokens = self.vocab.tokens_per_image
        if any(not p or p[-1] != self.vocab.boi_token_id for p in prompts):
            raise ValueError("Every drawing prompt must end with BOI (build them with StepDrawer.prompt_ids).")
        out = []
        for start in range(0, len(prompts), self.config.batch_size):
            chunk = prompts[start : start + self.config.batch_size]
            length = max(len(p) for p in chunk)
            input_ids = torch.full((len(chunk), length), self.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for row, prompt in enumerate(chunk):  # left padding: every prompt ends where generation starts
                input_ids[row, length - len(prompt) :] = torch.tensor(prompt)
                attention_mask[row, length - len(prompt) :] = 1
            processors = LogitsProcessorList(
                [
                    ImageSpanLogitsProcessor(self.vocab, max_images=0, max_new_tokens=tokens + 1),
                    SeededGumbelSampler(
                        seeds[start : start + len(chunk)],
                        self.config.temperature,
                        self.config.top_k,
                        support=self._support,
                    ),
                ]
            )
            generated = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                logits_processor=processors,
                do_sample=False,
                max_new_tokens=tokens + 1,
                min_new_tokens=tokens + 1,
                pad_token_id=self.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )[:, length:].cpu()
            self.num_generate_calls += 1
            segments = self.vocab.parse_segments(
                torch.cat([torch.full((len(chunk), 1), self.vocab.boi_token_id), generated], dim=1)
            )
            if generated.shape[1] != tokens + 1 or len(segments.complete_codes) != len(chunk):
                raise RuntimeError(
                    f"Constrained generation returned {int(segments.complete.sum())} complete images for {len(chunk)} "
                    "drawing prompts; the model's generation config (e.g. an eos/stop setting) cut the images."
                )
            out.append(segments.complete_codes.reshape(len(chunk), tokens))
        return torch.cat(out) if out else torch.empty(0, tokens, dtype=torch.long)


# --------------------------------------------------------------------------------------------- input rows
def _row_to_question(row: Mapping[str, Any], config: BootstrapConfig, index: int) -> dict[str, Any]:
    """Maps an input row onto the M3CoT column names and converts it with the M3CoT converter."""

    def get(column: str | None) -> Any:
        return row.get(column) if column else None

    mapped = {
        "id": get(config.id_column),
        "question": get(config.question_column),
        "choices": get(config.choices_column),
        "context": get(config.context_column),
        "answer": get(config.answer_column),
        "rationale": get(config.rationale_column),
        "image": get(config.image_column),
    }
    if mapped["id"] is None:
        mapped["id"] = f"row-{index}"
    if mapped["answer"] is not None and not isinstance(mapped["answer"], str):
        mapped["answer"] = str(mapped["answer"])
    return m3cot_row_to_interleaved(mapped, index)


def load_input_dataset(config: BootstrapConfig) -> Any:
    """Loads the input dataset named by `config` (local file / directory / `datasets` source)."""
    from datasets import load_dataset

    name = config.dataset_name
    if name is None and not config.data_files:
        raise ValueError("No input: set `dataset_name` (a file, a directory or a datasets source) or `data_files`.")
    if name is not None and os.path.isfile(name):
        extension = os.path.splitext(name)[1].lower().lstrip(".")
        builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}.get(extension)
        if builder is None:
            raise ValueError(f"dataset_name={name!r}: unsupported file type (json, jsonl, parquet or csv).")
        dataset = load_dataset(builder, data_files=name, split=config.dataset_split)
    else:
        kwargs = {"data_files": config.data_files} if config.data_files else {}
        dataset = load_dataset(name, config.dataset_config, split=config.dataset_split, **kwargs)
    return dataset


def _model_fingerprint(model: Any, vocab: ImageVocabulary) -> str:
    hasher = hashlib.sha256()
    hasher.update(repr((vocab.grid_size, vocab.num_codes, vocab.boi_token_id, vocab.eoi_token_id)).encode())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # Float64 sums: cheap and they change whenever the weights do.
            hasher.update(f"{name}:{tuple(parameter.shape)}:{float(parameter.detach().double().sum()):.10e}".encode())
    return hasher.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- manifest
def _write_json_atomic(path: str, data: Mapping[str, Any]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def output_arguments(config: BootstrapConfig) -> dict[str, Any]:
    """The arguments that decide the rows written (every field but output_dir / overwrite / display settings).

    Callables given in place of dotted paths (`step_splitter`, `quality_fn`) are recorded by qualified name.
    """
    arguments = {}
    for f in dataclasses.fields(config):
        if f.name in _NON_OUTPUT_ARGUMENTS:
            continue
        value = getattr(config, f.name)
        if callable(value):
            value = f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', repr(value))}"
        arguments[f.name] = value
    return json.loads(json.dumps(arguments, default=str))


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _prepare_output_dir(config: BootstrapConfig, identity: dict[str, Any]) -> dict[str, Any]:
    """Creates / checks the output directory and returns the manifest to continue from."""
    out = config.output_dir
    manifest_path = os.path.join(out, MANIFEST_NAME)
    data_dir = os.path.join(out, DATA_DIR)
    if config.overwrite:
        for name in (MANIFEST_NAME, "README.md"):
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
        if os.path.isdir(data_dir):
            for name in os.listdir(data_dir):
                os.remove(os.path.join(data_dir, name))
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        previous = {**manifest.get("arguments", {}), **manifest.get("identity", {})}
        current = {**identity["arguments"], **identity["identity"]}
        differing = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        if differing:
            details = "; ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in differing)
            raise ValueError(
                f"{out} holds a bootstrap run with different arguments ({details}); refusing to resume into it. "
                "Fix: re-run with the same arguments to continue it, pass `--overwrite` to start over, or choose "
                "another `--output_dir`."
            )
        return manifest
    if os.path.isdir(out) and any(n != DATA_DIR for n in os.listdir(out)):
        raise ValueError(
            f"{out} exists and is not a bootstrap output (no {MANIFEST_NAME}). Fix: choose an empty or new "
            "`--output_dir`."
        )
    os.makedirs(data_dir, exist_ok=True)
    manifest = {
        "version": MANIFEST_VERSION,
        **identity,
        "shards": [],
        "counts": {},
        "complete": False,
    }
    _write_json_atomic(manifest_path, manifest)
    return manifest


def _empty_counts() -> dict[str, int]:
    return dict.fromkeys(
        (
            "input_rows",
            "rows_written",
            "samples_dropped",
            "samples_without_steps",
            "steps",
            "images_drawn",
            "images_kept",
            "redraws",
            "low_quality_images",
            "steps_without_image",
            "prompt_images_encoded",
            "samples_skipped_bad_input",
        ),
        0,
    )


# --------------------------------------------------------------------------------------------- the run
class _Bootstrapper:
    def __init__(self, config: BootstrapConfig, model: Any, processor: Any, dataset: Any):
        from ..rewards import PerceptionReward

        self.config = config
        self.model = model
        self.processor = processor
        self.dataset = dataset
        self.vocab = ImageVocabulary.from_model(model, processor)
        self.encoder = ImageEncoder(model, processor, self.vocab, batch_size=config.encode_batch_size)
        self.drawer = StepDrawer(model, processor, self.vocab, config)
        self.perception = PerceptionReward(
            self.vocab, tau=config.perception_tau, mapping=config.perception_mapping, device="cpu"
        )
        quality_fn = config.quality_fn
        self.quality_fn = resolve_callable(quality_fn, "quality_fn") if isinstance(quality_fn, str) else quality_fn
        splitter = config.step_splitter
        known = ("auto", "numbered", "thought", "sentences", "lines")
        if isinstance(splitter, str) and splitter not in known and not splitter.startswith("regex:"):
            splitter = resolve_callable(splitter, "step_splitter")
        self.splitter = splitter

    def features(self):
        from datasets import List, Value

        extra = {"source": Value("string"), "image_scores": List(Value("float32")), "num_steps": Value("int32")}
        for column in self.config.keep_columns:
            if column in self.dataset.column_names and column not in ("id", "prompt", "completion", "answer"):
                extra[column] = self.dataset.features[column]
        return interleaved_features(**extra)

    def _question(self, index: int, row: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        converted = _row_to_question(row, self.config, index)
        steps = cap_steps(
            split_steps(row.get(self.config.rationale_column) or "", self.splitter), self.config.max_steps
        )
        converted["prompt"] = normalize_parts(converted["prompt"], converted["id"], "prompt")
        return converted, steps

    def _skip(self, error: InterleavedDataError, counts: dict[str, int]) -> None:
        if self.config.on_error == "raise":
            raise error
        counts["samples_skipped_bad_input"] += 1
        counts["samples_dropped"] += 1
        logger.warning("Skipped a bad input row (on_error='skip'): %s", error)

    def _prompt_images(self, q: dict[str, Any]) -> list[tuple[int, Any]]:
        """The question's images that need encoding, read now so that a bad one names its row."""
        return [
            (i, load_image(part, self.config.image_root, q["id"], f"prompt[{i}]"))
            for i, part in enumerate(q["prompt"])
            if part["type"] == "image" and part["codes"] is None
        ]

    def _encode_prompt_images(self, questions: list, images: list, counts: dict[str, int]) -> None:
        pending = [(q, i, image) for q, pil in zip(questions, images, strict=True) for i, image in pil]
        if not pending:
            return
        codes = self.encoder.encode([image for _, _, image in pending])
        counts["prompt_images_encoded"] += len(pending)
        for (q, i, _), c in zip(pending, codes, strict=True):
            q["prompt"][i] = image_part(codes=c.tolist())

    def _score(self, codes: torch.Tensor, jobs: list[_Job], questions: list[dict[str, Any]]) -> list[tuple]:
        grids = codes.view(len(jobs), *self.vocab.grid_size)
        scores = self.perception.image_scores(grids).tolist()
        user = None
        if self.quality_fn is not None:
            info = [{"id": questions[j.sample]["id"], "step": j.step, "attempt": j.attempt} for j in jobs]
            user = [float(s) for s in self.quality_fn(grids, info)]
            if len(user) != len(jobs):
                raise ValueError(f"quality_fn returned {len(user)} scores for {len(jobs)} drawings.")
        threshold = self.config.quality_threshold
        results = []
        distinct = [len(set(row)) for row in codes.tolist()] if self.config.min_distinct_codes > 0 else None
        for k, score in enumerate(scores):
            ok = threshold is None or score >= threshold
            if distinct is not None:
                ok = ok and distinct[k] >= self.config.min_distinct_codes
            if user is not None:
                ok = ok and user[k] >= self.config.quality_fn_threshold
            results.append((ok, score))
        return results

    def process_shard(self, start: int, end: int, counts: dict[str, int], progress: Any = None) -> list[dict]:
        config = self.config
        rows = self.dataset.select(range(start, end)).to_list()
        questions, steps, images = [], [], []
        for offset, row in enumerate(rows):
            try:
                q, s = self._question(start + offset, row)
                pil = self._prompt_images(q)
            except InterleavedDataError as error:
                self._skip(error, counts)
                q, s, pil = None, [], []
            questions.append(q)
            steps.append(s)
            images.append(pil)
        counts["input_rows"] += len(rows)
        self._encode_prompt_images(questions, images, counts)

        question_text = []
        question_codes = []
        for q in questions:
            if q is None:
                question_text.append(None)
                question_codes.append(None)
                continue
            texts = [p["text"] for p in q["prompt"] if p["type"] == "text"]
            images = [p["codes"] for p in q["prompt"] if p["type"] == "image"]
            question_text.append("\n".join(t.strip() for t in texts))
            question_codes.append([torch.tensor(codes) for codes in images])

        # best[(sample, step)] = (ok, score, codes)
        best: dict[tuple[int, int], tuple[bool, float, list[int]]] = {}
        jobs = []
        for sample, sample_steps in enumerate(steps):
            try:  # every prompt of the sample is built (and checked) before any of them is drawn
                sample_jobs = [
                    self._job(sample, step, 0, start, question_text, question_codes, sample_steps)
                    for step in range(len(sample_steps))
                ]
            except InterleavedDataError as error:
                self._skip(error, counts)
                questions[sample], steps[sample] = None, []
                continue
            counts["steps"] += len(sample_steps)
            jobs += sample_jobs
        while jobs:
            # Longest prompts first: batches of similar length waste less padding. The order is a function of the
            # shard's content only, so it is the same on every run.
            jobs.sort(key=lambda j: (-len(j.prompt_ids), j.sample, j.step))
            codes = self.drawer.draw([j.prompt_ids for j in jobs], [j.seed for j in jobs])
            counts["images_drawn"] += len(jobs)
            counts["redraws"] += sum(j.attempt > 0 for j in jobs)
            again = []
            for job, c, (ok, score) in zip(jobs, codes, self._score(codes, jobs, questions), strict=True):
                key = (job.sample, job.step)
                previous = best.get(key)
                if previous is None or (ok, score) > (previous[0], previous[1]):
                    best[key] = (ok, score, c.tolist())
                if not ok:
                    counts["low_quality_images"] += 1
                    if job.attempt < config.max_redraws:
                        again.append(
                            self._job(job.sample, job.step, job.attempt + 1, start, question_text, question_codes,
                                      steps[job.sample])
                        )  # fmt: skip
            jobs = again

        out = []
        for sample, q in enumerate(questions):
            if q is None:  # skipped bad input, counted in _skip
                continue
            if not steps[sample]:
                counts["samples_without_steps"] += 1
                counts["samples_dropped"] += 1
                continue
            completion, scores, drop = [], [], False
            for step, text in enumerate(steps[sample]):
                ok, score, codes = best[(sample, step)]
                completion.append(text_part(text))
                if ok or config.on_low_quality == "keep_best":
                    completion.append(image_part(codes=codes))
                    scores.append(score)
                elif config.on_low_quality == "drop_sample":
                    drop = True
                else:
                    counts["steps_without_image"] += 1
            if drop:
                counts["samples_dropped"] += 1
                continue
            counts["images_kept"] += len(scores)
            row = rows[sample]
            record = {
                "id": q["id"],
                "prompt": q["prompt"],
                "completion": completion,
                "answer": q["answer"],
                "source": config.source_name,
                "image_scores": scores,
                "num_steps": len(steps[sample]),
            }
            for column in config.keep_columns:
                if column in row and column not in record:
                    record[column] = row[column]
            out.append(record)
        counts["rows_written"] += len(out)
        if progress is not None:
            progress.update(len(rows))
        return out

    def _job(self, sample, step, attempt, start, question_text, question_codes, sample_steps) -> _Job:
        prompt = self.drawer.prompt_ids(
            question_text[sample], question_codes[sample], sample_steps, step, row=start + sample
        )
        return _Job(sample, step, attempt, prompt, drawing_seed(self.config.seed, start + sample, step, attempt))


def _readme(config: BootstrapConfig, manifest: Mapping[str, Any]) -> str:
    counts = manifest["counts"]
    return (
        "# Omni-R1-Zero bootstrapped trajectories\n\n"
        "Interleaved rows (trl-omni schema: `prompt` / `completion` lists of text and image parts with VQ `codes`, "
        f"`answer`) drawn by `{manifest['identity'].get('model_name_or_path')}` (fingerprint "
        f"`{manifest['identity']['model_fingerprint']}`), seed {config.seed}.\n\n"
        f"Train with the collator template `{config.template}`:\n\n"
        "```python\nfrom trl_omni.data.bootstrap import load_bootstrapped\n"
        f"train = load_bootstrapped({config.output_dir!r})\n"
        f'# PeSFTConfig(..., interleaved_template="{config.template}")\n```\n\n'
        f"Rows: {counts.get('rows_written', 0)} from {counts.get('input_rows', 0)} input rows; images kept "
        f"{counts.get('images_kept', 0)} of {counts.get('images_drawn', 0)} drawn ({counts.get('redraws', 0)} "
        f"redraws). See `manifest.json`.\n"
    )


def run_bootstrap(
    config: BootstrapConfig,
    model: Any = None,
    processor: Any = None,
    dataset: Any = None,
) -> dict[str, Any]:
    """Runs (or resumes) a bootstrap into `config.output_dir`; returns the final manifest.

    Args:
        config: The run's [`BootstrapConfig`].
        model: A loaded Chameleon / Anole model with image generation enabled; loaded from
            `config.model_name_or_path` with `load_omni_model` when omitted.
        processor: Its `ChameleonProcessor`.
        dataset: An in-memory input (`datasets.Dataset` or list of rows); else loaded from `config.dataset_name`.

    Returns:
        The manifest (arguments, their hash, model fingerprint, counts, shard list).

    Example:
        ```python
        >>> from trl_omni.data.bootstrap import BootstrapConfig, load_bootstrapped, run_bootstrap
        >>> run_bootstrap(BootstrapConfig(output_dir="out", model_name_or_path="leloy/Anole-7b-v0.1-hf",
        ...                               dataset_name="m3cot.parquet", quality_threshold=0.5))
        >>> train = load_bootstrapped("out")
        ```
    """
    from datasets import Dataset, Image
    from tqdm.auto import tqdm

    if config.output_dir is None:
        raise ValueError("BootstrapConfig.output_dir is required.")
    if model is None:
        if config.model_name_or_path is None:
            raise ValueError("Pass a model or set `model_name_or_path`.")
        from ..models import load_omni_model

        dtype = config.dtype if config.dtype == "auto" else getattr(torch, config.dtype)
        model, processor = load_omni_model(config.model_name_or_path, dtype=dtype)
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
    elif processor is None:
        raise ValueError("Pass the model's processor together with the model.")
    model.eval()

    if dataset is None:
        dataset = load_input_dataset(config)
    elif not isinstance(dataset, Dataset):
        dataset = Dataset.from_list(list(dataset))
    # Question images are read as their stored bytes: no decode / re-encode before the VQ encoder.
    for column, feature in dataset.features.items():
        if isinstance(feature, Image) and feature.decode:
            dataset = dataset.cast_column(column, Image(decode=False))
    if config.max_samples is not None:
        dataset = dataset.select(range(min(config.max_samples, len(dataset))))
    for column in (config.question_column, config.answer_column, config.rationale_column):
        if column not in dataset.column_names:
            raise ValueError(
                f"The input has no column {column!r} (columns: {dataset.column_names}). Fix: map it with "
                "--question_column / --answer_column / --rationale_column."
            )

    worker = _Bootstrapper(config, model, processor, dataset)
    identity = {
        "arguments": output_arguments(config),
        "identity": {
            "model_name_or_path": config.model_name_or_path,
            "model_fingerprint": _model_fingerprint(model, worker.vocab),
            "input_fingerprint": getattr(dataset, "_fingerprint", None),
            "input_rows": len(dataset),
        },
    }
    identity["arguments_hash"] = _hash(identity["arguments"] | identity["identity"])
    identity["seed"] = config.seed
    identity["template"] = config.template  # the collator template to train with (rows are template-free)
    manifest = _prepare_output_dir(config, identity)
    manifest_path = os.path.join(config.output_dir, MANIFEST_NAME)
    data_dir = os.path.join(config.output_dir, DATA_DIR)
    for name in os.listdir(data_dir):  # leftovers of a write that was killed before its rename
        if ".tmp-" in name:
            os.remove(os.path.join(data_dir, name))

    num_rows = len(dataset)
    num_shards = -(-num_rows // config.shard_size)
    done = {shard["index"] for shard in manifest["shards"]}
    counts = _empty_counts()
    for shard in manifest["shards"]:
        for key, value in shard["counts"].items():
            counts[key] = counts.get(key, 0) + value
    features = worker.features()
    kill_after = int(os.environ.get(KILL_AFTER_SHARDS_ENV, "0") or 0)
    written_now = 0
    started = time.monotonic()
    progress = tqdm(
        total=num_rows,
        initial=min(num_rows, sum(s["input_end"] - s["input_start"] for s in manifest["shards"])),
        desc="bootstrap",
        unit="row",
        disable=config.disable_tqdm,
        dynamic_ncols=True,
    )
    try:
        for index in range(num_shards):
            if index in done:
                continue
            start, end = index * config.shard_size, min(num_rows, (index + 1) * config.shard_size)
            shard_counts = _empty_counts()
            rows = worker.process_shard(start, end, shard_counts, progress)
            name = f"shard-{index:05d}-of-{num_shards:05d}.parquet"
            path = os.path.join(data_dir, name)
            tmp = os.path.join(data_dir, f".{name}.tmp-{os.getpid()}")
            # from_dict with explicit columns: an empty shard (every sample dropped) still carries the schema.
            columns = {name: [row.get(name) for row in rows] for name in features}
            Dataset.from_dict(columns, features=features).to_parquet(tmp)
            os.replace(tmp, path)  # atomic: a shard file is either absent or complete
            written_now += 1
            if kill_after and written_now >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            manifest["shards"].append(
                {"index": index, "file": f"{DATA_DIR}/{name}", "input_start": start, "input_end": end,
                 "rows": len(rows), "counts": shard_counts}
            )  # fmt: skip
            manifest["shards"].sort(key=lambda s: s["index"])
            for key, value in shard_counts.items():
                counts[key] = counts.get(key, 0) + value
            manifest["counts"] = counts
            _write_json_atomic(manifest_path, manifest)
            progress.set_postfix(rows=counts["rows_written"], kept=counts["images_kept"], redraws=counts["redraws"])
    finally:
        progress.close()
    manifest["counts"] = counts
    manifest["complete"] = True
    _write_json_atomic(manifest_path, manifest)
    with open(os.path.join(config.output_dir, "README.md"), "w") as f:
        f.write(_readme(config, manifest))
    elapsed = time.monotonic() - started
    logger.info(
        "Bootstrap done: %d rows written from %d input rows (%d dropped); images drawn %d, kept %d, redraws %d, "
        "low-quality %d, steps without image %d; %.1f s this run.",
        counts["rows_written"], counts["input_rows"], counts["samples_dropped"], counts["images_drawn"],
        counts["images_kept"], counts["redraws"], counts["low_quality_images"], counts["steps_without_image"], elapsed,
    )  # fmt: skip
    return manifest


def bootstrap_dataset(
    dataset: Any,
    model: Any,
    processor: Any,
    output_dir: str,
    **kwargs: Any,
) -> Any:
    """Bootstraps `dataset` with `model` into `output_dir` and returns the interleaved `datasets.Dataset`.

    Args:
        dataset: Text-only CoT rows (`datasets.Dataset` or list of dicts; M3CoT columns by default).
        model: Chameleon / Anole model with image generation enabled (e.g. from `load_omni_model`).
        processor: Its processor.
        output_dir: Where shards and manifest go (re-running resumes).
        **kwargs: Further [`BootstrapConfig`] fields.

    Example:
        ```python
        >>> from trl_omni.testing import tiny_chameleon
        >>> from trl_omni.testing_data import m3cot_rows
        >>> model, processor = tiny_chameleon()
        >>> train = bootstrap_dataset(m3cot_rows(4), model, processor, "out", max_steps=2)
        >>> [part["type"] for part in train[0]["completion"]]
        ['text', 'image', 'text', 'image']
        ```
    """
    config = BootstrapConfig(output_dir=output_dir, **kwargs)
    run_bootstrap(config, model=model, processor=processor, dataset=dataset)
    return load_bootstrapped(output_dir)


def bootstrapped_files(output_dir: str, allow_partial: bool = False) -> list[str]:
    """The shard files of a bootstrap output, in input order (from its manifest)."""
    path = os.path.join(output_dir, MANIFEST_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{output_dir} has no {MANIFEST_NAME}: not a bootstrap output.")
    with open(path) as f:
        manifest = json.load(f)
    if not manifest.get("complete") and not allow_partial:
        raise ValueError(
            f"The bootstrap in {output_dir} is not finished ({len(manifest['shards'])} shards so far). Fix: re-run "
            "it with the same arguments to complete it, or pass allow_partial=True."
        )
    return [os.path.join(output_dir, shard["file"]) for shard in sorted(manifest["shards"], key=lambda s: s["index"])]


def load_bootstrapped(output_dir: str, allow_partial: bool = False) -> Any:
    """Loads a bootstrap output as one `datasets.Dataset` (rows in input order).

    Equivalent to `load_dataset("parquet", data_files=bootstrapped_files(output_dir), split="train")`.

    Example:
        ```python
        >>> train = load_bootstrapped("out")
        ```
    """
    from datasets import load_dataset

    files = bootstrapped_files(output_dir, allow_partial=allow_partial)
    if not files:
        raise ValueError(f"The bootstrap in {output_dir} has no shards yet.")
    return load_dataset("parquet", data_files=files, split="train")


__all__ = [
    "BootstrapConfig",
    "SeededGumbelSampler",
    "StepDrawer",
    "bootstrap_dataset",
    "bootstrapped_files",
    "cap_steps",
    "drawing_seed",
    "load_bootstrapped",
    "load_input_dataset",
    "run_bootstrap",
    "split_steps",
]
