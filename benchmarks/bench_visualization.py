"""Cost of seeing the reasoning: VQGAN decoding at Anole size, batched vs per-row rendering, bounded logging.

Run: `PYTHONPATH=. python benchmarks/bench_visualization.py --repeats 9` (CPU is fine; no checkpoint needed: the decoder has random weights,
which cost the same as real ones).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

from trl_omni.models import ImageVocabulary
from trl_omni.models.vq_decoder import ChameleonVQDecoder
from trl_omni.testing import tiny_chameleon
from trl_omni.visualization import FalseColorDecoder, TrajectoryLogger, render_trajectories, render_trajectory


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--layout-resolution", type=int, default=128, help="0 to skip the layout comparison")
    parser.add_argument("--decoder-batches", type=int, nargs="*", default=[1], help="empty to skip the decoder")
    args = parser.parse_args()
    torch.manual_seed(0)

    # 1. Anole-size decoder (ChameleonVQVAEConfig defaults are Chameleon's released VQGAN sizes).
    from transformers import ChameleonVQVAEConfig

    config = ChameleonVQVAEConfig()
    decoder = ChameleonVQDecoder(config)
    params = sum(p.numel() for p in decoder.parameters())
    side = config.resolution // 2 ** (len(config.channel_multiplier) - 1)
    with torch.no_grad():
        for batch in args.decoder_batches:
            latents = torch.randn(batch, config.embed_dim, side, side)
            seconds = _best(lambda latents=latents: decoder(latents), 1)  # ~1 TFLOP per image: one run is enough
            print(
                f"anole-size decoder ({params / 1e6:.1f}M params), {side}x{side} codes -> "
                f"{config.resolution}px, batch {batch}: {seconds:.2f} s ({seconds / batch:.2f} s/image)"
            )

    # 1b. The contiguous layout ChameleonVQDecoder uses vs channels_last (faster convolutions on CPU, but its GroupNorm
    # loses float32 accuracy): time, and max abs error against a float64 run of the same weights, alternating.
    if args.layout_resolution:
        plain = ChameleonVQDecoder(ChameleonVQVAEConfig(resolution=args.layout_resolution))
        fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
        reference = copy.deepcopy(plain).double()
        grid = args.layout_resolution // 2 ** (len(config.channel_multiplier) - 1)
        latents = torch.randn(1, config.embed_dim, grid, grid)
        latents_cl = latents.contiguous(memory_format=torch.channels_last)
        channels_last, contiguous = [], []
        with torch.no_grad():
            exact = reference(latents.double())
            errors = {"channels_last": 0.0, "contiguous": 0.0}
            for _ in range(args.repeats):
                channels_last.append(_best(lambda: fast.decoder(fast.post_quant_conv(latents_cl)), 1))
                contiguous.append(_best(lambda: plain(latents), 1))
            errors["channels_last"] = float(
                (fast.decoder(fast.post_quant_conv(latents_cl)).double() - exact).abs().max()
            )
            errors["contiguous"] = float((plain(latents).double() - exact).abs().max())
        cl, co = statistics.median(channels_last), statistics.median(contiguous)
        print(
            f"decoder layout at {args.layout_resolution}px: contiguous {co:.2f} s (max abs error vs float64 "
            f"{errors['contiguous']:.1e}), channels_last {cl:.2f} s ({errors['channels_last']:.1e}); "
            f"ratio contiguous/channels_last = {co / cl:.2f}"
        )

    # 2. Batched rendering (one parse, one decode call) vs one render_trajectory call per row.
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    text = processor.tokenizer("Let me draw it. I mark the object.", add_special_tokens=False).input_ids
    rows = []
    for _ in range(args.rows):
        codes = torch.randint(0, vocab.num_codes, (3, *vocab.grid_size))
        rows.append(text + sum((vocab.image_span_ids(c).tolist() + text for c in codes), []))
    false_color = FalseColorDecoder(vocab)
    batched, looped = [], []
    for _ in range(args.repeats):  # alternate the two so background load hits both alike
        batched.append(_best(lambda: render_trajectories(rows, processor, vocab, false_color), 1))
        looped.append(_best(lambda: [render_trajectory(r, processor, vocab, false_color) for r in rows], 1))
    batched, looped = statistics.median(batched), statistics.median(looped)
    print(
        f"render {args.rows} rows x 3 images: batched {batched * 1e3:.1f} ms, per-row {looped * 1e3:.1f} ms, "
        f"ratio per-row/batched = {looped / batched:.2f}"
    )

    # 3. One logging step: render 4 trajectories to PNG + HTML and write them, bounded.
    rendered = render_trajectories(rows[:4], processor, vocab, false_color)
    with tempfile.TemporaryDirectory() as tmp:
        trajectory_logger = TrajectoryLogger(output_dir=tmp, max_per_step=4)
        step = iter(range(10**6))
        seconds = _best(lambda: trajectory_logger.log(rendered, step=next(step)), args.repeats)
        report = trajectory_logger.log(rendered, step=next(step))
    print(f"log 4 trajectories (PNG strips + HTML, files): {seconds * 1e3:.1f} ms, {report.bytes / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
