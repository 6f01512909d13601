"""Benchmarks for the interleaved data path, each measured against its baseline in one process.

1. Collation throughput of `InterleavedDataCollator` on rows whose images are pre-tokenized (text still raw: the
   collator tokenizes it) vs TRL's `DataCollatorForLanguageModeling` fed the *already tokenized* ids of the very same
   sequences (same lengths, same padding). Ratio = ours / TRL's (target >= 0.5).
2. `pretokenize_images` once + collating codes for E epochs vs encoding the images inside the collator at every step
   (`image_encoder=`) for E epochs. Speed-up = per-step time / pre-tokenized time.

Usage:
    python benchmarks/bench_collator.py [--image-size 128] [--batch-size 8] [--batches 40] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _best_times(fns, repeats: int) -> list[float]:
    """Best-of-`repeats` wall time of each function, alternating them so machine noise hits both alike."""
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=128, help="Tiny-model image side; grid = side / 4.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--encode-rows", type=int, default=32, help="Rows with raw images for benchmark 2.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (DataLoader workers use 1).")
    args = parser.parse_args()

    import datasets
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from trl_omni.collators import InterleavedDataCollator
    from trl_omni.data import image_part, interleaved_features, pretokenize_images
    from trl_omni.models import ImageVocabulary
    from trl_omni.models.encoding import ImageEncoder
    from trl_omni.testing import tiny_chameleon
    from trl_omni.testing_data import interleaved_rows, make_image

    datasets.disable_progress_bars()
    torch.set_num_threads(args.threads)
    model, processor = tiny_chameleon(seed=0, image_size=args.image_size)
    vocab = ImageVocabulary.from_model(model, processor)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")  # fmt: skip
    print(f"image span: {vocab.span_length} tokens (grid {vocab.grid_size})")

    # ---- 1. collation throughput
    rows = interleaved_rows(vocab, num_rows=args.batch_size * args.batches, prompt_images=(0, 1),
                            completion_images=(1, 3), text_words=(20, 120), seed=0)  # fmt: skip
    batches = [rows[i : i + args.batch_size] for i in range(0, len(rows), args.batch_size)]
    for template in ("plain", "templated"):
        collator = InterleavedDataCollator(processor, vocab, template=template)
        built = [collator(batch) for batch in batches]
        # TRL gets the same sequences, already tokenized, with the same labels (prompt already masked).
        trl_examples = []
        for out in built:
            examples = []
            for ids, mask, labels in zip(out["input_ids"], out["attention_mask"], out["labels"]):
                n = int(mask.sum())
                examples.append({"input_ids": ids[:n].tolist(), "labels": labels[:n].tolist()})
            trl_examples.append(examples)
        tokens = sum(int(out["attention_mask"].sum()) for out in built)
        trl = DataCollatorForLanguageModeling(pad_token_id=processor.tokenizer.pad_token_id)
        trl_out = trl(trl_examples[0])
        assert torch.equal(trl_out["input_ids"], built[0]["input_ids"]) and torch.equal(
            trl_out["labels"], built[0]["labels"]
        )

        fresh = InterleavedDataCollator(processor, vocab, template=template)
        ours_s, trl_s = _best_times(
            [
                lambda ours=fresh: [ours(batch) for batch in batches],
                lambda theirs=trl, inputs=trl_examples: [theirs(examples) for examples in inputs],
            ],
            args.repeats,
        )
        print(
            f"collate[{template}]: {len(batches)} batches x {args.batch_size} rows, {tokens / len(rows):.0f} tokens/row | "
            f"ours {tokens / ours_s / 1e6:.2f} M tok/s ({ours_s * 1e3 / len(batches):.2f} ms/batch), "
            f"TRL {tokens / trl_s / 1e6:.2f} M tok/s ({trl_s * 1e3 / len(batches):.2f} ms/batch) | "
            f"ratio ours/TRL = {trl_s / ours_s:.2f}"
        )

    # ---- 2. pretokenize once vs encode per step
    raw_rows = []
    for r in range(args.encode_rows):
        raw_rows.append(
            {
                "id": str(r),
                "prompt": [{"type": "text", "text": "What is drawn?"},
                           image_part(image=make_image((args.image_size + 16, args.image_size), seed=r))],
                "completion": [{"type": "text", "text": "THOUGHT 0: zoom."},
                               image_part(image=make_image((args.image_size, args.image_size), seed=1000 + r)),
                               {"type": "text", "text": "Done."}],
                "answer": "A",
            }
        )  # fmt: skip
    dataset = datasets.Dataset.from_list(raw_rows, features=interleaved_features())
    encoder = ImageEncoder(model, processor, batch_size=32)
    per_step = InterleavedDataCollator(processor, vocab, image_encoder=encoder)
    raw_batches = [list(dataset.select(range(i, min(i + args.batch_size, len(dataset)))))
                   for i in range(0, len(dataset), args.batch_size)]  # fmt: skip
    per_step([raw_rows[0]])  # warm-up

    start = time.perf_counter()
    for _ in range(args.epochs):
        per_step_out = [per_step(batch) for batch in raw_batches]
    per_step_s = time.perf_counter() - start

    start = time.perf_counter()
    pretokenized = pretokenize_images(dataset, model, processor, image_encoder=encoder, batch_size=64)
    encode_once_s = time.perf_counter() - start
    plain = InterleavedDataCollator(processor, vocab)
    start = time.perf_counter()
    for _ in range(args.epochs):
        pre_batches = [list(pretokenized.select(range(i, min(i + args.batch_size, len(pretokenized)))))
                       for i in range(0, len(pretokenized), args.batch_size)]  # fmt: skip
        pre_out = [plain(batch) for batch in pre_batches]
    collate_s = time.perf_counter() - start
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(per_step_out, pre_out))
    images = 2 * len(dataset)
    print(
        f"encode: {images} images x {args.epochs} epochs | per-step encoding {per_step_s:.2f} s | pretokenize once "
        f"{encode_once_s:.2f} s + collate {collate_s:.2f} s = {encode_once_s + collate_s:.2f} s | "
        f"speed-up {per_step_s / (encode_once_s + collate_s):.1f}x (per later epoch: "
        f"{per_step_s / args.epochs / (collate_s / args.epochs):.0f}x)"
    )


if __name__ == "__main__":
    main()
