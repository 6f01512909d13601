import os
import subprocess
import sys
from pathlib import Path

from trl_omni.testing import tiny_chameleon


ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_and_writes_a_rendered_trajectory(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--output_dir", str(tmp_path), "--max_steps", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # one thread per process on a 2-core machine
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PeSFT: 3 steps" in result.stdout
    assert "generated 4 completions" in result.stdout
    assert (tmp_path / "trajectory.html").read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "trajectory.png").stat().st_size > 0


EXAMPLES = ROOT / "examples"
CONFIGS = sorted(EXAMPLES.glob("*.yaml"))
RUNNABLE = ["sft_anole_lora.yaml", "sft_anole_qlora.yaml", "rl_anole_lora.yaml", "rl_custom_reward.yaml"]


def _command_of(path):
    return path.name.split("_", 1)[0]  # sft_*.yaml -> sft, rl_*.yaml -> rl


def test_every_example_config_parses_with_its_command():
    import importlib

    import yaml

    from trl_omni.cli import parse_script_args

    assert len(CONFIGS) >= 6
    for path in CONFIGS:
        script = importlib.import_module(f"trl_omni.scripts.{_command_of(path)}")
        raw = yaml.safe_load(path.read_text())
        if _command_of(path) == "bootstrap":
            (config,) = parse_script_args(script.make_parser(), ["--config", str(path)])
            assert (config.output_dir, config.model_name_or_path) == (raw["output_dir"], raw["model_name_or_path"])
            continue
        # `--use_cpu` only because this machine has no GPU for the files' bf16 settings.
        args = ["--config", str(path), "--use_cpu", "true"]
        script_args, training_args, model_args = parse_script_args(script.make_parser(), args)
        assert training_args.output_dir == raw["output_dir"], path.name
        assert model_args.model_name_or_path == raw["model_name_or_path"], path.name
        assert script_args.dataset_name == raw["dataset_name"], path.name


def _tiny_fixture(tmp_path):
    import json

    from trl_omni.models import ImageVocabulary
    from trl_omni.testing_data import interleaved_rows

    model_dir = tmp_path / "tiny"
    model, processor = tiny_chameleon(seed=0, save_dir=model_dir)
    rows = interleaved_rows(ImageVocabulary.from_model(model, processor), num_rows=8, text_words=(3, 8), seed=0)
    for i, row in enumerate(rows):
        row["prompt"][0]["text"] = "Draw the grid. " + row["prompt"][0]["text"]  # the custom reward scores these
        row["answer"] = str(i % 3)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return model_dir, data


def test_runnable_examples_train_two_steps_on_the_tiny_model(tmp_path, monkeypatch):
    from trl_omni.cli import main

    model_dir, data = _tiny_fixture(tmp_path)
    # `trl-omni` in this process, as the one rank `accelerate launch` would start (the `python -m trl_omni.cli` entry
    # point and the launcher are tested in test_cli.py); `examples.custom_reward` is imported from the repository.
    monkeypatch.setenv("TRL_OMNI_NO_LAUNCH", "1")
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    # The tiny model stands in for Anole; every other setting comes from the example file.
    substitute = ["--model_name_or_path", str(model_dir), "--dataset_name", str(data), "--dataset_format",
                  "interleaved", "--dtype", "float32", "--bf16", "false", "--use_cpu", "true", "--max_steps", "2",
                  "--gradient_accumulation_steps", "1", "--report_to", "none", "--save_strategy", "no",
                  "--logging_steps", "1"]  # fmt: skip
    for name in RUNNABLE:
        command = _command_of(EXAMPLES / name)
        extra = ["--per_device_train_batch_size", "2"]
        if command == "rl":
            extra = ["--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "80",
                     "--max_images_per_completion", "1"]  # fmt: skip
        out = tmp_path / name.removesuffix(".yaml")
        code = main([command, "--config", str(EXAMPLES / name), *substitute, *extra, "--output_dir", str(out)])
        assert code == 0, name
        assert (out / "adapter_model.safetensors").exists(), name  # every runnable example trains LoRA adapters
