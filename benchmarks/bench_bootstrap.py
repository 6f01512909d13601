"""Throughput of Omni-R1-Zero bootstrapping (`run_bootstrap`): rows/minute, batched vs one drawing at a time.

Runs the whole pipeline (step splitting, question-image encoding, constrained drawing, perception scoring, parquet
shards + manifest) on M3CoT-schema fixture rows with a tiny Chameleon, once with `--batch-size` drawing prompts per
`generate` call and once with 1, alternating the two in one process; prints rows/minute and images/second of each
(best of the repeats) and the median per-repeat speed-up. It also times one batch of drawings with the per-row
seeded Gumbel sampler (what bootstrapping uses, batch-independent) against `generate(do_sample=True)` with the
global RNG, both constrained by `ImageSpanLogitsProcessor`, to show the price of per-row determinism.

    PYTHONPATH=. python benchmarks/bench_bootstrap.py --rows 48 --repeats 3 --threads 1
"""

import argparse
import json
import statistics
import tempfile
import time

import torch
from transformers import LogitsProcessorList

from trl_omni import ImageSpanLogitsProcessor, ImageVocabulary
from trl_omni.data.bootstrap import BootstrapConfig, SeededGumbelSampler, run_bootstrap
from trl_omni.testing import tiny_chameleon
from trl_omni.testing_data import m3cot_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=32, help="pixels; the grid side is image_size // 4")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, processor = tiny_chameleon(
        seed=0, hidden_size=args.hidden_size, num_hidden_layers=args.layers, image_size=args.image_size
    )
    model.to(args.device).eval()
    rows = m3cot_rows(args.rows, image_size=(args.image_size, args.image_size))
    workdir = tempfile.mkdtemp(prefix="bench_bootstrap_")

    def run(batch_size: int) -> tuple[float, dict]:
        config = BootstrapConfig(
            output_dir=f"{workdir}/bs{batch_size}", overwrite=True, batch_size=batch_size, max_steps=args.max_steps,
            shard_size=max(1, args.rows // 2), disable_tqdm=True, seed=0,
        )  # fmt: skip
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        manifest = run_bootstrap(config, model, processor, rows)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, manifest["counts"]

    run(args.batch_size)  # warm-up
    batched, single, counts = [], [], None
    for _ in range(args.repeats):
        elapsed, counts = run(args.batch_size)
        batched.append(elapsed)
        single.append(run(1)[0])
    images = counts["images_drawn"]
    tokens_per_image = (args.image_size // 4) ** 2
    print(f"device={args.device} threads={torch.get_num_threads()} rows={args.rows} images={images} "
          f"codes/image={tokens_per_image} hidden={args.hidden_size} layers={args.layers}")  # fmt: skip
    for name, times in (
        (f"batched (batch_size={args.batch_size})", batched),
        ("one at a time (batch_size=1)", single),
    ):
        best = min(times)
        print(f"{name:32s} best {best:7.2f} s   {60 * args.rows / best:8.1f} rows/min   {images / best:7.2f} images/s")
    speedups = [s / b for s, b in zip(single, batched, strict=True)]
    print(f"speed-up of batching: median {statistics.median(speedups):.2f}x (per repeat: "
          f"{', '.join(f'{x:.2f}' for x in speedups)})")  # fmt: skip
    print("counts:", json.dumps(counts, sort_keys=True))
    sampler_overhead(model, processor, args)


def sampler_overhead(model, processor, args) -> None:
    vocab = ImageVocabulary.from_model(model, processor)
    tokens = vocab.tokens_per_image
    tokenizer = processor.tokenizer
    prompt = tokenizer("Which object is on the left? Text step 1 -> Image step 1:").input_ids + [vocab.boi_token_id]
    input_ids = torch.tensor([prompt] * args.batch_size, device=args.device)
    common = dict(max_new_tokens=tokens + 1, min_new_tokens=tokens + 1, pad_token_id=tokenizer.pad_token_id)

    def seeded() -> None:
        processors = [ImageSpanLogitsProcessor(vocab, max_new_tokens=tokens + 1),
                      SeededGumbelSampler(range(args.batch_size))]  # fmt: skip
        model.generate(input_ids, logits_processor=LogitsProcessorList(processors), do_sample=False, **common)

    def global_rng() -> None:
        processors = [ImageSpanLogitsProcessor(vocab, max_new_tokens=tokens + 1)]
        model.generate(
            input_ids, logits_processor=LogitsProcessorList(processors), do_sample=True, top_k=None, **common
        )

    def timed(fn) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(seeded), timed(global_rng)
    ratios, best = [], {"seeded": float("inf"), "global": float("inf")}
    for _ in range(max(3, args.repeats)):
        a, b = timed(seeded), timed(global_rng)
        best["seeded"], best["global"] = min(best["seeded"], a), min(best["global"], b)
        ratios.append(a / b)
    print(f"one batch of {args.batch_size} drawings: seeded per-row sampler {best['seeded'] * 1e3:.1f} ms, "
          f"do_sample=True {best['global'] * 1e3:.1f} ms, ratio median {statistics.median(ratios):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
