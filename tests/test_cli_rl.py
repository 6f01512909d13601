"""`trl-omni rl`: a 2-step PeRPO run from a YAML config (rewards by name and dotted path); unknown rewards."""

import pytest
import yaml
from test_cli import run_cli, write_sft_fixture

from trl_omni.cli import main


def rl_config(tmp_path) -> dict:
    config = write_sft_fixture(tmp_path, num_rows=4)
    config.update(
        output_dir=str(tmp_path / "out"),
        num_generations=2,
        per_device_train_batch_size=4,
        max_completion_length=80,
        learning_rate=1e-2,
        gradient_checkpointing=False,
        reward_funcs=["accuracy", "perception", "tests.scripts.cli_rewards:length_reward"],
        reward_weights=[1.0, 0.1, 1.0],
    )
    return config


def test_unknown_reward_lists_the_available_ones(tmp_path, monkeypatch):
    config = rl_config(tmp_path)
    config["reward_funcs"] = ["accuracy", "acuracy"]
    path = tmp_path / "perpo.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("TRL_OMNI_NO_LAUNCH", "1")  # run the rank in this process: the error is raised here
    with pytest.raises(
        ValueError, match=r"Unknown reward 'acuracy'\. Available names: accuracy, format, .*perception"
    ):
        main(["rl", "--config", str(path)])


def test_rl_config_runs_two_steps_and_saves(tmp_path):
    from safetensors.torch import load_file

    config = rl_config(tmp_path)
    path = tmp_path / "perpo.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("rl", "--config", str(path), "--max_images_per_completion", "1")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Training completed." in output
    # Every reward was built and logged under its name.
    for name in ("accuracy_reward", "perception_reward", "length_reward"):
        assert f"'rewards/{name}/mean'" in output, name
    trained = load_file(tmp_path / "out" / "model.safetensors")
    initial = load_file(tmp_path / "tiny" / "model.safetensors")
    assert any(not (initial[n] == trained[n]).all() for n in initial if "layers" in n), "no decoder weight changed"
    assert all((initial[n] == trained[n]).all() for n in initial if "vqmodel" in n)
