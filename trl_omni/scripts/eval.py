"""`trl-omni eval`: accuracy of a Chameleon / Anole model on Omni-Bench-format or interleaved data.

```bash
trl-omni eval \
    --model_name_or_path anole-pesft-perpo \
    --dataset_name omni_bench.parquet --dataset_format omni_bench \
    --max_new_tokens 2048 --max_images 1 --batch_size 8 \
    --output_dir eval-omni-bench
# killed? run the same command again: finished rows are kept, the rest is generated.
```

Writes `predictions.jsonl`, `images/`, `metrics.json`, `results.md` and `report.html` to `--output_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EvalDataArguments:
    """Data arguments of `trl-omni eval`.

    Parameters:
        dataset_name (`str`):
            Hub dataset, local json/jsonl/parquet file, `save_to_disk` directory or folder of data files.
        dataset_config (`str` or `None`, *optional*):
            Hub dataset configuration.
        dataset_split (`str`, *optional*, defaults to `"test"`):
            Split to evaluate (a dataset with a single split, such as one local file, uses that split).
        dataset_format (`str`, *optional*, defaults to `"auto"`):
            `"omni_bench"` (question, base64 image, answer, source fields), `"interleaved"` (trl-omni schema),
            `"m3cot"`, `"zebra_cot"` or `"auto"` (detected from the columns).
        image_root (`str` or `None`, *optional*):
            Directory that image `path` parts are read from.
    """

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset, local json/jsonl/parquet file or save_to_disk directory."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    dataset_split: str = field(
        default="test", metadata={"help": "Split to evaluate (a single-split dataset uses its only split)."}
    )
    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "Row layout: 'omni_bench', 'interleaved', 'm3cot', 'zebra_cot' or 'auto' (from the columns).",
            "choices": ["auto", "omni_bench", "interleaved", "m3cot", "zebra_cot"],
        },
    )
    image_root: str | None = field(default=None, metadata={"help": "Directory that image `path` parts are read from."})


@dataclass
class EvalModelArguments:
    """Model arguments of `trl-omni eval`.

    Parameters:
        model_name_or_path (`str`):
            Hub id or local directory of a Chameleon / Anole checkpoint (a PeSFT / PeRPO output directory, also a
            LoRA / QLoRA adapter directory: its base model is loaded first).
        dtype (`str`, *optional*, defaults to `"auto"`):
            `"auto"`, `"bfloat16"`, `"float16"` or `"float32"`.
        device (`str` or `None`, *optional*):
            Device to run on (`"cuda"`, `"cpu"`, ...); defaults to CUDA when available.
        image_decoder (`str`, *optional*, defaults to `"false_color"`):
            How saved images are decoded: `"false_color"` (weight-free colours from the codebook), `"vq"` (the VQGAN
            decoder weights of the checkpoint, see `load_vq_decoder`) or the path of an Anole-format checkpoint that
            holds them.
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "Hub id or local checkpoint directory."})
    dtype: str = field(
        default="auto",
        metadata={"help": "Model dtype.", "choices": ["auto", "bfloat16", "float16", "float32"]},
    )
    device: str | None = field(default=None, metadata={"help": "Device ('cuda', 'cpu', ...); default: CUDA if any."})
    image_decoder: str = field(
        default="false_color",
        metadata={
            "help": "Decoder of saved images: 'false_color' (no weights), 'vq' (the checkpoint's VQGAN decoder) or "
            "the path of an Anole-format checkpoint holding the decoder weights."
        },
    )


def main(script_args: Any, eval_config: Any, model_args: Any) -> int:
    """Loads the model and data, then runs [`trl_omni.evaluation.evaluate`]."""

    from trl_omni.data.loading import load_any_dataset, select_split
    from trl_omni.evaluation import evaluate
    from trl_omni.models import ImageVocabulary, load_omni_model

    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required.")
    if not script_args.dataset_name:
        raise ValueError("--dataset_name is required: a Hub dataset, a local json/jsonl/parquet file or a directory.")
    # A full checkpoint or a LoRA / QLoRA output of `trl-omni sft|rl` (base + adapter + perception head).
    model, processor = load_omni_model(
        model_args.model_name_or_path, dtype=model_args.dtype, device=model_args.device or "auto"
    )

    decoder = None
    if model_args.image_decoder != "false_color":
        from trl_omni.models.vq_decoder import VQImageDecoder, load_vq_decoder

        checkpoint = None if model_args.image_decoder == "vq" else model_args.image_decoder
        vq_decoder = load_vq_decoder(model, checkpoint, image_processor=processor.image_processor)
        decoder = VQImageDecoder(vq_decoder, ImageVocabulary.from_model(model, processor))

    raw = load_any_dataset(script_args.dataset_name, script_args.dataset_config)
    dataset = select_split(raw, script_args.dataset_split, "dataset_split")
    result = evaluate(
        model,
        processor,
        dataset,
        eval_config,
        decoder=decoder,
        dataset_format=script_args.dataset_format,
        image_root=script_args.image_root,
    )
    print(f"Predictions: {result.predictions_path}\nReport: {result.report_path}")
    return 0


def make_parser(prog: str | None = None):
    """The `TrlParser` of `trl-omni eval`: dataset arguments, [`EvalConfig`] and the model arguments."""
    from trl import TrlParser

    from trl_omni.evaluation import EvalConfig

    return TrlParser(
        (EvalDataArguments, EvalConfig, EvalModelArguments),
        prog=prog,
        description="Evaluate a drawing model on Omni-Bench-format or interleaved data (accuracy per source and task "
        "group, predictions JSONL with images, HTML report). Resumes an interrupted run in the same --output_dir.",
    )


if __name__ == "__main__":
    from trl_omni.cli.launch import run_script

    raise SystemExit(run_script(make_parser, main, "trl-omni eval"))
