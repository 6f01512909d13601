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
    from trl_omni.cli.common import (
        load_model_and_processor,
        load_train_split,
        peft_config_for,
        prepare_datasets,
        train_and_save,
    )
    from trl_omni.data.loading import select_split
    from trl_omni.data.report import SkipReport
    from trl_omni.trainers import PeSFTTrainer

    raw, train = load_train_split(script_args)
    model, processor = load_model_and_processor(model_args, trust_remote_code=training_args.trust_remote_code)
    evaluate = training_args.eval_strategy != "no"
    eval_dataset = select_split(raw, script_args.dataset_test_split, "dataset_test_split") if evaluate else None
    report = SkipReport()
    train, eval_dataset = prepare_datasets(
        [train, eval_dataset], script_args, training_args, model, processor, training_args.on_error, report
    )

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
    from trl_omni.cli.launch import run_script

    raise SystemExit(run_script(make_parser, main, "trl-omni sft"))
