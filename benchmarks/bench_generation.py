"""Per-token cost of `ImageSpanLogitsProcessor` inside `model.generate`.

Runs constrained and unconstrained sampling on the same model, prompts and lengths (every run generates exactly
`--new-tokens` tokens: EOS is suppressed through `min_new_tokens`), alternating the two in one process, and prints
the median per-token time of each and their ratio (target <= 1.05).

    python benchmarks/bench_generation.py --repeats 9
"""

import argparse
import statistics
import time

import torch
from transformers import LogitsProcessorList

from trl_omni import ImageSpanLogitsProcessor, ImageVocabulary
from trl_omni.testing import tiny_chameleon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (1 avoids oversubscription).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, processor = tiny_chameleon(seed=0, hidden_size=args.hidden_size, num_hidden_layers=args.layers)
    model.to(args.device).eval()
    vocab = ImageVocabulary.from_model(model, processor)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    prompts = ["Let me draw it", "zoom in", "THOUGHT 1:", "mark the red square"] * (args.batch_size // 4 + 1)
    inputs = tokenizer(prompts[: args.batch_size], return_tensors="pt", padding=True).to(args.device)
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=True, use_cache=True)

    def run(constrained: bool) -> float:
        processors = LogitsProcessorList(
            [ImageSpanLogitsProcessor(vocab, max_new_tokens=args.new_tokens)] if constrained else []
        )
        torch.manual_seed(0)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.generate(**inputs, logits_processor=processors, **kwargs)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        assert out.shape[1] - inputs["input_ids"].shape[1] == args.new_tokens
        return elapsed / args.new_tokens

    with torch.inference_mode():
        run(False), run(True)  # warm-up
        plain, constrained = [], []
        for _ in range(args.repeats):
            plain.append(run(False))
            constrained.append(run(True))
    p, c = statistics.median(plain), statistics.median(constrained)
    ratios = [ci / pi for ci, pi in zip(constrained, plain)]
    print(
        f"device={args.device} threads={args.threads} batch={args.batch_size} new_tokens={args.new_tokens} "
        f"repeats={args.repeats}"
    )
    print(f"unconstrained: {p * 1e3:.3f} ms/token   constrained: {c * 1e3:.3f} ms/token")
    print(f"ratio of medians (constrained / unconstrained): {c / p:.3f}   median of paired ratios: "
          f"{statistics.median(ratios):.3f}   (target <= 1.05)")  # fmt: skip


if __name__ == "__main__":
    main()
