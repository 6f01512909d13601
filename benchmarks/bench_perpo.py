"""PeRPO step time against TRL's GRPOTrainer on the same tiny Chameleon, measured alternately in one process.

Both trainers get text-only prompts, the same reward, and completions of exactly `--completion-length` tokens
(`min_new_tokens` = `max_new_tokens`), so the difference is PeRPO's own cost: the image-span logits processor at each
sampled token, segment parsing, image-free decoding and the modality metrics. Each round runs both trainers for
`--steps` steps, in alternating order (short runs, so that the load of a shared machine hits both alike); the first
step of each run is warm-up and is left out.

Also reported: the share of PeRPO's step time spent in generation (`_generate_single_turn`) and in reward
computation (`_calculate_rewards`), and the ratio of the steps' CPU time (`time.process_time`; with one torch thread
this is the step's own work, much steadier than wall time on a machine shared with other jobs).

Usage:
    python benchmarks/bench_perpo.py                       # defaults below
    python benchmarks/bench_perpo.py --reward calibrated   # the default PeRPO reward (needs trl_omni.rewards)
    python benchmarks/bench_perpo.py --sampling-only       # the span constraint: forward hook vs generate argument
    python benchmarks/bench_perpo.py --processor-only      # the span constraint's processor alone, per step
    python benchmarks/bench_perpo.py --a-a                 # GRPO vs an identical GRPO: this machine's resolution
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from trl_omni.models import ImageVocabulary  # noqa: E402
from trl_omni.testing import tiny_chameleon  # noqa: E402
from trl_omni.trainers import PeRPOConfig, PeRPOTrainer  # noqa: E402


PROMPTS = [
    "What is shown in the image? Think step by step.",
    "Which shape is red: the square or the circle?",
    "How many rows and columns does the grid have?",
    "The answer is A. Explain why.",
]


def text_reward(completions, **kwargs):
    return [float(text.count(" ")) / 10.0 for text in completions]


def instrument(trainer, timings):
    """Times the trainer's step, generation and reward hooks on this instance."""

    def timed(name, method):
        def wrapper(*args, **kwargs):
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                timings[name].append(time.perf_counter() - start)
                timings[f"{name} cpu"].append(time.process_time() - cpu_start)

        return wrapper

    trainer.training_step = timed("step", trainer.training_step)
    trainer._generate_single_turn = timed("generation", trainer._generate_single_turn)
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)


def build(kind, cli, output_dir):
    model, processor = tiny_chameleon(seed=0, hidden_size=cli.hidden_size, num_hidden_layers=cli.layers)
    common = dict(
        output_dir=output_dir,
        num_generations=cli.num_generations,
        per_device_train_batch_size=cli.batch_size,
        max_completion_length=cli.completion_length,
        max_steps=cli.steps,
        learning_rate=1e-5,
        bf16=False,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
        epsilon_high=0.28,
        generation_kwargs={"min_new_tokens": cli.completion_length},
    )
    dataset = Dataset.from_dict({"prompt": PROMPTS * 64, "answer": ["A"] * 256})
    if cli.reward == "calibrated":
        from trl_omni.rewards import PerceptionCalibratedReward

        reward = PerceptionCalibratedReward(ImageVocabulary.from_model(model, processor))
    else:
        reward = text_reward
    if kind in ("grpo", "grpo_again"):
        return GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=GRPOConfig(**common),
            train_dataset=dataset,
            processing_class=processor.tokenizer,
        )
    return PeRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=PeRPOConfig(**common, log_rendered_trajectories=cli.log_rendered_trajectories),
        train_dataset=dataset,
        processing_class=processor.tokenizer,  # as GRPO: the comparison isolates PeRPO's own cost
    )


def bench_sampling_paths(cli) -> None:
    """The span constraint as PeRPO applies it (a forward hook around the `generate` call TRL makes) against the
    constraint passed to `generate(logits_processor=...)`: same samples, and the cost per generated token."""
    from transformers import LogitsProcessorList

    from trl_omni.models import ImageSpanLogitsProcessor
    from trl_omni.trainers.perpo_sampling import next_token_logits_processed

    model, processor = tiny_chameleon(seed=0, hidden_size=cli.hidden_size, num_hidden_layers=cli.layers)
    vocab = ImageVocabulary.from_model(model, processor)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    inputs = tokenizer((PROMPTS * cli.batch_size)[: cli.batch_size], return_tensors="pt", padding=True)
    length = cli.completion_length
    kwargs = dict(max_new_tokens=length, min_new_tokens=length, do_sample=True)
    span = ImageSpanLogitsProcessor(vocab, max_new_tokens=length)

    def as_argument():
        torch.manual_seed(0)
        return model.generate(**inputs, logits_processor=LogitsProcessorList([span]), **kwargs)

    def as_hook():
        torch.manual_seed(0)
        with next_token_logits_processed(model, span):
            return model.generate(**inputs, **kwargs)

    with torch.inference_mode():
        same = torch.equal(as_argument(), as_hook())
        times = {"argument": [], "hook": []}
        for repeat in range(cli.rounds):
            order = ("argument", "hook") if repeat % 2 == 0 else ("hook", "argument")
            for name in order:
                start = time.process_time()
                (as_argument if name == "argument" else as_hook)()
                times[name].append((time.process_time() - start) / length)
    argument, hook = (statistics.median(times[name]) for name in ("argument", "hook"))
    print(
        f"span constraint, {cli.batch_size} rows x {length} tokens, {cli.rounds} alternating repeats, CPU time per "
        f"token: generate(logits_processor=) {argument * 1e3:.3f} ms, PeRPO's forward hook {hook * 1e3:.3f} ms, "
        f"ratio {hook / argument:.3f}x median, {min(times['hook']) / min(times['argument']):.3f}x min; "
        f"identical samples: {same}"
    )


def bench_processor_alone(cli) -> None:
    """The span constraint's own cost per decoding step: `ImageSpanLogitsProcessor` called on precomputed growing
    ids (as `generate` passes them) and fixed scores, nothing else timed."""
    from trl_omni.models import ImageSpanLogitsProcessor

    model, processor = tiny_chameleon(seed=0, hidden_size=cli.hidden_size, num_hidden_layers=cli.layers)
    vocab = ImageVocabulary.from_model(model, processor)
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, 100, (cli.batch_size, 12), generator=generator)]
    for _ in range(cli.completion_length):
        token = torch.randint(0, model.config.vocab_size, (cli.batch_size, 1), generator=generator)
        sequences.append(torch.cat([sequences[-1], token], dim=1))
    scores = torch.randn(cli.batch_size, model.config.vocab_size, generator=generator)
    span = ImageSpanLogitsProcessor(vocab, max_new_tokens=cli.completion_length)
    per_step = []
    for _ in range(cli.rounds):
        span.reset()
        start = time.perf_counter()
        for ids in sequences[:-1]:
            span(ids, scores)
        per_step.append((time.perf_counter() - start) / cli.completion_length)
    print(
        f"ImageSpanLogitsProcessor alone, {cli.batch_size} rows x {cli.completion_length} steps, {cli.rounds} repeats: "
        f"{statistics.median(per_step) * 1e6:.1f} us per step median, {min(per_step) * 1e6:.1f} us min"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3, help="steps per run; the first is warm-up")
    parser.add_argument("--completion-length", type=int, default=128)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is stable on shared CPUs)")
    parser.add_argument("--reward", choices=["text", "calibrated"], default="text")
    parser.add_argument(
        "--sampling-only", action="store_true", help="compare the constraint as a forward hook vs a generate argument"
    )
    parser.add_argument(
        "--processor-only", action="store_true", help="time the span constraint's processor alone, per decoding step"
    )
    parser.add_argument(
        "--log-rendered-trajectories",
        type=int,
        default=PeRPOConfig.log_rendered_trajectories,
        help="PeRPO's rollouts rendered per log (its default; logging is at every step here, so 0 shows the "
        "rendering's share)",
    )
    parser.add_argument(
        "--a-a",
        action="store_true",
        help="time GRPO against a second, identical GRPO trainer instead of PeRPO: the ratio this machine reports "
        "for no difference at all (its resolution)",
    )
    parser.add_argument(
        "--flush-denormal",
        action="store_true",
        help="flush denormal floats to zero on the CPU (the random tiny model's image rollouts produce denormal "
        "activations, which slow every CPU op that touches them; GPUs are not affected)",
    )
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    torch.set_flush_denormal(cli.flush_denormal)
    if cli.sampling_only:
        bench_sampling_paths(cli)
        return
    if cli.processor_only:
        bench_processor_alone(cli)
        return

    timings = {kind: defaultdict(list) for kind in ("grpo", "perpo")}
    with tempfile.TemporaryDirectory() as tmp:
        # With --a-a the "perpo" slot holds a second GRPO trainer, built the same way as the first.
        contender = "grpo_again" if cli.a_a else "perpo"
        trainers = {"grpo": build("grpo", cli, os.path.join(tmp, "grpo"))}
        trainers["perpo"] = build(contender, cli, os.path.join(tmp, contender))
        round_ratios = []
        for round_index in range(cli.rounds):
            order = ("grpo", "perpo") if round_index % 2 == 0 else ("perpo", "grpo")
            for kind in order:
                run = defaultdict(list)
                instrument(trainers[kind], run)
                trainers[kind].train()
                for name, values in run.items():
                    timings[kind][name].extend(values[1:])  # drop the warm-up step of each run
                # Undo the instance-level wrappers before the next run.
                for name in ("training_step", "_generate_single_turn", "_calculate_rewards"):
                    del trainers[kind].__dict__[name]
            # The two runs of one round are back to back, so they share the machine's state of the moment.
            per_run = cli.steps - 1
            round_ratios.append(
                statistics.median(timings["perpo"]["step cpu"][-per_run:])
                / statistics.median(timings["grpo"]["step cpu"][-per_run:])
            )

    median = {kind: {name: statistics.median(v) for name, v in t.items()} for kind, t in timings.items()}
    fastest = {kind: min(t["step"]) for kind, t in timings.items()}
    total = {kind: {name: sum(v) for name, v in t.items()} for kind, t in timings.items()}
    ratio = median["perpo"]["step"] / median["grpo"]["step"]
    name = "GRPO'" if cli.a_a else "PeRPO"
    print(
        f"config: tiny Chameleon hidden={cli.hidden_size} layers={cli.layers}, G={cli.num_generations}, "
        f"batch={cli.batch_size}, completion={cli.completion_length} tokens, reward={cli.reward}, "
        f"threads={cli.threads}, flush_denormal={cli.flush_denormal}, {cli.rounds} rounds x {cli.steps - 1} timed steps"
        + ("" if cli.a_a else f", PeRPO log_rendered_trajectories={cli.log_rendered_trajectories}")
        + (", A/A: the second trainer is GRPO again" if cli.a_a else "")
    )
    print(f"{'trainer':8} {'step s (median)':>16} {'step s (min)':>13} {'generation share':>17} {'reward share':>13}")
    for kind in ("grpo", "perpo"):
        step_total = total[kind]["step"]
        print(
            f"{kind:8} {median[kind]['step']:16.4f} {fastest[kind]:13.4f} "
            f"{total[kind]['generation'] / step_total:17.1%} {total[kind]['reward'] / step_total:13.2%}"
        )
    print(
        f"{name} / GRPO step time: {ratio:.3f}x median, {fastest['perpo'] / fastest['grpo']:.3f}x min (target <= 1.05x)"
    )
    # CPU time of this process (one torch thread, no loader workers): what the step itself costs, far less sensitive
    # than wall time to the other jobs of a shared machine.
    cpu_ratio = median["perpo"]["step cpu"] / median["grpo"]["step cpu"]
    cpu_fastest = min(timings["perpo"]["step cpu"]) / min(timings["grpo"]["step cpu"])
    print(
        f"{name} / GRPO step CPU time: {cpu_ratio:.3f}x median, {cpu_fastest:.3f}x min "
        f"(GRPO {median['grpo']['step cpu']:.4f} s, {name} {median['perpo']['step cpu']:.4f} s median)"
    )
    quartiles = statistics.quantiles(round_ratios, n=4) if len(round_ratios) > 1 else [round_ratios[0]] * 3
    print(
        f"{name} / GRPO step CPU time paired by round: {statistics.median(round_ratios):.3f}x median of "
        f"{len(round_ratios)} rounds (quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})"
    )


if __name__ == "__main__":
    main()
