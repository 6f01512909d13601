"""Benchmark of `PerceptionReward` (2D-TV perception reward), in one process.

1. Throughput: 64 completions holding 1-3 images each (32x32 codes, an 8192 x 256 codebook: the Anole sizes), scored
   by `PerceptionReward` (table and gather methods) vs a straightforward per-sample Python implementation written
   below. Prints the speed-up ratios (target >= 20x).
2. Share of a GRPO step: TRL's own `GRPOTrainer` on the tiny Chameleon, generation steered so that completions hold
   images (as PeRPO's constrained generation does), with `PerceptionReward` as the reward; the reward's wall time is
   measured inside the step and printed as a share of the step time (target < 1%).
3. Reward time per PeRPO step (the default calibrated reward plus the `perception/*` metrics) at Anole sizes, with
   perception scored twice (the previous trainer: a second scorer for the metrics) and once (one scorer per trainer,
   shared parse), and the distance tables each holds.

Usage (from the repository root):
    PYTHONPATH=. python benchmarks/bench_rewards.py [--repeats 10] [--steps 4] [--threads N] [--skip-grpo]
        [--only-perpo-step]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from trl_omni.models import ImageVocabulary  # noqa: E402
from trl_omni.rewards import PerceptionReward  # noqa: E402


# ---------------------------------------------------------------------------------------------- the baseline
def baseline_perception(completion_ids, boi, eoi, id_to_code, codebook, grid, tau=3.0):
    """Straightforward per-sample implementation: a Python scan of each completion, then the TV of each image."""
    h, w = grid
    d = codebook.shape[1]
    results = []
    for ids in completion_ids:
        scores = []
        i = 0
        while i < len(ids):
            if ids[i] != boi:
                i += 1
                continue
            j = i + 1
            codes = []
            while j < len(ids) and ids[j] in id_to_code:
                codes.append(id_to_code[ids[j]])
                j += 1
            if j < len(ids) and ids[j] == eoi and len(codes) == h * w:
                z = codebook[torch.tensor(codes)].reshape(h, w, d)
                tv_x = (z[:, 1:] - z[:, :-1]).pow(2).sum(-1).mean()
                tv_y = (z[1:] - z[:-1]).pow(2).sum(-1).mean()
                energy = float((tv_x + tv_y) / d)
                scores.append(1.0 / (1.0 + energy / tau))
                j += 1
            i = j
        results.append(min(scores) if scores else None)
    return results


# ---------------------------------------------------------------------------------------------- synthetic data
def anole_sized_vocabulary(seed: int = 0) -> ImageVocabulary:
    """An image vocabulary with Anole's sizes (8192 codes, 256-dim codebook, 32x32 grid, 65536-token vocabulary).

    Built from a random, shuffled id table: the benchmark measures the reward, not a checkpoint (none can be
    downloaded here). The ids are drawn at random so no real-vocabulary constant appears.
    """
    gen = torch.Generator().manual_seed(seed)
    vocab_size, num_codes = 65536, 8192
    ids = torch.randperm(vocab_size, generator=gen)
    image_ids, specials = ids[:num_codes], ids[num_codes : num_codes + 3]
    return ImageVocabulary(
        boi_token_id=int(specials[0]),
        eoi_token_id=int(specials[1]),
        image_placeholder_id=int(specials[2]),
        image_token_ids=image_ids,
        grid_size=(32, 32),
        codebook=torch.randn(num_codes, 256, generator=gen),
        vocab_size=vocab_size,
    )


def make_completions(vocab: ImageVocabulary, num_completions: int = 64, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    image_mask = vocab.image_token_mask()
    text_ids = (~image_mask).nonzero().flatten()
    text_ids = text_ids[(text_ids != vocab.boi_token_id) & (text_ids != vocab.eoi_token_id)]
    h, w = vocab.grid_size
    completions = []
    for i in range(num_completions):
        row: list[int] = []
        for _ in range(1 + i % 3):  # 1-3 images
            text = text_ids[torch.randint(0, len(text_ids), (int(torch.randint(10, 60, (1,), generator=gen)),),
                                          generator=gen)]  # fmt: skip
            # smooth-ish images: a few codes in blocks, plus noise
            base = torch.randint(0, vocab.num_codes, (4, 4), generator=gen)
            codes = base.repeat_interleave(h // 4, 0).repeat_interleave(w // 4, 1)
            noise = torch.rand(h, w, generator=gen) < 0.1
            codes = torch.where(noise, torch.randint(0, vocab.num_codes, (h, w), generator=gen), codes)
            row += text.tolist() + vocab.image_span_ids(codes).tolist()
        row += text_ids[:20].tolist()
        completions.append(row)
    return completions


def timed(fn, repeats):
    """Best-of-`repeats` wall time (the least disturbed by other processes on a shared machine) and the result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def interleaved(calls, repeats):
    """Times every call once per repeat, back to back, so the load of a shared machine hits them alike.

    Returns the per-call lists of wall times and the last output of each call."""
    times = {label: [] for label in calls}
    outputs = {}
    for _ in range(repeats):
        for label, fn in calls.items():
            start = time.perf_counter()
            outputs[label] = fn()
            times[label].append(time.perf_counter() - start)
    return times, outputs


# ---------------------------------------------------------------------------------------------- part 1
def bench_throughput(repeats: int) -> None:
    vocab = anole_sized_vocabulary()
    completions = make_completions(vocab)
    num_images = sum(1 + i % 3 for i in range(len(completions)))
    id_to_code = {int(t): c for c, t in enumerate(vocab.image_token_ids.tolist())}

    def baseline():
        return baseline_perception(
            completions, vocab.boi_token_id, vocab.eoi_token_id, id_to_code, vocab.codebook, vocab.grid_size
        )

    rewards = {method: PerceptionReward(vocab, method=method) for method in ("table", "gather")}
    setup = {}
    for method, reward in rewards.items():
        start = time.perf_counter()
        reward.score(completions[:1])  # builds the per-device caches (codebook copy, distance table) once
        setup[method] = time.perf_counter() - start

    # Interleaved: each repeat times the baseline and both methods back to back, so that load from other processes
    # on a shared machine hits them alike; the ratio is the median of the per-repeat ratios. Each call gets a fresh
    # copy of the completions (nothing cached); "table+cached parse" scores the list PeRPO's metrics already parsed
    # (`parse_completions` caches it per batch), as the reward does inside a PeRPO step.
    shared = [list(row) for row in completions]
    vocab.parse_completions(shared)

    def fresh(method):
        return lambda: rewards[method].score([list(row) for row in completions])

    def cached_parse():
        rewards["table"]._last_scores = None  # score again (a new step would): only the parse is shared
        return rewards["table"].score(shared)

    calls = {
        "baseline": baseline,
        "table": fresh("table"),
        "gather": fresh("gather"),
        "table+cached parse": cached_parse,
    }
    times, outputs = interleaved(calls, repeats)

    print(f"PerceptionReward throughput: {len(completions)} completions, {num_images} images of "
          f"{vocab.grid_size[0]}x{vocab.grid_size[1]} codes, codebook {vocab.num_codes}x{vocab.codebook_dim}, "
          f"{repeats} interleaved repeats")  # fmt: skip
    print(f"  per-sample Python baseline         : {min(times['baseline']) * 1e3:9.1f} ms (best)")
    for label in ("table", "gather", "table+cached parse"):
        ratios = [b / f for b, f in zip(times["baseline"], times[label])]
        max_error = max(abs(a - b) for a, b in zip(outputs[label], outputs["baseline"]))
        cache = setup[label.split("+")[0]]
        print(f"  PerceptionReward[{label:18s}] : {min(times[label]) * 1e3:7.1f} ms (best)   speed-up "
              f"x{statistics.median(ratios):5.1f} (median of repeats; best-vs-best "
              f"x{min(times['baseline']) / min(times[label]):.1f})   one-time cache {cache * 1e3:.0f} ms; "
              f"max |diff| vs baseline {max_error:.1e}")  # fmt: skip

    reward = rewards["table"]
    pack_time, (ids, mask) = timed(lambda: reward._to_batch(completions), repeats)
    parse_time, segments = timed(
        lambda: vocab.parse_segments(ids, attention_mask=mask, continue_open_image=True), repeats
    )
    tv_time, _ = timed(lambda: reward.image_scores(segments.complete_codes), repeats)
    print(f"      table breakdown (best): pack ids {pack_time * 1e3:.1f} ms, ImageVocabulary.parse_segments "
          f"{parse_time * 1e3:.1f} ms, TV of all images {tv_time * 1e3:.1f} ms")  # fmt: skip


# ---------------------------------------------------------------------------------------------- part 2
def bench_grpo_share(steps: int) -> None:
    from datasets import Dataset
    from transformers import LogitsProcessor, LogitsProcessorList
    from trl import GRPOConfig, GRPOTrainer

    from trl_omni.models import ImageSpanLogitsProcessor
    from trl_omni.testing import tiny_chameleon

    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    max_completion = 2 * vocab.span_length + 16

    class OpenImages(LogitsProcessor):
        """Makes every row open an image whenever it is in text mode (BOI is the only other choice of the span
        processor), so completions hold as many complete images as fit, as a drawing policy would."""

        def __call__(self, input_ids, scores):
            boosted = scores.clone()
            boosted[:, vocab.boi_token_id] += 50.0
            return boosted

    steering = LogitsProcessorList([OpenImages(), ImageSpanLogitsProcessor(vocab, max_new_tokens=max_completion)])
    model.generate = functools.partial(type(model).generate, model, logits_processor=steering)

    reward = PerceptionReward(vocab)
    spent = []

    def perception_reward(prompts, completions, completion_ids, **kwargs):
        start = time.perf_counter()
        out = reward(prompts, completions, completion_ids, **kwargs)
        spent.append(time.perf_counter() - start)
        return out

    dataset = Dataset.from_dict({"prompt": ["Draw the answer.", "Show the step."] * 16})
    args = GRPOConfig(
        output_dir="/tmp/bench_rewards_grpo", max_completion_length=max_completion, per_device_train_batch_size=8,
        num_generations=4, max_steps=steps + 1, bf16=False, use_cpu=True, report_to="none", logging_steps=1,
        save_strategy="no", seed=0,
    )  # fmt: skip
    trainer = GRPOTrainer(model=model, reward_funcs=[perception_reward], args=args, train_dataset=dataset,
                          processing_class=processor.tokenizer)  # fmt: skip
    from transformers import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):  # keep the benchmark's output readable
        trainer.remove_callback(callback)
    trainer.train()
    step_times = [entry["step_time"] for entry in trainer.state.log_history if "step_time" in entry][1:]
    reward_times = spent[1:]  # the first step also builds caches
    images = [entry.get("perception_reward/complete_images") for entry in trainer.state.log_history]
    images = [v for v in images if v is not None]
    share = sum(reward_times) / sum(step_times)
    print(f"GRPO step share on the tiny Chameleon ({steps} measured steps, 8 completions of <= {max_completion} "
          f"tokens, ~{statistics.mean(images):.1f} complete images per step):")  # fmt: skip
    print(f"  step time {statistics.mean(step_times) * 1e3:.1f} ms, reward time "
          f"{statistics.mean(reward_times) * 1e3:.2f} ms -> share {share * 100:.2f}%")  # fmt: skip


# ---------------------------------------------------------------------------------------------- part 3
def bench_perpo_step_rewards(repeats: int) -> None:
    """The reward-side work of one PeRPO step with the default reward, before and after "perception scored once".

    A step runs the calibrated reward (accuracy + format + perception) on the rollouts and logs the
    `perception/*` metrics. Before, the metrics had a second `PerceptionReward` of their own: it parsed the
    completions and scored every image again (with its own codebook distance table, until the table moved into the
    vocabulary). After, the metrics read the scores of the reward's own perception term (one scorer per trainer) and
    every reader shares the core's cached parse. "Before" is reproduced with today's classes by giving the metrics a
    separate scorer and its own copy of the ids, exactly the work the previous trainer did.
    """
    from trl_omni.rewards import PerceptionCalibratedReward

    vocab = anole_sized_vocabulary()
    completions = make_completions(vocab)
    texts = ["THOUGHT 0: look. Final Answer: B"] * len(completions)
    answers = ["B"] * len(completions)

    def step(reward, metric_scorer, copy_for_metrics):
        ids = [list(row) for row in completions]  # TRL's fresh list of the step
        vocab.parse_completions(ids)  # the trainer's image metrics
        reward(prompts=["Q"] * len(ids), completions=texts, completion_ids=ids, answer=answers)
        return metric_scorer.score([list(row) for row in ids] if copy_for_metrics else ids)

    before_reward = PerceptionCalibratedReward(vocab, format_style="thought")
    before_metrics = PerceptionReward(vocab)  # the previous trainer's second scorer
    after_reward = PerceptionCalibratedReward(vocab, format_style="thought")
    calls = {
        "before": lambda: step(before_reward, before_metrics, copy_for_metrics=True),
        "after": lambda: step(after_reward, after_reward.perception, copy_for_metrics=False),
    }
    for fn in calls.values():
        fn()  # builds the distance tables
    times, outputs = interleaved(calls, repeats)
    assert outputs["before"] == outputs["after"]
    scorers = {"before": (before_reward.perception, before_metrics), "after": (after_reward.perception,)}
    tables = {label: len({id(s.distance_table("cpu")) for s in group}) for label, group in scorers.items()}
    table_mib = vocab.num_codes**2 * 4 / 2**20
    ratios = [b / a for b, a in zip(times["before"], times["after"])]
    print(f"PeRPO step, reward side (calibrated reward + perception metrics), {len(completions)} completions, "
          f"Anole sizes, {repeats} interleaved repeats:")  # fmt: skip
    for label in calls:
        print(f"  {label:6s}: {statistics.median(times[label]) * 1e3:7.1f} ms (median), "
              f"{min(times[label]) * 1e3:7.1f} ms (best); distance tables held: {tables[label]} "
              f"({tables[label] * table_mib:.0f} MiB)")  # fmt: skip
    print(f"  before / after: x{statistics.median(ratios):.2f} (median of repeats)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--skip-grpo", action="store_true")
    parser.add_argument("--only-perpo-step", action="store_true", help="run part 3 only")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores visible, torch threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}")  # fmt: skip
    if not args.only_perpo_step:
        bench_throughput(args.repeats)
        if not args.skip_grpo:
            bench_grpo_share(args.steps)
    bench_perpo_step_rewards(args.repeats)


if __name__ == "__main__":
    main()
