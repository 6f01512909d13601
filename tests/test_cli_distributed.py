"""Two gloo ranks on CPU: `trl-omni sft --accelerate_config multi_gpu --num_processes 2` and
`accelerate launch --multi_gpu --num_processes 2 -m trl_omni.cli sft` (the dispatcher runs in each rank)."""

import re
import subprocess
import sys

import yaml
from test_cli import REPO_ROOT, cli_env, run_cli, write_sft_fixture


def final_epoch(output: str) -> float:
    # 8 rows, 2 per device, 2 steps: one process sees half an epoch, two ranks see all 8 rows (epoch 1.0).
    matches = re.findall(r"'train_loss': '[^']+', 'epoch': '([0-9.]+)'", output)
    assert matches, output[-3000:]
    return float(matches[-1])


def test_two_ranks_through_the_preset_and_in_rank_dispatch(tmp_path):
    config = write_sft_fixture(tmp_path)
    config["ddp_backend"] = "gloo"
    path = tmp_path / "pesft.yaml"
    path.write_text(yaml.safe_dump(config))

    result = run_cli(
        "sft", "--config", str(path), "--output_dir", str(tmp_path / "preset"),
        "--accelerate_config", "multi_gpu", "--num_processes", "2", "--mixed_precision", "no",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert final_epoch(result.stdout + result.stderr) == 1.0
    assert (tmp_path / "preset" / "model.safetensors").exists()

    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--mixed_precision", "no", "-m", "trl_omni.cli", "sft", "--config", str(path),
        "--output_dir", str(tmp_path / "launched"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert final_epoch(result.stdout + result.stderr) == 1.0
    assert (tmp_path / "launched" / "model.safetensors").exists()


def test_every_rank_waits_for_the_save_before_the_process_group_ends():
    # Only rank 0 writes the model; a rank that tore its connections down meanwhile could abort at exit.
    from types import SimpleNamespace

    from trl_omni.cli.common import train_and_save

    calls = []
    accelerator = SimpleNamespace(
        print=lambda *args: None, wait_for_everyone=lambda: calls.append("wait_for_everyone")
    )
    trainer = SimpleNamespace(
        accelerator=accelerator,
        train=lambda resume_from_checkpoint=None: calls.append("train"),
        save_model=lambda output_dir: calls.append("save_model"),
        end=lambda: calls.append("end"),
    )
    args = SimpleNamespace(resume_from_checkpoint=None, output_dir="unused", push_to_hub=False)
    assert train_and_save(trainer, args, SimpleNamespace()) == 0
    assert calls == ["train", "save_model", "wait_for_everyone", "end"]
