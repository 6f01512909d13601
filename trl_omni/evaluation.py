"""Evaluation of drawing models on Omni-Bench-format or interleaved data: accuracy per source / task group,
predictions JSONL with saved images, an HTML report with rendered trajectories; resumable after a kill.

Output directory layout:

- `predictions.jsonl`: one line per row (`index, id, source, group, prompt, completion, extracted_answer, gold,
  score, num_images, num_incomplete_images, image_paths, completion_ids`), appended and flushed batch by batch;
- `eval_state.json`: the hash (and values) of every argument that shapes the predictions, checked on resume;
- `images/`: the completions' images as PNG (`<index>_<k>.png`);
- `metrics.json`, `results.md`: accuracy overall, per task group and per source, recomputed from the JSONL;
- `report.html`: the table plus rendered trajectories.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


logger = logging.getLogger(__name__)

# Omni-Bench's four task groups; names are matched after lower-casing and dropping non-alphanumerics.
DEFAULT_TASK_GROUPS: dict[str, list[str]] = {
    "natural_scene": ["vstar", "v*", "v_star", "vstarbench", "natural_scene"],
    "structured_image": ["arxivqa", "chartqa", "structured_image"],
    "diagrammatic_math": ["geometry3k", "geo3k", "mathvista", "diagrammatic_math", "diagram_math"],
    "vision_operational": ["vicbench", "vic-bench", "vic_bench", "vision_operational"],
}
OTHER_GROUP = "other"
PREDICTIONS_FILE = "predictions.jsonl"
STATE_FILE = "eval_state.json"
# Fields of EvalConfig that never change a prediction (left out of the resume hash).
_NOT_HASHED = ("output_dir", "overwrite", "progress", "report_max_rows", "print_table")


class EvalResumeError(RuntimeError):
    """The output directory holds predictions made with other arguments."""


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
        max_new_tokens (`int`, *optional*, defaults to `1024`):
            Generation budget per row (one 512px Anole image is 1,026 tokens).
        max_images (`int` or `None`, *optional*):
            Cap on images drawn per completion (`None`: no cap, `0`: text only).
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
    max_new_tokens: int = field(default=1024, metadata={"help": "Generation budget per row."})
    max_images: int | None = field(default=None, metadata={"help": "Cap on images per completion (0: text only)."})
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
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows."})
    save_images: bool = field(default=True, metadata={"help": "Decode and save the completions' images."})
    report_max_rows: int = field(default=50, metadata={"help": "Trajectories rendered in report.html."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    print_table: bool = field(default=True, metadata={"help": "Print the accuracy table at the end."})

    def __post_init__(self):
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
        if isinstance(self.source_columns, str):
            self.source_columns = [self.source_columns]
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1.")


@dataclass
class EvalResult:
    """What [`evaluate`] produced: `metrics` (overall / groups / sources) and the paths of its files."""

    metrics: dict[str, Any]
    table: str
    predictions_path: str
    metrics_path: str
    report_path: str
    num_generated: int


def _normalize(name: Any) -> str:
    return re.sub(r"[^0-9a-z*]", "", str(name).lower())


def task_group_of(values: Sequence[Any], task_groups: Mapping[str, Sequence[str]]) -> str:
    """The task group of a row from its source / dataset values (first match wins), or `"other"`."""
    lookup = {_normalize(name): group for group, names in task_groups.items() for name in names}
    lookup.update({_normalize(group): group for group in task_groups})
    for value in values:
        if value is not None and _normalize(value) in lookup:
            return lookup[_normalize(value)]
    return OTHER_GROUP


def accuracy_table(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy overall, per task group and per source from prediction records (`score` None = unscored).

    Example:
        ```python
        >>> accuracy_table([{"source": "chartqa", "group": "structured_image", "score": 1.0}])["overall"]
        {'accuracy': 1.0, 'num_rows': 1, 'num_scored': 1, 'mean_images': 0.0}
        ```
    """

    def summarize(rows: list) -> dict[str, Any]:
        scores = [row["score"] for row in rows if row.get("score") is not None]
        return {
            "accuracy": sum(scores) / len(scores) if scores else None,
            "num_rows": len(rows),
            "num_scored": len(scores),
            "mean_images": sum(row.get("num_images", 0) for row in rows) / len(rows) if rows else 0.0,
        }

    by_group: dict[str, list] = {}
    by_source: dict[str, list] = {}
    for row in records:
        by_group.setdefault(row["group"], []).append(row)
        by_source.setdefault(str(row["source"]), []).append(row)
    return {
        "overall": summarize(list(records)),
        "groups": {name: summarize(rows) for name, rows in sorted(by_group.items())},
        "sources": {name: summarize(rows) for name, rows in sorted(by_source.items())},
    }


def format_table(metrics: Mapping[str, Any]) -> str:
    """The metrics of [`accuracy_table`] as a markdown table."""
    lines = ["| split | name | accuracy | scored / rows | images / row |", "|---|---|---|---|---|"]

    def line(kind: str, name: str, entry: Mapping[str, Any]) -> str:
        accuracy = "n/a" if entry["accuracy"] is None else f"{100 * entry['accuracy']:.1f}%"
        return f"| {kind} | {name} | {accuracy} | {entry['num_scored']} / {entry['num_rows']} | {entry['mean_images']:.2f} |"

    lines += [line("group", name, entry) for name, entry in metrics["groups"].items()]
    lines += [line("source", name, entry) for name, entry in metrics["sources"].items()]
    lines.append(line("overall", "all", metrics["overall"]))
    return "\n".join(lines)


def read_predictions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a predictions JSONL; a last line cut by a kill is ignored."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break  # torn write of an interrupted run
            records.append(json.loads(line))
    return records


def _model_fingerprint(model: Any) -> dict[str, Any]:
    """Cheap identity of the weights: name, parameter count and a hash of a few small slices."""
    digest = hashlib.sha256()
    parameters = list(model.parameters())
    for parameter in parameters[:2] + parameters[-2:]:
        digest.update(parameter.detach().reshape(-1)[:4096].float().cpu().numpy().tobytes())
    return {
        "name_or_path": str(getattr(getattr(model, "config", None), "_name_or_path", "")),
        "num_parameters": sum(p.numel() for p in parameters),
        "weights": digest.hexdigest()[:16],
    }


def _dataset_fingerprint(dataset: Any, id_column: str) -> str:
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint:
        return str(fingerprint)
    ids = [str(row.get(id_column, i)) for i, row in enumerate(dataset)]
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _state_for(config: EvalConfig, model: Any, dataset: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
    values = {key: value for key, value in asdict(config).items() if key not in _NOT_HASHED}
    values.update(extra)
    values["model"] = _model_fingerprint(model)
    values["dataset"] = _dataset_fingerprint(dataset, config.id_column)
    values["num_rows"] = len(dataset)
    encoded = json.dumps(values, sort_keys=True, default=str)
    return {"config_hash": hashlib.sha256(encoded.encode()).hexdigest(), "values": json.loads(encoded)}


def _prepare_output_dir(config: EvalConfig, state: dict[str, Any]) -> list[dict[str, Any]]:
    out = Path(config.output_dir)
    predictions, state_path = out / PREDICTIONS_FILE, out / STATE_FILE
    if config.overwrite:
        for path in (predictions, state_path, out / "metrics.json", out / "results.md", out / "report.html"):
            path.unlink(missing_ok=True)
        if (out / "images").is_dir():
            for image in (out / "images").glob("*.png"):
                image.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if predictions.exists() and predictions.stat().st_size > 0:
        if not state_path.exists():
            raise EvalResumeError(
                f"{predictions} exists but {state_path} does not, so the arguments that produced it are unknown. "
                "Pass --overwrite to start again, or choose another --output_dir."
            )
        previous = json.loads(state_path.read_text())
        if previous["config_hash"] != state["config_hash"]:
            old, new = previous.get("values", {}), state["values"]
            changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
            details = "; ".join(f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in changed)
            raise EvalResumeError(
                f"{config.output_dir} holds predictions made with different arguments ({details}). Refusing to mix "
                "them: pass --overwrite to discard them, rerun with the same arguments to resume, or choose another "
                "--output_dir."
            )
        records = read_predictions(predictions)
        # Drop a torn last line so appends start on a clean line.
        with open(predictions, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in records)
        return records
    state_path.write_text(json.dumps(state, indent=2))
    predictions.write_text("")
    return []


def _row_source(row: Mapping[str, Any], source_columns: Sequence[str]) -> tuple[str, list[Any]]:
    values = [row.get(column) for column in source_columns if row.get(column) not in (None, "")]
    return (str(values[0]) if values else "unknown"), values


def _resolve_decoder(decoder: Any, vocab: Any) -> Any:
    from .visualization import FalseColorDecoder

    return decoder if decoder is not None else FalseColorDecoder(vocab)


def evaluate(
    model: Any,
    processor: Any,
    dataset: Any,
    config: EvalConfig,
    *,
    decoder: Any | None = None,
    dataset_format: str = "auto",
    image_root: str | None = None,
    logits_processors: Sequence[Any] = (),
) -> EvalResult:
    """Generates answers for `dataset` with constrained image spans, scores them and writes predictions + report.

    Prompts are laid out by [`InterleavedDataCollator.encode_prompt_batch`] (`config.template`); generation goes
    through [`ImageSpanLogitsProcessor`] (`max_images`, `max_new_tokens`); answers are scored by
    [`~trl_omni.rewards.make_accuracy_reward`] with the processor, so special-token answer tags are read. Finished
    rows are never recomputed: the JSONL is appended and flushed per batch, and a second call with the same
    arguments (checked through a hash stored in `eval_state.json`) continues where the first stopped.

    Args:
        model: A Chameleon / Anole model (image generation enabled, e.g. from [`load_omni_model`]).
        processor: Its processor.
        dataset: A `datasets.Dataset` (or list of rows) in Omni-Bench format (`question`, base64 `image`, `answer`,
            source fields) or in the interleaved schema; images are encoded into codes once.
        config: The [`EvalConfig`].
        decoder: Object with `decode(codes) -> list[PIL.Image]` for saved / rendered images (e.g.
            `VQImageDecoder(load_vq_decoder(model), vocab)`); defaults to the weight-free [`FalseColorDecoder`].
        dataset_format: `"auto"`, `"omni_bench"`, `"interleaved"`, ... (see `trl-omni eval --help`).
        image_root: Directory that image `path` parts are read from.
        logits_processors: Extra `LogitsProcessor`s, applied before the image-span constraint (which therefore
            always has the last word on image spans).

    Returns:
        An [`EvalResult`].

    Example:
        ```python
        >>> from trl_omni.evaluation import EvalConfig, evaluate
        >>> result = evaluate(model, processor, omni_bench, EvalConfig(output_dir="eval", max_new_tokens=2048))
        >>> print(result.table)
        ```
    """
    from datasets import Dataset
    from transformers import LogitsProcessorList

    from .collators import InterleavedDataCollator
    from .data.loading import to_interleaved
    from .models import ImageSpanLogitsProcessor, ImageVocabulary
    from .rewards import make_accuracy_reward
    from .rewards._common import OutputTags, _TagRestorer
    from .rewards.accuracy import extract_answer

    if not isinstance(dataset, Dataset):
        dataset = Dataset.from_list(list(dataset))
    if config.max_samples is not None:
        dataset = dataset.select(range(min(config.max_samples, len(dataset))))
    vocab = ImageVocabulary.from_model(model, processor)
    dataset = to_interleaved(dataset, dataset_format, model, processor, image_root=image_root)
    state = _state_for(config, model, dataset, {"dataset_format": dataset_format, "template": config.template})
    records = _prepare_output_dir(config, state)
    done = {record["index"] for record in records}
    out = Path(config.output_dir)
    (out / "images").mkdir(exist_ok=True)

    collator = InterleavedDataCollator(
        processor, vocab, template=config.template, answer_column=config.answer_column, id_column=config.id_column
    )
    tokenizer = collator.tokenizer
    reward = make_accuracy_reward(
        answer_column=config.answer_column,
        answer_style=config.answer_style,
        processing_class=processor,
        image_vocabulary=vocab,
    )
    tags = OutputTags()
    restorer = _TagRestorer(processor, tags.control_tags, vocab)
    decoder = _resolve_decoder(decoder, vocab)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    progress = None
    if config.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(dataset), initial=len(done), desc="Evaluating", unit="row")
    generated = 0
    with open(out / PREDICTIONS_FILE, "a", encoding="utf-8") as handle:
        for start in range(0, len(dataset), config.batch_size):
            indices = list(range(start, min(start + config.batch_size, len(dataset))))
            if all(index in done for index in indices):
                continue
            rows = [dataset[index] for index in indices]
            inputs = collator.encode_prompt_batch(rows, padding_side="left")
            inputs = {key: value.to(device) for key, value in inputs.items()}
            # Seeded per batch: an uninterrupted run and a resumed one sample the same tokens for the same batch.
            torch.manual_seed(config.seed + start)
            constraint = ImageSpanLogitsProcessor(
                vocab, max_images=config.max_images, max_new_tokens=config.max_new_tokens
            )
            sampling = {"temperature": config.temperature, "top_p": config.top_p} if config.do_sample else {}
            with torch.no_grad():
                output = model.generate(
                    **inputs,
                    max_new_tokens=config.max_new_tokens,
                    do_sample=config.do_sample,
                    logits_processor=LogitsProcessorList([*logits_processors, constraint]),
                    pad_token_id=collator.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **sampling,
                )
            completion_ids = [
                _until_eos(ids, tokenizer.eos_token_id) for ids in output[:, inputs["input_ids"].shape[1] :]
            ]
            prompt_ids = [
                ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])
            ]
            prompt_texts = [restorer(ids) for ids in prompt_ids]
            completion_texts = [restorer(ids) for ids in completion_ids]
            golds = [row.get(config.answer_column) for row in rows]
            scores = reward(
                prompts=prompt_texts, completions=completion_texts, completion_ids=completion_ids,
                **{config.answer_column: golds},
            )  # fmt: skip
            segments = vocab.parse_segments(completion_ids).per_row(len(rows)) if completion_ids else []
            image_paths = _save_images(segments, indices, decoder, out, config.save_images)
            for position, (index, row) in enumerate(zip(indices, rows)):
                if index in done:
                    continue  # finished before an interruption inside this batch
                source, source_values = _row_source(row, config.source_columns)
                complete = [segment for segment in segments[position] if segment.complete]
                record = {
                    "index": index,
                    "id": row.get(config.id_column, str(index)),
                    "source": source,
                    "group": task_group_of(source_values, config.task_groups),
                    "prompt": prompt_texts[position],
                    "completion": completion_texts[position],
                    "extracted_answer": extract_answer(completion_texts[position], tags, config.answer_style),
                    "gold": golds[position],
                    "score": scores[position],
                    "num_images": len(complete),
                    "num_incomplete_images": len(segments[position]) - len(complete),
                    "image_paths": image_paths[position],
                    "completion_ids": completion_ids[position],
                }
                handle.write(json.dumps(record) + "\n")
                records.append(record)
                generated += 1
            handle.flush()
            os.fsync(handle.fileno())
            if progress is not None:
                progress.update(sum(index not in done for index in indices))
    if progress is not None:
        progress.close()
    if was_training:
        model.train()

    records.sort(key=lambda record: record["index"])
    metrics = accuracy_table(records)
    table = format_table(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "results.md").write_text(table + "\n")
    report = write_report(records, metrics, table, processor, vocab, decoder, out / "report.html", config)
    if config.print_table:
        print(table)
    return EvalResult(
        metrics=metrics,
        table=table,
        predictions_path=str(out / PREDICTIONS_FILE),
        metrics_path=str(out / "metrics.json"),
        report_path=str(report),
        num_generated=generated,
    )


def _until_eos(ids: torch.Tensor, eos_token_id: int) -> list[int]:
    ids = ids.tolist()
    return ids[: ids.index(eos_token_id)] if eos_token_id in ids else ids


def _save_images(segments: list, indices: list[int], decoder: Any, out: Path, save: bool) -> list[list[str]]:
    paths: list[list[str]] = [[] for _ in indices]
    if not save:
        return paths
    wanted = [(position, segment) for position, row in enumerate(segments) for segment in row if segment.complete]
    if not wanted:
        return paths
    # One decode call for every image of the batch.
    images = decoder.decode(torch.stack([torch.as_tensor(segment.codes) for _, segment in wanted]))
    for (position, _), image in zip(wanted, images):
        name = f"images/{indices[position]:06d}_{len(paths[position])}.png"
        image.save(out / name)
        paths[position].append(name)
    return paths


def write_report(
    records: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    table: str,
    processor: Any,
    vocab: Any,
    decoder: Any,
    path: str | os.PathLike,
    config: EvalConfig,
) -> Path:
    """Writes `report.html`: the accuracy table and up to `config.report_max_rows` rendered trajectories."""
    from .visualization import render_html_page, render_trajectories

    shown = list(records)[: config.report_max_rows]
    trajectories = []
    if shown:
        trajectories = render_trajectories(
            [record["completion_ids"] for record in shown],
            processor,
            vocab,
            decoder,
            titles=[f"#{record['index']} {record['id']} ({record['source']}, {record['group']})" for record in shown],
            metadata=[
                {
                    "question": record["prompt"][-300:],
                    "gold": record["gold"],
                    "extracted answer": record["extracted_answer"],
                    "score": record["score"],
                }
                for record in shown
            ],
        )
    page = render_html_page(trajectories, title=f"trl-omni evaluation: {config.output_dir}")
    summary = [f"<h1>Evaluation ({metrics['overall']['num_rows']} rows)</h1>", _table_html(metrics)]
    if len(records) > len(shown):
        summary.append(f"<p>Showing the first {len(shown)} of {len(records)} trajectories.</p>")
    page = page.replace("<body>\n", "<body>\n" + "\n".join(summary) + "\n", 1)
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)


def _table_html(metrics: Mapping[str, Any]) -> str:
    rows = [("group", name, entry) for name, entry in metrics["groups"].items()]
    rows += [("source", name, entry) for name, entry in metrics["sources"].items()]
    rows.append(("overall", "all", metrics["overall"]))
    cells = []
    for kind, name, entry in rows:
        accuracy = "n/a" if entry["accuracy"] is None else f"{100 * entry['accuracy']:.1f}%"
        cells.append(
            f'<tr class="{kind}"><td>{kind}</td><td>{html.escape(str(name))}</td><td>{accuracy}</td>'
            f"<td>{entry['num_scored']}</td><td>{entry['num_rows']}</td><td>{entry['mean_images']:.2f}</td></tr>"
        )
    return (
        '<table id="accuracy"><thead><tr><th>split</th><th>name</th><th>accuracy</th><th>scored</th><th>rows</th>'
        "<th>images / row</th></tr></thead><tbody>\n" + "\n".join(cells) + "\n</tbody></table>"
    )
