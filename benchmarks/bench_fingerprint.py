"""Cost of the resume fingerprint (`trl_omni.utils.fingerprint.fingerprint_model`, every tensor hashed) against loading
the same checkpoint with `load_omni_model`, alternating the two in one process.

1. The real-layout Anole fixture (`trl_omni.testing.tiny_anole`: Anole's vocabulary and VQ geometry, tiny LM) saved to
   disk: load time vs fingerprint time, and their ratio.
2. Hashing `--gib` GiB of bfloat16 tensors (the dtype of Anole-7B) on `--device` against only copying the same
   bytes to the host (what any reader of GPU tensors must do), alternating; the time it gives for Anole-7B's ~14.1 GB.

Usage:
    python benchmarks/bench_fingerprint.py [--repeats 5] [--gib 1.0] [--device cpu|cuda] [--skip-fixture]
    python benchmarks/bench_fingerprint.py --device cuda --gib 13.2 --skip-fixture   # Anole-7B's size, on a GPU
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
    parser.add_argument("--device", default="cpu", help="Device of the synthetic tensors.")
    parser.add_argument(
        "--skip-fixture", action="store_true", help="Only the synthetic measurement (no transformers)."
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}", end="")
    print(f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")
    if not args.skip_fixture:
        _fixture(args.repeats)
    _synthetic(args.gib, args.device, args.repeats)


def _fixture(repeats: int) -> None:
    from trl_omni import load_omni_model
    from trl_omni.testing import tiny_anole
    from trl_omni.utils.fingerprint import fingerprint_model

    with tempfile.TemporaryDirectory() as directory:
        tiny_anole(seed=0, save_dir=directory)
        model, _ = load_omni_model(directory)
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        loads, prints = [], []
        for _ in range(repeats):
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


def _synthetic(gib: float, device: str, repeats: int) -> None:
    import torch

    from trl_omni.utils.fingerprint import fingerprint_tensors

    # 256 MiB tensors: the size of Anole-7B's larger matrices (its embedding and LM head are 512 MiB each).
    count = max(1, int(gib * (1 << 30) // (256 << 20)))
    tensors = [(f"t{i}", torch.randn(128 << 20, dtype=torch.bfloat16, device=device)) for i in range(count)]
    total = sum(t.numel() * t.element_size() for _, t in tensors)

    def copy_to_host() -> None:
        for _, tensor in tensors:
            tensor.cpu()

    copies, hashes = [], []
    for _ in range(repeats):
        for function, times in ((copy_to_host, copies), (lambda: fingerprint_tensors(tensors), hashes)):
            if device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
    copy, fingerprint = statistics.median(copies), statistics.median(hashes)
    rate = total / fingerprint / 1e9
    against_copy = "" if device == "cpu" else f", copy to host only {copy:.2f} s, ratio {fingerprint / copy:.2f}x"
    print(
        f"{total / 1e9:.2f} GB of bfloat16 tensors on {device}: fingerprint_tensors {fingerprint:.2f} s "
        f"({rate:.2f} GB/s){against_copy} (medians of {repeats}); Anole-7B's {ANOLE_7B_BYTES / 1e9:.1f} GB: "
        f"{ANOLE_7B_BYTES / 1e9 / rate:.1f} s"
    )


if __name__ == "__main__":
    main()
