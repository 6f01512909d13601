"""Quiet runs and the user's objects left alone: no transformers deprecation warning from our defaults, no accelerate
defaults block from our launcher, and configs passed by the user are never changed (PeSFT copies them)."""

import copy
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def _checkpointing_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "checkpointing" in str(w.message)]


@pytest.mark.parametrize("config_class", ["PeSFTConfig", "PeRPOConfig"])
def test_default_configs_warn_nothing_and_checkpoint_activations(config_class, tmp_path):
    import trl_omni

    cls = getattr(trl_omni, config_class)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = cls(output_dir=str(tmp_path), bf16=False)
        off = cls(output_dir=str(tmp_path), bf16=False, activation_checkpointing=False)
    assert _checkpointing_warnings(caught) == []
    assert config.gradient_checkpointing is True and config.activation_checkpointing is True  # TRL's default kept
    assert off.gradient_checkpointing is False and off.activation_checkpointing is False
    # The old name still works (with transformers' own deprecation warning: the user's choice, not our default).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = cls(output_dir=str(tmp_path), bf16=False, gradient_checkpointing=False)
    assert old.activation_checkpointing is False and _checkpointing_warnings(caught)


def test_example_configs_parse_without_deprecation_warnings():
    from trl_omni.scripts import rl, sft

    examples = sorted((ROOT / "examples").glob("*.yaml"))
    parsed = 0
    for path in examples:
        module = {"sft": sft, "rl": rl}.get(path.name.split("_")[0])
        if module is None:
            continue
        parser = module.make_parser()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            *_, training_args, _, _, _ = parser.parse_args_and_config(
                ["--config", str(path), "--bf16", "false", "--use_cpu", "true"],
                return_remaining_strings=True,
                separate_remaining_strings=True,
            )
        assert _checkpointing_warnings(caught) == [], path.name
        assert training_args.gradient_checkpointing, path.name
        parsed += 1
    assert parsed >= 6


def test_launcher_passes_explicit_values_to_accelerate(tmp_path):
    """Without an accelerate config, `accelerate launch` prints a block of defaults it chose; ours passes them."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    env.pop("ACCELERATE_CONFIG_FILE", None)
    code = "from trl_omni.cli.launch import launch_module\nraise SystemExit(launch_module('platform', [], []))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()  # the launched module ran (it prints the platform)
    assert "had defaults used instead" not in result.stderr and "num_processes" not in result.stderr


def test_pesft_leaves_the_users_configs_unchanged(tiny, vocab, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig

    from trl_omni import PeSFTConfig, PeSFTTrainer
    from trl_omni.testing import tiny_chameleon
    from trl_omni.testing_data import interleaved_rows

    model, processor = tiny_chameleon(seed=0)
    rows = interleaved_rows(vocab, num_rows=2)
    args = PeSFTConfig(
        output_dir=str(tmp_path), max_steps=1, bf16=False, use_cpu=True, report_to="none", save_strategy="no"
    )
    lora = LoraConfig(r=2, target_modules=["q_proj"])
    args_before, lora_before = copy.deepcopy(args.to_dict()), copy.deepcopy(lora.to_dict())
    trainer = PeSFTTrainer(
        model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor, peft_config=lora
    )
    assert args.to_dict() == args_before and lora.to_dict() == lora_before
    # What PeSFT needs is set on its own copies.
    assert trainer.args is not args and trainer.args.remove_unused_columns is False
    assert trainer.args.dataset_kwargs["skip_prepare_dataset"] is True
    assert "perception_head" in trainer.model.peft_config["default"].modules_to_save


def test_quantized_loading_leaves_the_users_config_unchanged():
    from transformers import BitsAndBytesConfig

    from trl_omni.models.loading import _keep_image_modules_unquantized

    config = BitsAndBytesConfig(load_in_4bit=True, llm_int8_skip_modules=["mine"])
    used = _keep_image_modules_unquantized(config)
    assert config.llm_int8_skip_modules == ["mine"]
    assert used is not config and used.llm_int8_skip_modules == ["mine", "vqmodel", "lm_head"]


def _load_reports(function):
    """Runs `function`; returns its result and the transformers load-report records it logged."""
    import logging

    records = []
    handler = logging.Handler(level=logging.INFO)
    handler.emit = records.append
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(handler)
    try:
        result = function()
    finally:
        transformers_logger.removeHandler(handler)
    reports = [
        r.getMessage() for r in records if any(w in r.getMessage() for w in ("UNEXPECTED", "MISSING", "REPORT"))
    ]
    return result, reports


def test_a_pesft_checkpoint_loads_without_a_load_report_and_keeps_its_head(tmp_path):
    """A full PeSFT checkpoint and a PeSFT LoRA adapter (each with its trained perception head) load quietly, and the
    head comes back where it is used."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel

    from trl_omni import ImageVocabulary, PeSFTConfig, PeSFTTrainer, load_omni_model
    from trl_omni.testing import tiny_chameleon
    from trl_omni.testing_data import interleaved_rows
    from trl_omni.trainers import add_perception_head, get_perception_head

    def train(output_dir, peft_config=None):
        model, processor = tiny_chameleon(seed=0)
        rows = interleaved_rows(ImageVocabulary.from_model(model, processor), num_rows=2)
        args = PeSFTConfig(
            output_dir=str(output_dir), max_steps=1, learning_rate=1e-2, bf16=False, use_cpu=True, report_to="none",
            save_strategy="no", activation_checkpointing=False, disable_tqdm=True,
        )  # fmt: skip
        trainer = PeSFTTrainer(
            model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=processor,
            peft_config=peft_config,
        )
        trainer.train()
        trainer.save_model(str(output_dir))
        processor.save_pretrained(str(output_dir))
        head = get_perception_head(trainer.model)
        head = head.modules_to_save["default"] if hasattr(head, "modules_to_save") else head
        return head.weight.detach().clone()

    full_head = train(tmp_path / "full")
    (model, processor), reports = _load_reports(lambda: load_omni_model(tmp_path / "full"))
    assert reports == []
    # Where the head is needed (PeSFT continuing, or add_perception_head) it is the trained one.
    restored = add_perception_head(model, ImageVocabulary.from_model(model, processor))
    torch.testing.assert_close(restored.weight, full_head)

    lora_head = train(tmp_path / "lora", LoraConfig(r=2, target_modules=["q_proj"]))
    base, base_processor = tiny_chameleon(seed=0)
    add_perception_head(base, ImageVocabulary.from_model(base, base_processor), load_saved=False)
    adapter, reports = _load_reports(lambda: PeftModel.from_pretrained(base, str(tmp_path / "lora")))
    assert reports == []
    torch.testing.assert_close(get_perception_head(adapter).modules_to_save["default"].weight, lora_head)
