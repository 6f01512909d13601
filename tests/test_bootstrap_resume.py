"""`trl-omni bootstrap --config ...`: killed mid-run and re-run, the output equals an uninterrupted run's."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from trl_omni.data.bootstrap import KILL_AFTER_SHARDS_ENV, MANIFEST_NAME, load_bootstrapped, run_bootstrap
from trl_omni.scripts.bootstrap import main, make_parser
from trl_omni.testing import tiny_chameleon
from trl_omni.testing_data import m3cot_rows


REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(config_path, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != KILL_AFTER_SHARDS_ENV}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "trl_omni.cli", "bootstrap", "--config", str(config_path)],  # `trl-omni bootstrap`
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


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

    # Killed right after the 2nd shard file was renamed into place, before the manifest recorded it.
    killed = run_cli(config_path, {KILL_AFTER_SHARDS_ENV: "2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert not manifest["complete"] and [s["index"] for s in manifest["shards"]] == [0]
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
