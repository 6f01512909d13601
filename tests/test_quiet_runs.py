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
