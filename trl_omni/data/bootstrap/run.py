"""Orchestration: [`run_bootstrap`] (run or resume into an output directory) and [`bootstrap_dataset`]."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ...utils.fingerprint import fingerprint_data, fingerprint_dataset, fingerprint_model, fingerprint_processor
from ..loading import check_not_empty
from ..schema import DatasetFormatError
from .config import BootstrapConfig
from .inputs import load_input_dataset
from .worker import _Bootstrapper
from .writer import (
    DATA_DIR,
    _empty_counts,
    _open_output_dir,
    _readme,
    load_bootstrapped,
    no_rows_reason,
    output_arguments,
)


logger = logging.getLogger(__name__)


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
        from ...models import load_omni_model

        model, processor = load_omni_model(
            config.model_name_or_path, dtype=config.dtype, device=config.device or "auto"
        )
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
    check_not_empty(dataset, "the bootstrap input")
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
            "model": fingerprint_model(model),
            "processor": fingerprint_processor(processor),
            "input_fingerprint": fingerprint_dataset(dataset),
            "input_rows": len(dataset),
        },
    }
    run = _open_output_dir(config, identity)
    manifest = run.data
    if not run.resumed:
        manifest["arguments_hash"] = fingerprint_data(identity, length=16)
        manifest["seed"] = config.seed
        manifest["template"] = config.template  # the collator template to train with (rows are template-free)
        run.save()
    data_dir = os.path.join(config.output_dir, DATA_DIR)
    os.makedirs(data_dir, exist_ok=True)
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
            manifest["shards"].append(
                {"index": index, "file": f"{DATA_DIR}/{name}", "input_start": start, "input_end": end,
                 "rows": len(rows), "counts": shard_counts}
            )  # fmt: skip
            manifest["shards"].sort(key=lambda s: s["index"])
            for key, value in shard_counts.items():
                counts[key] = counts.get(key, 0) + value
            manifest["counts"] = counts
            run.save()
            progress.set_postfix(rows=counts["rows_written"], kept=counts["images_kept"], redraws=counts["redraws"])
    finally:
        progress.close()
    manifest["counts"] = counts
    manifest["complete"] = True
    run.save()
    with open(os.path.join(config.output_dir, "README.md"), "w") as f:
        f.write(_readme(config, manifest))
    if not counts["rows_written"]:
        # A run that keeps nothing is a failure, not a success with an empty dataset (the manifest keeps the counts).
        raise DatasetFormatError(
            f"The bootstrap wrote no rows to {config.output_dir}: {no_rows_reason(counts, manifest['arguments'])}."
        )
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
