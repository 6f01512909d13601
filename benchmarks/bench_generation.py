"""Constrained drawing rollouts with `model.generate`: today's `ImageSpanLogitsProcessor` against the rollouts of
commit 0426e78 (`LegacyImageSpanLogitsProcessor`), unconstrained sampling, and a static KV cache.

Every run generates exactly `--new-tokens` tokens for `--batch-size` rows (EOS is suppressed through
`min_new_tokens`); with `--draw` the prompts end with BOI, so the constrained runs draw image codes (what PeRPO
rollouts and bootstrapping spend their time on), otherwise they start in text. The variants alternate in one
process, in a rotating order, and the script prints the median per-token time of each and the median of the
per-repeat ratios against the legacy processor (so that the load of a shared machine hits all of them alike).

    python benchmarks/bench_generation.py --repeats 9 --draw
    python benchmarks/bench_generation.py --processor-only --repeats 30   # the processors alone, no model

`--processor-only` times the two processors' calls alone (no model): `--new-tokens` calls on a drawing batch whose
`input_ids` grow by one image code per call, in alternating blocks.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LogitsProcessorList


sys.path.insert(0, str(Path(__file__).resolve().parent))

from _legacy_span_processor import LegacyImageSpanLogitsProcessor  # noqa: E402

from trl_omni import ImageSpanLogitsProcessor, ImageVocabulary  # noqa: E402
from trl_omni.testing import tiny_chameleon  # noqa: E402


VARIANTS = {
    "unconstrained": (None, {}),
    "legacy processor (0426e78)": (LegacyImageSpanLogitsProcessor, {}),
    "processor": (ImageSpanLogitsProcessor, {}),
    "processor + static cache": (ImageSpanLogitsProcessor, {"cache_implementation": "static"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64, help="pixels; the grid side is image_size // 4")
    parser.add_argument("--draw", action="store_true", help="prompts end with BOI: the constrained runs draw")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (1 avoids oversubscription).")
    parser.add_argument("--processor-only", action="store_true", help="time the processors' calls alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, processor = tiny_chameleon(
        seed=0, hidden_size=args.hidden_size, num_hidden_layers=args.layers, image_size=args.image_size
    )
    model.to(args.device).eval()
    vocab = ImageVocabulary.from_model(model, processor)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    prompts = ["Let me draw it", "zoom in", "THOUGHT 1:", "mark the red square"] * (args.batch_size // 4 + 1)
    inputs = tokenizer(prompts[: args.batch_size], return_tensors="pt", padding=True)
    if args.draw:
        boi = torch.full((args.batch_size, 1), vocab.boi_token_id)
        inputs = {"input_ids": torch.cat([inputs["input_ids"], boi], 1),
                  "attention_mask": torch.cat([inputs["attention_mask"], torch.ones_like(boi)], 1)}  # fmt: skip
    inputs = {key: value.to(args.device) for key, value in inputs.items()}
    if args.processor_only:
        processor_calls(vocab, inputs["input_ids"], args)
        return
    common = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=True, top_k=0)

    def run(name: str) -> float:
        processor_class, extra = VARIANTS[name]
        processors = LogitsProcessorList(
            [processor_class(vocab, max_new_tokens=args.new_tokens)] if processor_class else []
        )
        torch.manual_seed(0)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.generate(**inputs, logits_processor=processors, disable_compile=True, **common, **extra)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        assert out.shape[1] - inputs["input_ids"].shape[1] == args.new_tokens
        return elapsed / args.new_tokens

    names = list(VARIANTS)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for name in names:  # warm-up
            run(name)
        for repeat in range(args.repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(run(name))
    baseline = "legacy processor (0426e78)"
    print(
        f"device={args.device} threads={args.threads} batch={args.batch_size} new_tokens={args.new_tokens} "
        f"hidden={args.hidden_size} layers={args.layers} codes/image={vocab.tokens_per_image} draw={args.draw} "
        f"repeats={args.repeats}"
    )
    print(
        f"{'variant':30s} {'ms/token (median)':>18s} {'ms/token (min)':>15s} {'time vs legacy (median of pairs)':>34s}"
    )
    for name in names:
        pairs = [t / b for t, b in zip(times[name], times[baseline], strict=True)]
        print(f"{name:30s} {1e3 * statistics.median(times[name]):18.3f} {1e3 * min(times[name]):15.3f} "
              f"{statistics.median(pairs):34.3f}")  # fmt: skip


def processor_calls(vocab, prompt_ids: torch.Tensor, args: argparse.Namespace) -> None:
    """Per-call time of each processor over one drawing: `input_ids` grow by one image code per call."""
    boi = torch.full((prompt_ids.shape[0], 1), vocab.boi_token_id, device=prompt_ids.device)
    code = torch.full_like(boi, int(vocab.image_token_ids[0]))
    steps = [torch.cat([prompt_ids, boi, *([code] * k)], dim=1) for k in range(args.new_tokens)]
    scores = torch.randn(prompt_ids.shape[0], vocab.vocab_size, device=prompt_ids.device)
    classes = {"legacy processor (0426e78)": LegacyImageSpanLogitsProcessor, "processor": ImageSpanLogitsProcessor}

    def block(processor_class) -> float:
        processor = processor_class(vocab, max_new_tokens=args.new_tokens + 1)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for ids in steps:
            processor(ids, scores)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / len(steps)

    times: dict[str, list[float]] = {name: [] for name in classes}
    for name in classes:  # warm-up
        block(classes[name])
    for repeat in range(args.repeats):
        for name in list(classes)[:: 1 if repeat % 2 == 0 else -1]:
            times[name].append(block(classes[name]))
    legacy, new = times["legacy processor (0426e78)"], times["processor"]
    print(f"device={args.device} batch={prompt_ids.shape[0]} calls={len(steps)} vocab={vocab.vocab_size} "
          f"repeats={args.repeats}")  # fmt: skip
    for name, values in times.items():
        print(f"{name:30s} {1e6 * statistics.median(values):9.1f} us/call (median), {1e6 * min(values):9.1f} (min)")
    ratios = [n / o for n, o in zip(new, legacy, strict=True)]
    print(f"processor / legacy, median of paired ratios: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
