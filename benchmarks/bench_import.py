"""Start-up cost of trl-omni against `import trl`, each measured in fresh Python processes, alternating, in one run.

Measured (wall time of a whole `python -c ...` / `python -m trl_omni.cli ...` process, so Python's own start-up is
included in every figure, the baseline's too):

- `import trl` (the baseline: TRL's package root is lazy);
- `import trl_omni`;
- `trl-omni --help`;
- `trl-omni sft --help` and a misspelled flag (`trl-omni sft --lerning_rate 1`), both with the options cache warm
  (the first use of a command in an environment builds it once; that cold run is timed separately with `--cold`).

Each process also reports whether torch / transformers / trl ended up imported. Printed: the median per command over
`--repeats` rounds and its ratio to `import trl`.

Usage:
    python benchmarks/bench_import.py [--repeats 7] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
# Printed by every measured process after its work: which heavy modules it imported.
_REPORT = (
    "import json, sys; print(json.dumps(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules)))"
)


def _cli(*args: str) -> str:
    return (
        f"import sys\nfrom trl_omni.cli.main import main\ntry:\n    code = main({list(args)!r})\nexcept SystemExit as e:\n"
        "    code = e.code\nsys.stdout.flush()\n"
    )


CASES = {
    "import trl": "import trl\n",
    "import trl_omni": "import trl_omni\n",
    "trl-omni --help": _cli("--help"),
    "trl-omni sft --help": _cli("sft", "--help"),
    "trl-omni sft --lerning_rate 1": _cli("sft", "--lerning_rate", "1"),
}


def run_case(code: str, env: dict) -> tuple[float, list[str]]:
    """Wall time of one fresh process running `code`, and the heavy modules it imported."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code + _REPORT], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    try:
        imported = json.loads(last)
    except ValueError as error:
        raise RuntimeError(
            f"The measured process failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        ) from error
    return elapsed, imported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="Rounds; each runs every case once, alternating.")
    parser.add_argument("--cold", action="store_true", help="Also time `trl-omni sft --help` with an empty cache.")
    args = parser.parse_args()

    cache = tempfile.mkdtemp(prefix="trl-omni-bench-cache-")
    env = {**os.environ, "TRL_OMNI_CACHE": cache, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    print(f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs", end="")
    print(f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")
    if args.cold:
        cold, imported = run_case(CASES["trl-omni sft --help"], env)
        print(f"cold cache: trl-omni sft --help {cold:.2f} s (builds the options cache; imports {imported})")
    else:
        run_case(CASES["trl-omni sft --help"], env)  # warms the options cache
    for code in CASES.values():  # warm-up round: .pyc files and the page cache
        run_case(code, env)

    times: dict[str, list[float]] = {name: [] for name in CASES}
    imports: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, code in CASES.items():
            elapsed, imported = run_case(code, env)
            times[name].append(elapsed)
            imports[name] = imported
    baseline = statistics.median(times["import trl"])
    print(f"{'case':<32} {'median s':>9} {'min s':>7} {'vs import trl':>14}  heavy modules imported")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:<32} {median:9.3f} {min(values):7.3f} {median / baseline:13.2f}x  {', '.join(imports[name]) or '-'}"
        )


if __name__ == "__main__":
    main()
