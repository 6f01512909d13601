"""The resumable sharded output: the manifest (arguments, identity, shards, counts) kept through the shared
[`~trl_omni.utils.resume.open_resumable_run`] (which refuses to resume with other arguments, another model or other
input), atomic shard writes, and reading a finished (or partial) output back.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from ...utils.resume import ResumableRun, open_resumable_run
from ..schema import DatasetFormatError
from .config import BootstrapConfig


MANIFEST_NAME = "manifest.json"
DATA_DIR = "data"
MANIFEST_VERSION = 2  # 2: the model identity is `fingerprint_model` (every weight hashed), the processor is included


# Arguments that do not change the rows written (so they may differ between a run and its resumption).
_NON_OUTPUT_ARGUMENTS = ("output_dir", "overwrite", "disable_tqdm")


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


def _open_output_dir(config: BootstrapConfig, identity: Mapping[str, Any]) -> ResumableRun:
    """Starts or resumes the bootstrap in `config.output_dir` (a directory it owns); its manifest holds `identity`
    (`arguments` and `identity` sections) and the progress (`shards`, `counts`, `complete`)."""
    return open_resumable_run(
        config.output_dir,
        manifest_name=MANIFEST_NAME,
        identity=identity,
        what="a bootstrap output",
        outputs=("README.md", f"{DATA_DIR}/*"),
        exclusive=True,
        overwrite=config.overwrite,
        initial={"version": MANIFEST_VERSION, "shards": [], "counts": {}, "complete": False},
    )


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
            "rows_shortened",
            "images_skipped_for_length",
            "samples_too_long",
        ),
        0,
    )


def _readme(config: BootstrapConfig, manifest: Mapping[str, Any]) -> str:
    counts = manifest["counts"]
    return (
        "# Omni-R1-Zero bootstrapped trajectories\n\n"
        "Interleaved rows (trl-omni schema: `prompt` / `completion` lists of text and image parts with VQ `codes`, "
        f"`answer`) drawn by `{manifest['identity'].get('model_name_or_path')}` (fingerprint "
        f"`{manifest['identity']['model']['weights'][:16]}`), seed {config.seed}.\n\n"
        f"Train with the collator template `{config.template}`:\n\n"
        "```python\nfrom trl_omni.data.bootstrap import load_bootstrapped\n"
        f"train = load_bootstrapped({config.output_dir!r})\n"
        f'# PeSFTConfig(..., interleaved_template="{config.template}")\n```\n\n'
        f"Rows: {counts.get('rows_written', 0)} from {counts.get('input_rows', 0)} input rows; images kept "
        f"{counts.get('images_kept', 0)} of {counts.get('images_drawn', 0)} drawn ({counts.get('redraws', 0)} "
        f"redraws). Budget: max_length={config.max_length} tokens; {counts.get('rows_shortened', 0)} rows drew "
        f"fewer images to fit ({counts.get('images_skipped_for_length', 0)} images skipped), "
        f"{counts.get('samples_too_long', 0)} were too long even as text. See `manifest.json`.\n"
    )


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


def no_rows_reason(counts: Mapping[str, int], config: Mapping[str, Any] | None = None) -> str:
    """Why a bootstrap wrote no row, from its manifest counts (and arguments): one clause per cause, with its fix."""
    arguments = config or {}
    rationale = arguments.get("rationale_column", "rationale")
    splitter = arguments.get("step_splitter", "auto")
    bad = counts.get("samples_skipped_bad_input", 0)
    no_steps = counts.get("samples_without_steps", 0)
    too_long = counts.get("samples_too_long", 0)
    low_quality = counts.get("samples_dropped", 0) - bad - no_steps - too_long
    reasons = []
    if bad:
        reasons.append(
            f"{bad} were bad input rows skipped under on_error='skip' (see the logged errors; fix the rows, or run "
            "with --on_error raise to see the first one)"
        )
    if no_steps:
        reasons.append(
            f"{no_steps} had no reasoning step in their {rationale!r} column (split with --step_splitter "
            f"{splitter!r}; give a text rationale, map the right column with --rationale_column, or choose another "
            "--step_splitter)"
        )
    if too_long:
        reasons.append(
            f"{too_long} were longer than --max_length={arguments.get('max_length')} tokens even without drawings "
            "(raise --max_length to the SFT max_length you train with, or shorten the questions / rationales)"
        )
    if low_quality > 0:
        reasons.append(
            f"{low_quality} were dropped because a drawing stayed below the quality bar (--on_low_quality "
            "drop_sample; lower --quality_threshold or use --on_low_quality keep_best)"
        )
    total = counts.get("input_rows", 0)
    if not total:
        return "the input has no rows (check --dataset_name, --dataset_split and --max_samples)"
    return f"of {total} input rows, " + "; ".join(reasons or ["none was kept"])


def load_bootstrapped(output_dir: str, allow_partial: bool = False) -> Any:
    """Loads a bootstrap output as one `datasets.Dataset` (rows in input order).

    Equivalent to `load_dataset("parquet", data_files=bootstrapped_files(output_dir), split="train")`.

    Raises:
        DatasetFormatError: the bootstrap wrote no rows (the message gives the reasons recorded in its manifest).

    Example:
        ```python
        >>> train = load_bootstrapped("out")
        ```
    """
    from datasets import load_dataset

    files = bootstrapped_files(output_dir, allow_partial=allow_partial)
    if not files:
        raise ValueError(f"The bootstrap in {output_dir} has no shards yet.")
    with open(os.path.join(output_dir, MANIFEST_NAME)) as f:
        manifest = json.load(f)
    counts = manifest.get("counts") or {}
    if not counts.get("rows_written"):
        raise DatasetFormatError(
            f"The bootstrap in {output_dir} wrote no rows: {no_rows_reason(counts, manifest.get('arguments'))}."
        )
    return load_dataset("parquet", data_files=files, split="train")
