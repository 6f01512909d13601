"""[`evaluate`]: constrained generation batch by batch, scoring, appending predictions, then metrics and report."""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import EvalConfig, EvalResult
from .metrics import accuracy_table, format_table, task_group_of
from .report import write_report
from .state import PREDICTIONS_FILE, _identity, _open_output_dir


@dataclass
class _EvalSession:
    """What every batch of one evaluation uses: the prompt layout, the scorer, the image decoder and the model."""

    model: Any
    vocab: Any
    config: EvalConfig
    collator: Any
    reward: Callable
    tags: Any
    restorer: Callable
    decoder: Any
    logits_processors: Sequence[Any]
    max_new_tokens: int  # the generation budget, `config.generation_budget(vocab)`
    drawing_check: Callable | None = None


def _row_source(row: Mapping[str, Any], source_columns: Sequence[str]) -> tuple[str, list[Any]]:
    values = [row.get(column) for column in source_columns if row.get(column) not in (None, "")]
    return (str(values[0]) if values else "unknown"), values


def _resolve_decoder(decoder: Any, vocab: Any) -> Any:
    from ..visualization import FalseColorDecoder

    return decoder if decoder is not None else FalseColorDecoder(vocab)


def _open_session(
    model: Any,
    processor: Any,
    vocab: Any,
    config: EvalConfig,
    decoder: Any,
    logits_processors: Sequence[Any],
    drawing_check: Callable | None,
) -> _EvalSession:
    from ..collators import InterleavedDataCollator
    from ..rewards import make_accuracy_reward
    from ..rewards._common import OutputTags, _TagRestorer

    collator = InterleavedDataCollator(
        processor, vocab, template=config.template, answer_column=config.answer_column, id_column=config.id_column
    )
    reward = make_accuracy_reward(
        answer_column=config.answer_column,
        answer_style=config.answer_style,
        strict=config.strict_answers,
        processing_class=processor,
        image_vocabulary=vocab,
    )
    tags = OutputTags()
    return _EvalSession(
        model=model,
        vocab=vocab,
        config=config,
        collator=collator,
        reward=reward,
        tags=tags,
        restorer=_TagRestorer(processor, tags.control_tags, vocab),
        decoder=_resolve_decoder(decoder, vocab),
        logits_processors=logits_processors,
        max_new_tokens=config.generation_budget(vocab),
        drawing_check=drawing_check,
    )


def _drawing_score(session: _EvalSession, row: Mapping[str, Any], segments: Sequence[Any], name: Any) -> float | None:
    """Runs the user's drawing check on one row's complete images; its result must be None, a bool or a number in
    [0, 1]."""
    images = [segment.codes.reshape(session.vocab.grid_size) for segment in segments if segment.complete]
    value = session.drawing_check(row, images)
    if value is None:
        return None
    # bool first: it is a `numbers.Real` too. NaN fails the range check.
    if isinstance(value, bool) or (isinstance(value, numbers.Real) and 0.0 <= float(value) <= 1.0):
        return float(value)
    raise TypeError(
        f"drawing_check returned {value!r} ({type(value).__name__}) for row {name!r}; it must return None (not "
        "scored), a bool or a number in [0, 1]."
    )


def _rescore_drawings(session: _EvalSession, dataset: Any, records: list[dict[str, Any]], out: Path) -> None:
    """Scores the drawings of rows finished by an earlier call with this call's drawing check (none: their scores are
    dropped) and rewrites the predictions when that changes them, so a resume never mixes two checks.

    A drawing score is a function of the row and its completion ids only: nothing is generated again, and a finished
    evaluation can be scored with a new check by calling `evaluate` again in the same directory.
    """
    if session.drawing_check is None:
        rescored = [{key: value for key, value in record.items() if key != "drawing_score"} for record in records]
    else:
        segments = session.vocab.parse_completions([record["completion_ids"] for record in records])
        rescored = [
            {**record, "drawing_score": _drawing_score(session, dataset[record["index"]], row_segments, record["id"])}
            for record, row_segments in zip(records, segments.per_row(len(records)))
        ]
    if rescored != records:
        records[:] = rescored
        with open(out / PREDICTIONS_FILE, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in records)


def _generate_batch(
    session: _EvalSession, rows: list[Mapping[str, Any]], start: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids (padding removed) and completion ids (cut at EOS) of one batch, image spans constrained.

    With `open_with_image`, every prompt ends with BOI (the model is asked to draw first): the constrained generation
    finishes that image, which is then the answer's first image (`ImageVocabulary.parse_completions`).
    """
    from ..models import generate_with_images

    config, collator = session.config, session.collator
    inputs = collator.encode_prompt_batch(rows, padding_side="left")
    max_images = config.max_images
    if config.open_with_image:  # left padded: every prompt ends in the last column
        boi = torch.full((len(rows), 1), session.vocab.boi_token_id, dtype=torch.long)
        inputs = {
            "input_ids": torch.cat([inputs["input_ids"], boi], dim=1),
            "attention_mask": torch.cat([inputs["attention_mask"], torch.ones_like(boi)], dim=1),
        }
        # The constraint counts the images the completion opens; the one the prompt opened is the first.
        max_images = None if max_images is None else max_images - 1
    # Seeded per batch: an uninterrupted run and a resumed one sample the same tokens for the same batch.
    torch.manual_seed(config.seed + start)
    sampling = {"temperature": config.temperature, "top_p": config.top_p} if config.do_sample else {}
    completion_ids = generate_with_images(
        session.model,
        session.vocab,
        **inputs,
        max_new_tokens=session.max_new_tokens,
        max_images=max_images,
        do_sample=config.do_sample,
        logits_processors=session.logits_processors,
        eos_token_id=collator.tokenizer.eos_token_id,
        pad_token_id=collator.pad_token_id,
        **sampling,
    )
    prompt_ids = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
    return prompt_ids, completion_ids


def _batch_records(
    session: _EvalSession,
    rows: list[Mapping[str, Any]],
    indices: list[int],
    done: set[int],
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    out: Path,
) -> list[dict[str, Any]]:
    """Scores a generated batch, saves its images and returns the records of the rows not finished before."""
    from ..rewards.accuracy import extract_answer

    config = session.config
    prompt_texts = [session.restorer(ids) for ids in prompt_ids]
    completion_texts = [session.restorer(ids) for ids in completion_ids]
    golds = [_gold(row.get(config.answer_column)) for row in rows]
    scores = session.reward(
        prompts=prompt_texts, completions=completion_texts, completion_ids=completion_ids,
        **{config.answer_column: golds},
    )  # fmt: skip
    segments = session.vocab.parse_completions(completion_ids).per_row(len(rows))
    image_paths = _save_images(segments, indices, session.decoder, out, config.save_images)
    records = []
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
            "question": session.collator.question_text(row),
            "prompt": prompt_texts[position],
            "completion": completion_texts[position],
            "extracted_answer": extract_answer(completion_texts[position], session.tags, config.answer_style),
            "gold": golds[position],
            "score": scores[position],
            "num_images": len(complete),
            "num_incomplete_images": len(segments[position]) - len(complete),
            "image_paths": image_paths[position],
            "completion_ids": completion_ids[position],
            "prompt_ids": prompt_ids[position],
        }
        if session.drawing_check is not None:
            record["drawing_score"] = _drawing_score(session, row, complete, record["id"])
        records.append(record)
    return records


def _gold(value: Any) -> str | None:
    """A row's gold answer (checked to be a string or None by `_check_golds`); blank means none."""
    return value if isinstance(value, str) and value.strip() else None


def _check_golds(dataset: Any, config: EvalConfig) -> int:
    """Checks the gold answers once, before anything is generated; returns how many rows have none.

    A row without a gold answer (no answer column, None or blank) is evaluated, counted in `num_rows` and left
    unscored (`score` null); a gold answer that is not a string (NaN, a list, a number) raises, naming the row.
    """
    import logging

    from datasets import Value

    from ..data.schema import check_answer, row_label

    column = config.answer_column
    if column not in dataset.column_names:
        missing = len(dataset)
    else:
        golds = dataset[column]
        if dataset.features[column] != Value("string"):  # an Arrow string column holds only strings and None
            ids = dataset[config.id_column] if config.id_column in dataset.column_names else [None] * len(golds)
            for index, (gold, row_id) in enumerate(zip(golds, ids)):
                check_answer(gold, row_label(index, row_id), column)
        missing = sum(_gold(gold) is None for gold in golds)
    if missing:
        logging.getLogger(__name__).warning(
            "%d of %d rows have no gold answer (column %r): they are evaluated, counted in num_rows and left "
            "unscored (score null).",
            missing,
            len(dataset),
            column,
        )
    return missing


def _summarize(
    records: list[dict[str, Any]], processor: Any, session: _EvalSession, out: Path, num_generated: int
) -> EvalResult:
    """Writes `metrics.json`, `results.md` and `report.html` from every record, and prints the table if asked."""
    config = session.config
    records.sort(key=lambda record: record["index"])
    metrics = accuracy_table(records)
    table = format_table(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "results.md").write_text(table + "\n")
    report = write_report(
        records, metrics, table, processor, session.vocab, session.decoder, out / "report.html", config
    )
    if config.print_table:
        print(table)
    return EvalResult(
        metrics=metrics,
        table=table,
        predictions_path=str(out / PREDICTIONS_FILE),
        metrics_path=str(out / "metrics.json"),
        report_path=str(report),
        num_generated=num_generated,
    )


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
    drawing_check: Callable[[Mapping[str, Any], list[torch.Tensor]], float | bool | None] | None = None,
) -> EvalResult:
    """Generates answers for `dataset` with constrained image spans, scores them and writes predictions + report.

    Prompts are laid out by [`InterleavedDataCollator.encode_prompt_batch`] (`config.template`); generation goes
    through [`ImageSpanLogitsProcessor`] (`max_images`, `max_new_tokens`); answers are scored by
    [`~trl_omni.rewards.make_accuracy_reward`] with the processor, so special-token answer tags are read. Finished
    rows are never recomputed: the JSONL is appended and flushed per batch, and a second call with the same
    arguments (checked through a hash stored in `eval_state.json`) continues where the first stopped.

    With `config.open_with_image`, each prompt ends with BOI and the answer starts with the drawing the model
    finishes; that drawing is the answer's first image everywhere (`num_images`, saved images, the report).

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
        drawing_check: Optional per-row check of the drawings, `drawing_check(row, images) -> float | bool | None`:
            `row` is the dataset row (all its columns), `images` the completion's complete images as `(H, W)` code
            grids, in order. Its value (1 / True: the drawing is right; a number in [0, 1]; None: not scored) is
            stored as `drawing_score`, and the tables gain a complete-image rate and a correct-drawing rate per task
            group, source and overall. A resume scores the rows finished before with the check given now (no check:
            their scores are dropped), so one output directory never mixes two checks; nothing is generated again.
            [`~trl_omni.demo.check_drawing`] is the Uni-Skills suite's.

    Returns:
        An [`EvalResult`].

    Example:
        ```python
        >>> from trl_omni.evaluation import EvalConfig, evaluate
        >>> result = evaluate(model, processor, omni_bench, EvalConfig(output_dir="eval"))  # budget: 2 images + text
        >>> print(result.table)
        ```
    """
    from datasets import Dataset

    from ..data.loading import to_interleaved
    from ..models import ImageVocabulary

    if not isinstance(config, EvalConfig):
        raise TypeError(f"evaluate takes an EvalConfig, got {type(config).__name__}. Fix: EvalConfig(**settings).")
    if not isinstance(dataset, Dataset):
        dataset = list(dataset)  # converted by `to_interleaved`, which names a row Arrow cannot store
    if config.max_samples is not None:
        keep = min(config.max_samples, len(dataset))
        dataset = dataset[:keep] if isinstance(dataset, list) else dataset.select(range(keep))
    vocab = ImageVocabulary.from_model(model, processor)
    budget = config.generation_budget(vocab)  # refused here, before any work, when it cannot hold an image
    dataset = to_interleaved(dataset, dataset_format, model, processor, image_root=image_root)
    _check_golds(dataset, config)
    # The effective budget (derived when unset) is what shapes the predictions, so it is what a resume compares.
    # A drawing check is not part of the identity: finished rows are re-scored with the check given now.
    extra = {
        "dataset_format": dataset_format,
        "decoder": type(decoder).__qualname__ if decoder is not None else None,
        "max_new_tokens": budget,
    }
    records = _open_output_dir(config, _identity(config, model, processor, dataset, extra, logits_processors))
    done = {record["index"] for record in records}
    out = Path(config.output_dir)
    (out / "images").mkdir(exist_ok=True)

    session = _open_session(model, processor, vocab, config, decoder, logits_processors, drawing_check)
    if records:
        _rescore_drawings(session, dataset, records, out)

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
            prompt_ids, completion_ids = _generate_batch(session, rows, start)
            new_records = _batch_records(session, rows, indices, done, prompt_ids, completion_ids, out)
            handle.writelines(json.dumps(record) + "\n" for record in new_records)
            records.extend(new_records)
            generated += len(new_records)
            handle.flush()
            os.fsync(handle.fileno())
            if progress is not None:
                progress.update(sum(index not in done for index in indices))
    if progress is not None:
        progress.close()
    return _summarize(records, processor, session, out, generated)


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
