"""Cost of the resume fingerprint (`trl_omni.utils.fingerprint.fingerprint_model`, every tensor hashed) against loading
the same checkpoint with `load_omni_model`, alternating the two in one process.

1. The real-layout Anole fixture (`trl_omni.testing.tiny_anole`: Anole's vocabulary and VQ geometry, tiny LM) saved to
   disk: load time vs fingerprint time, and their ratio.
2. Hash throughput on `--gib` GiB of bfloat16 tensors (the dtype of Anole-7B), in GB/s, and the time that gives for
   Anole-7B's ~14.1 GB of weights.

Usage:
    python benchmarks/bench_fingerprint.py [--repeats 5] [--gib 1.0]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
ANOLE_7B_BYTES = 7.05e9 * 2  # ~7.05 B parameters in bfloat16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gib", type=float, default=1.0, help="GiB of synthetic bfloat16 tensors to hash.")
    args = parser.parse_args()

    import torch

    from trl_omni import load_omni_model
    from trl_omni.testing import tiny_anole
    from trl_omni.utils.fingerprint import fingerprint_model, fingerprint_tensors

    torch.set_num_threads(1)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}", end="")
    print(f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")
    with tempfile.TemporaryDirectory() as directory:
        tiny_anole(seed=0, save_dir=directory)
        model, _ = load_omni_model(directory)
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        loads, prints = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model, _ = load_omni_model(directory)
            loads.append(time.perf_counter() - start)
            start = time.perf_counter()
            fingerprint_model(model)
            prints.append(time.perf_counter() - start)
        load, fingerprint = statistics.median(loads), statistics.median(prints)
        print(
            f"real-layout Anole fixture ({size / 1e6:.0f} MB of tensors): load_omni_model {load:.3f} s, "
            f"fingerprint_model {fingerprint:.3f} s, ratio {fingerprint / load:.2f}x"
        )

    count = int(args.gib * (1 << 30) // 2 // (64 << 20))
    tensors = [(f"t{i}", torch.randn(64 << 20, dtype=torch.bfloat16)) for i in range(count)]
    total = sum(t.numel() * t.element_size() for _, t in tensors)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fingerprint_tensors(tensors)
        times.append(time.perf_counter() - start)
    rate = total / statistics.median(times) / 1e9
    print(
        f"hashing {total / 1e9:.2f} GB of bfloat16 tensors: {rate:.2f} GB/s (median of {args.repeats}); "
        f"Anole-7B's {ANOLE_7B_BYTES / 1e9:.1f} GB would take {ANOLE_7B_BYTES / 1e9 / rate:.1f} s on this CPU"
    )


if __name__ == "__main__":
    main()
