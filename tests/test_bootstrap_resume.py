"""`trl-omni bootstrap --config ...`: killed mid-run and re-run, the output equals an uninterrupted run's."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import Dataset

from trl_omni.data.bootstrap import MANIFEST_NAME, load_bootstrapped, run_bootstrap
from trl_omni.scripts.bootstrap import main, make_parser
from trl_omni.testing import tiny_chameleon
from trl_omni.testing_data import m3cot_rows


REPO_ROOT = Path(__file__).resolve().parents[1]


def cli_command(config_path):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "trl_omni.cli", "bootstrap", "--config", str(config_path)]  # `trl-omni bootstrap`
    return command, env


def run_cli(config_path):
    command, env = cli_command(config_path)
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def run_cli_killed_after_first_shard(config_path, out, log_path, timeout=300):
    """Starts the CLI and SIGKILLs it from outside as soon as its manifest records a shard.

    The run has six shards of two rows, so it is still drawing the second shard when the first is recorded (a shard
    takes ~0.6 s on the tiny CPU model; the manifest is polled every 2 ms and replaced atomically, so a read never
    sees half a file).
    """
    command, env = cli_command(config_path)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    shards = json.loads((out / MANIFEST_NAME).read_text())["shards"]
                except (FileNotFoundError, json.JSONDecodeError):
                    shards = []
                if shards:
                    process.kill()  # SIGKILL: no cleanup handler runs
                    break
                time.sleep(0.002)
            return process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    model_dir = tmp_path / "model"
    tiny_chameleon(seed=0, save_dir=str(model_dir))
    data_path = tmp_path / "m3cot.parquet"
    Dataset.from_list(m3cot_rows(11)).to_parquet(str(data_path))
    out = tmp_path / "out"
    arguments = {
        "model_name_or_path": str(model_dir), "dataset_name": str(data_path), "output_dir": str(out),
        "shard_size": 2, "batch_size": 4, "max_steps": 2, "seed": 5, "dtype": "float32", "device": "cpu",
        "disable_tqdm": True,
    }  # fmt: skip
    config_path = tmp_path / "bootstrap.yaml"
    config_path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in arguments.items()))

    # Killed from outside while it draws the second shard.
    log_path = tmp_path / "killed.log"
    killed = run_cli_killed_after_first_shard(config_path, out, log_path)
    assert killed == -signal.SIGKILL, log_path.read_text()[-3000:]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert not manifest["complete"] and [s["index"] for s in manifest["shards"]] == [0]
    # The worst moment of a kill, right after a shard file is renamed into place and before the manifest records it,
    # cannot be aimed at from outside, so it is recreated: a complete shard file the manifest does not list (here
    # with the rows of shard 0, so that trusting it would show in the output) must be produced again, not trusted.
    shutil.copyfile(out / "data" / "shard-00000-of-00006.parquet", out / "data" / "shard-00001-of-00006.parquet")
    assert len(list((out / "data").glob("shard-*.parquet"))) == 2
    with pytest.raises(ValueError, match="not finished"):
        load_bootstrapped(str(out))
    assert len(load_bootstrapped(str(out), allow_partial=True)) == 2
    # A write killed before its rename leaves a temporary file: it is ignored and removed.
    (out / "data" / ".shard-00002-of-00006.parquet.tmp-99999").write_bytes(b"partial")

    resumed = run_cli(config_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Bootstrap done: 11 rows written" in resumed.stderr
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["complete"] and [s["index"] for s in manifest["shards"]] == list(range(6))
    assert sorted(os.listdir(out / "data")) == [f"shard-{i:05d}-of-00006.parquet" for i in range(6)]

    # The same arguments without interruption, in this process (the CLI's parser, the model loaded from disk).
    (reference_config,) = make_parser().parse_args_and_config(
        args=["--config", str(config_path), "--output_dir", str(tmp_path / "reference")]
    )
    reference = run_bootstrap(reference_config)
    rows, expected = load_bootstrapped(str(out)), load_bootstrapped(str(tmp_path / "reference"))
    assert rows.to_list() == expected.to_list()  # no lost, duplicated or different rows
    assert rows["id"] == [row["id"] for row in m3cot_rows(11)]
    assert manifest["counts"] == reference["counts"] and manifest["counts"]["rows_written"] == 11

    # Different arguments are refused with the differing names and the way out.
    (other,) = make_parser().parse_args_and_config(args=["--config", str(config_path), "--max_steps", "3"])
    with pytest.raises(ValueError, match=r"max_steps: 2 -> 3.*--overwrite"):
        main(other)
