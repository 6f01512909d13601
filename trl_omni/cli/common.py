"""Script arguments, dataset loading / conversion and model loading shared by the `trl-omni` scripts."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from trl import ScriptArguments

from ..data.loading import DATASET_FORMATS
from ..models.loading import read_adapter_config
from ..utils.config_fields import choice_field


logger = logging.getLogger(__name__)

LAUNCH_EPILOG = (
    "Launch options: any `accelerate launch` option (--num_processes N, --mixed_precision no, --multi_gpu, ...) and "
    "--accelerate_config NAME|PATH (presets: single_gpu, multi_gpu, zero2, zero3, fsdp2) may be given on the command "
    "line or as keys of the --config YAML."
)


@dataclass
class OmniScriptArguments(ScriptArguments):
    """Dataset arguments of the trl-omni scripts ([`~trl.ScriptArguments`] plus format handling).

    Parameters:
        dataset_format (`str`, *optional*, defaults to `"auto"`):
            Layout of the rows: `"interleaved"` (trl-omni schema), `"pretokenized"` (`input_ids` rows), a public
            dataset converted on the fly (`"zebra_cot"`, `"m3cot"`, `"omni_bench"`), or `"auto"` (detected from the
            column names).
        max_train_samples (`int` or `None`, *optional*):
            Keep only the first N training rows (quick runs, debugging).
        pretokenize_batch_size (`int`, *optional*, defaults to `32`):
            Images per VQ-encoder forward when images are encoded into codes before training.
    """

    dataset_format: str = choice_field(
        "auto",
        DATASET_FORMATS,
        "Row layout: 'interleaved' (trl-omni schema), 'pretokenized' (input_ids rows), 'zebra_cot', "
        "'m3cot', 'omni_bench' (converted on the fly) or 'auto' (detected from the columns).",
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows (quick runs, debugging)."}
    )
    pretokenize_batch_size: int = field(
        default=32, metadata={"help": "Images per VQ-encoder forward when encoding images into codes."}
    )


def load_train_split(script_args: Any) -> tuple[Any, Any]:
    """The dataset named by a training command's arguments and its training split (cut to `max_train_samples`).

    Returns `(raw, train)`: `raw` is what [`~trl_omni.data.load_any_dataset`] returned, for the other splits.

    Raises:
        ValueError: When no `--dataset_name` is given.
    """
    from ..data.loading import load_any_dataset, select_split

    if not script_args.dataset_name:
        raise ValueError("--dataset_name is required: a Hub dataset, a local json/jsonl/parquet file or a directory.")
    raw = load_any_dataset(script_args.dataset_name, script_args.dataset_config)
    train = select_split(raw, script_args.dataset_train_split)
    if script_args.max_train_samples is not None:
        train = train.select(range(min(script_args.max_train_samples, len(train))))
    return raw, train


def prepare_datasets(
    datasets: list[Any], script_args: Any, training_args: Any, model: Any, processor: Any, on_error: str, report: Any
) -> list[Any]:
    """[`~trl_omni.data.to_interleaved`] of each dataset (None stays None) with the command's format, image root and
    encoder batch size; bad rows follow `on_error` and skipped ones are added to `report`.

    The main process converts and encodes first; every other rank then reads the encoded images from the datasets
    cache it wrote.
    """
    from ..data.loading import to_interleaved

    with training_args.main_process_first(desc="converting the dataset and encoding its images"):
        return [
            None
            if dataset is None
            else to_interleaved(
                dataset,
                script_args.dataset_format,
                model,
                processor,
                image_root=training_args.image_root,
                on_error=on_error,
                encode_batch_size=script_args.pretokenize_batch_size,
                skip_report=report,
            )
            for dataset in datasets
        ]


def load_model_and_processor(model_args: Any, trust_remote_code: bool = False, **kwargs: Any) -> tuple[Any, Any]:
    """Loads the model named by a [`~trl.ModelConfig`] with [`load_omni_model`]: dtype, attention implementation,
    revision and 4/8-bit quantization (QLoRA) from the config.

    When `model_name_or_path` is a LoRA / QLoRA output of an earlier stage (a PEFT adapter directory), training
    continues from it: with `--use_peft` the adapter itself is loaded *trainable* and trained further (pass the
    model to the trainer with [`peft_config_for`], which then gives no new adapter); without `--use_peft` the adapter
    is merged into the base weights and everything trains. The PeSFT perception head comes along either way.

    Example:
        ```python
        >>> model, processor = load_model_and_processor(ModelConfig(model_name_or_path="leloy/Anole-7b-v0.1-hf"))
        ```
    """
    import torch
    from trl import get_quantization_config

    from ..models import load_omni_model

    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required (a Hub id or a local Chameleon / Anole checkpoint).")
    quantization_config = get_quantization_config(model_args)
    load_kwargs: dict[str, Any] = {"revision": model_args.model_revision, "trust_remote_code": trust_remote_code}
    if model_args.attn_implementation is not None:
        load_kwargs["attn_implementation"] = model_args.attn_implementation
    if quantization_config is not None and torch.cuda.is_available():
        # bitsandbytes weights are placed at load time: put each rank's copy on its own GPU.
        from accelerate import PartialState

        load_kwargs["device_map"] = {"": PartialState().local_process_index}
    load_kwargs.update(kwargs)
    continue_adapter = read_adapter_config(model_args.model_name_or_path) is not None
    model, processor = load_omni_model(
        model_args.model_name_or_path,
        dtype=model_args.dtype,
        quantization_config=quantization_config,
        is_trainable=bool(model_args.use_peft),
        **load_kwargs,
    )
    if continue_adapter and not model_args.use_peft:
        if quantization_config is not None:
            raise ValueError(
                f"{model_args.model_name_or_path} is a LoRA adapter: full fine-tuning would merge it into a quantized "
                "base, which loses precision. Add --use_peft to continue training the adapter, or drop "
                "--load_in_4bit / --load_in_8bit."
            )
        model = model.merge_and_unload()
        logger.info("Merged the adapter %s into its base model for full fine-tuning.", model_args.model_name_or_path)
    return model, processor


def peft_config_for(model: Any, model_args: Any) -> Any:
    """The trainer's `peft_config`: `trl.get_peft_config(model_args)`, or None when `model` already carries a trainable
    adapter loaded from an earlier stage's output (training continues that adapter; a second one would leave it
    frozen and the output would not hold it).

    `--lora_*` values that differ from the loaded adapter's own settings are reported and not applied.
    """
    from trl import get_peft_config

    peft_config = get_peft_config(model_args)
    if peft_config is None:
        return None
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return peft_config
    loaded = model.peft_config[model.active_adapter]
    ignored = []
    for name in ("r", "lora_alpha", "lora_dropout", "target_modules"):
        requested, actual = getattr(peft_config, name, None), getattr(loaded, name, None)
        if name == "target_modules" and requested is not None and actual is not None:
            differs = set([requested] if isinstance(requested, str) else requested) != set(
                [actual] if isinstance(actual, str) else actual
            )
        else:
            differs = requested is not None and requested != actual
        if differs:
            ignored.append(f"{name}={requested!r} (the adapter has {actual!r})")
    if ignored:
        logger.warning(
            "Continuing the adapter of %s with its own settings; these arguments do not apply to it: %s. To train a "
            "new adapter instead, merge this one into its base first (run without --use_peft, or `merge_and_unload`).",
            model_args.model_name_or_path,
            "; ".join(ignored),
        )
    else:
        logger.info("Continuing the adapter of %s (trainable).", model_args.model_name_or_path)
    return None


def preflight_training(namespace: Any) -> None:
    """Checks of a training command's arguments that need no model and no GPU, run by `trl-omni sft|rl` before
    `accelerate launch` starts any process: the model path is a loadable checkpoint directory (or a Hub id), the
    dataset exists, parses, has the split and the columns of `--dataset_format`.

    Raises:
        CheckpointError, DatasetFormatError: naming what is wrong and the fix.
    """
    from ..data.loading import check_dataset_source
    from ..models.loading import check_checkpoint

    if not getattr(namespace, "model_name_or_path", None):
        raise ValueError("--model_name_or_path is required (a Hub id or a local Chameleon / Anole checkpoint).")
    check_checkpoint(namespace.model_name_or_path)
    check_dataset_source(
        namespace.dataset_name,
        namespace.dataset_format,
        config=namespace.dataset_config,
        split=namespace.dataset_train_split,
    )


def attach_skip_report(trainer: Any, report: Any) -> None:
    """Makes the rows skipped while preparing the data part of the trainer's end-of-training summary."""
    from ..data.report import SkipReportCallback

    own = getattr(trainer, "skip_report", None)
    if own is not None:
        own.entries[:0] = report.entries  # preparation came first
    else:
        trainer.add_callback(SkipReportCallback(report))


def training_parser(script_arguments: type, config_class: type, description: str, prog: str | None = None) -> Any:
    """The `TrlParser` of a training command: its dataset arguments, its trainer config and TRL's `ModelConfig`, with
    the `accelerate launch` options explained in the epilog."""
    from trl import ModelConfig, TrlParser

    return TrlParser(
        (script_arguments, config_class, ModelConfig), prog=prog, description=description, epilog=LAUNCH_EPILOG
    )


def train_and_save(trainer: Any, training_args: Any, script_args: Any, skip_report: Any | None = None) -> int:
    """The end of every training command: train (resuming when asked), save, optionally push, release trackers.

    `skip_report`: the rows skipped while preparing the data, summarised with the trainer's own at the end.
    """
    if skip_report is not None:
        attach_skip_report(trainer, skip_report)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.accelerator.print("Training completed.")
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    # Only the main process writes the model: every rank waits for it before the process group is torn down, so no
    # rank shuts its gloo / NCCL connections while another still uses them (a rank leaving early can abort at exit).
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return 0
