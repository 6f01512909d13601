"""`trl-omni` dispatcher: help, presets, strict config keys, and a 2-step `trl-omni sft --config` run."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trl_omni.cli import CommandSpec, list_accelerate_presets, main, resolve_accelerate_config
from trl_omni.cli.launch import CLIArgumentError, resolve_accelerate_config_argument, split_launch_args


REPO_ROOT = Path(__file__).resolve().parents[1]
cli_main = importlib.import_module("trl_omni.cli.main")  # the module (`trl_omni.cli.main` is also the function)


def cli_env() -> dict:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    for key in ("LOCAL_RANK", "ACCELERATE_DYNAMO_BACKEND", "TRL_OMNI_NO_LAUNCH"):
        env.pop(key, None)
    return env


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "trl_omni.cli", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout)


def write_sft_fixture(tmp_path: Path, num_rows: int = 8) -> dict:
    """A tiny checkpoint on disk, interleaved rows in a JSONL file and the base of a PeSFT YAML config."""
    from trl_omni.models import ImageVocabulary
    from trl_omni.testing import tiny_chameleon
    from trl_omni.testing_data import interleaved_rows

    model_dir = tmp_path / "tiny"
    model, processor = tiny_chameleon(seed=0, save_dir=model_dir)
    rows = interleaved_rows(ImageVocabulary.from_model(model, processor), num_rows=num_rows, seed=0)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {
        "model_name_or_path": str(model_dir),
        "dataset_name": str(data),
        "dtype": "float32",
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "bf16": False,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "seed": 0,
    }


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("sft", "rl", "eval", "bootstrap", "demo"):
        assert f"  {name} " in out
    assert "--accelerate_config" in out and "zero3" in out


def test_no_arguments_prints_help(capsys):
    assert main([]) == 0
    assert "usage: trl-omni" in capsys.readouterr().out


def test_unknown_command(capsys):
    assert main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err


def test_missing_module_is_unavailable_not_a_crash(monkeypatch, capsys):
    ghost = CommandSpec("ghost", "a command whose module is not installed", training=True)
    monkeypatch.setattr(cli_main, "BUILTIN_COMMANDS", (*cli_main.BUILTIN_COMMANDS, ghost))
    assert main(["--help"]) == 0
    assert "unavailable: trl_omni.scripts.ghost is not installed" in capsys.readouterr().out
    assert main(["ghost", "--foo"]) == 2
    err = capsys.readouterr().err
    assert "'ghost' command is unavailable" in err and "trl_omni/scripts/ghost.py" in err


def test_sft_help_shows_every_config_group(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: trl-omni sft")
    # dataset args, PeSFTConfig, ModelConfig (LoRA / QLoRA) and the launch options
    for flag in (
        "--dataset_format",
        "--perception_loss_weight",
        "--use_peft",
        "--load_in_4bit",
        "--accelerate_config",
    ):
        assert flag in out


def test_presets_are_shipped_and_resolved(tmp_path):
    assert list_accelerate_presets() == ["fsdp2", "multi_gpu", "single_gpu", "zero2", "zero3"]
    for name in list_accelerate_presets():
        path = resolve_accelerate_config(name)
        config = yaml.safe_load(Path(path).read_text())
        assert config["distributed_type"] in ("NO", "MULTI_GPU", "DEEPSPEED", "FSDP")
    assert yaml.safe_load(Path(resolve_accelerate_config("zero3")).read_text())["deepspeed_config"]["zero_stage"] == 3
    own = tmp_path / "mine.yaml"
    own.write_text("distributed_type: NO\n")
    assert resolve_accelerate_config(str(own)) == str(own)
    with pytest.raises(CLIArgumentError, match="neither an existing file nor a preset.*zero2"):
        resolve_accelerate_config("zero9")


def test_split_launch_args_normalises_config_pairs():
    launch, unknown = split_launch_args(
        ["--num_processes", "2", "--multi_gpu", "True", "--cpu", "False", "--mixed_precision=no", "--lora_rr", "3"]
    )
    assert launch == ["--num_processes", "2", "--multi_gpu", "--mixed_precision=no"]
    assert unknown == ["--lora_rr"]
    # `accelerate_config: zero3` in a YAML arrives as a pair and becomes accelerate's --config_file.
    launch, unknown = split_launch_args(["--accelerate_config", "zero3", "--num_processes", "8"])
    resolved = resolve_accelerate_config_argument(launch)
    assert resolved == ["--config_file", resolve_accelerate_config("zero3"), "--num_processes", "8"] and not unknown


def test_bad_config_key_and_flag_are_named(tmp_path, capsys):
    config = {"model_name_or_path": "unused", "dataset_name": "unused", "lora_rr": 8, "learning_rate": 1e-4}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["sft", "--config", str(path), "--perception_los_weight", "2"]) == 2
    err = capsys.readouterr().err
    assert f"key 'lora_rr' of {path}" in err and "did you mean --lora_r" in err
    assert "'--perception_los_weight'" in err and "did you mean --perception_loss_weight" in err
    assert "neither fields of OmniScriptArguments, PeSFTConfig, ModelConfig" in err


def test_sft_config_runs_two_steps_and_saves(tmp_path):
    from safetensors.torch import load_file

    config = write_sft_fixture(tmp_path)
    out_dir = tmp_path / "out"
    config["output_dir"] = str(out_dir)
    config_path = tmp_path / "pesft.yaml"
    config_path.write_text(yaml.safe_dump(config))

    # A launch option in the YAML goes to accelerate; a flag on the command line overrides the YAML.
    result = run_cli("sft", "--config", str(config_path), "--perception_loss_weight", "0.5", "--num_processes", "1")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Training completed." in result.stdout + result.stderr
    args = __import__("torch").load(out_dir / "training_args.bin", weights_only=False)
    assert args.max_steps == 2 and args.perception_loss_weight == 0.5
    trained = load_file(out_dir / "model.safetensors")
    initial = load_file(Path(config["model_name_or_path"]) / "model.safetensors")
    changed = [name for name in initial if name in trained and not (initial[name] == trained[name]).all()]
    assert any("layers" in name for name in changed), "no decoder weight changed"
    assert not any("vqmodel" in name for name in changed), "the frozen VQ model changed"
    assert any("perception_head" in name for name in trained)
    assert (out_dir / "tokenizer.json").exists() and (out_dir / "processor_config.json").exists()
