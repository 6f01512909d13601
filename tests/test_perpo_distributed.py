"""PeRPO in 2 processes (torchrun, gloo, CPU): both ranks end with identical, updated weights."""

import math
import os
import subprocess
import sys
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_end_with_identical_weights(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free rendezvous port on localhost (`--master_port 0` hangs in the rendezvous)
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "scripts" / "perpo_ddp.py"),
        str(tmp_path),
    ]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["weights"].keys() == rank1["weights"].keys()
    for name, value in rank0["weights"].items():
        assert torch.equal(value, rank1["weights"][name]), name
    assert not torch.equal(rank0["initial_lm_head"], rank0["weights"]["lm_head.weight"])
    log = [entry for entry in rank0["logs"] if "loss" in entry][-1]
    assert math.isfinite(log["loss"]) and log["images/complete_rate"] == 1.0
    assert "filtered_groups/frac" in log
