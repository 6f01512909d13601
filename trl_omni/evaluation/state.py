"""Resumable output: the predictions JSONL, the identity of the run that makes them (`eval_state.json`: every
argument, the model, the processor and the data that shape a prediction), and the refusal to mix predictions of
different runs (through the shared [`~trl_omni.utils.resume.open_resumable_run`]).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from ..utils.fingerprint import fingerprint_dataset, fingerprint_model, fingerprint_processor
from ..utils.resume import ResumeMismatchError, open_resumable_run
from .config import EvalConfig


PREDICTIONS_FILE = "predictions.jsonl"
STATE_FILE = "eval_state.json"
# Fields of EvalConfig that never change a prediction (left out of the identity).
_NOT_COMPARED = ("output_dir", "overwrite", "progress", "report_max_rows", "print_table")
# What an evaluation writes into its output directory (deleted by `overwrite`).
_OUTPUTS = (PREDICTIONS_FILE, "metrics.json", "results.md", "report.html", "images/*.png")


class EvalResumeError(ResumeMismatchError, RuntimeError):
    """The output directory holds predictions made with other arguments, another model or other data."""


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


def _identity(
    config: EvalConfig,
    model: Any,
    processor: Any,
    dataset: Any,
    extra: Mapping[str, Any],
    logits_processors: Sequence[Any] = (),
) -> dict[str, Any]:
    """Everything that decides the predictions, as the one section `values` of `eval_state.json`: the arguments, the
    model (its path and a hash of every weight, adapters included), the processor, the data, and any extra logits
    processors."""
    values = {key: value for key, value in asdict(config).items() if key not in _NOT_COMPARED}
    values.update(extra)
    values["model"] = fingerprint_model(model)
    values["processor"] = fingerprint_processor(processor)
    values["dataset"] = fingerprint_dataset(dataset)
    values["num_rows"] = len(dataset)
    # By class only: a processor's settings are code the identity cannot see (a debugging delay, a compiled table).
    values["logits_processors"] = [type(processor).__qualname__ for processor in logits_processors]
    return {"values": values}


def _open_output_dir(config: EvalConfig, identity: dict[str, Any]) -> list[dict[str, Any]]:
    """Starts or resumes the evaluation in `config.output_dir`; returns the records already written."""
    run = open_resumable_run(
        config.output_dir,
        manifest_name=STATE_FILE,
        identity=identity,
        what="an evaluation",
        outputs=_OUTPUTS,
        overwrite=config.overwrite,
        error_class=EvalResumeError,
    )
    predictions = run.output_dir / PREDICTIONS_FILE
    if not run.resumed:
        predictions.write_text("")
        return []
    records = read_predictions(predictions)
    # Drop a torn last line so appends start on a clean line.
    with open(predictions, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    return records
