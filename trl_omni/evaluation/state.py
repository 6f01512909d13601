"""Resumable output: the predictions JSONL, the hash of the arguments that shape it (`eval_state.json`), and the
refusal to mix predictions of different arguments.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .config import EvalConfig


PREDICTIONS_FILE = "predictions.jsonl"
STATE_FILE = "eval_state.json"
# Fields of EvalConfig that never change a prediction (left out of the resume hash).
_NOT_HASHED = ("output_dir", "overwrite", "progress", "report_max_rows", "print_table")


class EvalResumeError(RuntimeError):
    """The output directory holds predictions made with other arguments."""


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
