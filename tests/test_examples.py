import os
import subprocess
import sys
from pathlib import Path


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
