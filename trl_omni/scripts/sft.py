"""`trl-omni sft`: PeSFT (perception-aligned SFT, Omni-R1 stage 1) of a Chameleon / Anole model.

```bash
# LoRA on one GPU, interleaved data in a local JSONL file
trl-omni sft \
    --model_name_or_path leloy/Anole-7b-v0.1-hf \
    --dataset_name data/train.jsonl \
    --dataset_format interleaved \
    --use_peft --lora_r 16 --lora_alpha 32 \
    --per_device_train_batch_size 1 --gradient_accumulation_steps 8 \
    --learning_rate 2e-5 --output_dir anole-pesft

# the same from a YAML file, on 8 GPUs with ZeRO-3
trl-omni sft --config pesft.yaml --accelerate_config zero3
```
"""

from __future__ import annotations

from typing import Any


def preflight(namespace: Any) -> None:
    """Checks run by `trl-omni sft` before launching any process: the checkpoint directory, the dataset's file,
    split and columns (see [`~trl_omni.cli.common.preflight_training`])."""
    from trl_omni.cli.common import preflight_training

    preflight_training(namespace)


def main(script_args: Any, training_args: Any, model_args: Any) -> int:
    """Loads the model and the data named by the arguments, trains with [`PeSFTTrainer`] and saves the result."""
    from trl_omni.cli.common import load_model_and_processor, peft_config_for, train_and_save
    from trl_omni.data.loading import load_any_dataset, select_split, to_interleaved
    from trl_omni.data.report import SkipReport
    from trl_omni.trainers import PeSFTTrainer

    if not script_args.dataset_name:
        raise ValueError("--dataset_name is required: a Hub dataset, a local json/jsonl/parquet file or a directory.")
    model, processor = load_model_and_processor(model_args, trust_remote_code=training_args.trust_remote_code)

    raw = load_any_dataset(script_args.dataset_name, script_args.dataset_config)
    train = select_split(raw, script_args.dataset_train_split)
    if script_args.max_train_samples is not None:
        train = train.select(range(min(script_args.max_train_samples, len(train))))
    evaluate = training_args.eval_strategy != "no"
    eval_dataset = select_split(raw, script_args.dataset_test_split, "dataset_test_split") if evaluate else None
    report = SkipReport()
    # Every rank reads the encoded images from the datasets cache the main process wrote.
    with training_args.main_process_first(desc="converting the dataset and encoding its images"):
        prepare = dict(
            dataset_format=script_args.dataset_format,
            model=model,
            processor=processor,
            image_root=training_args.image_root,
            on_error=training_args.on_error,
            encode_batch_size=script_args.pretokenize_batch_size,
            skip_report=report,
        )
        train = to_interleaved(train, **prepare)
        if eval_dataset is not None:
            eval_dataset = to_interleaved(eval_dataset, **prepare)

    trainer = PeSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=eval_dataset,
        processing_class=processor,
        peft_config=peft_config_for(model, model_args),
    )
    return train_and_save(trainer, training_args, script_args, skip_report=report)


def make_parser(prog: str | None = None):
    """The `TrlParser` of `trl-omni sft`: dataset arguments, [`PeSFTConfig`] and TRL's `ModelConfig`."""
    from trl_omni.cli.common import OmniScriptArguments, training_parser
    from trl_omni.trainers import PeSFTConfig

    description = "PeSFT: perception-aligned supervised fine-tuning of a Chameleon / Anole model (Omni-R1 stage 1)."
    return training_parser(OmniScriptArguments, PeSFTConfig, description, prog=prog)


if __name__ == "__main__":
    from trl_omni.cli.launch import parse_script_args

    raise SystemExit(main(*parse_script_args(make_parser(prog="trl-omni sft"))))
