"""`trl-omni demo`: PeSFT then PeRPO on the procedurally generated Uni-Skills suite, offline, in minutes on a CPU.

It builds a tiny Chameleon whose VQ codebook is an 8-colour palette (codes are colours), generates the Uni-Skills
tasks (zoom-in, auxiliary line, marking, visual prediction; see `trl_omni.demo.uniskills`), evaluates the untrained
model on the held-out split, trains it with `PeSFTTrainer`, evaluates, continues with `PeRPOTrainer`, evaluates
again, and prints a per-skill table of answer accuracy, complete-image rate and drawing accuracy for the three
models. Every evaluation is the library's (`trl_omni.evaluation.evaluate` with the suite's drawing check, through
`trl_omni.demo.evaluate_uniskills`). Checkpoints, the evaluations' files (`eval/<stage>/`), `results.json` and
`report.html` (rendered trajectories with exact palette images) go to `--output_dir`.

    trl-omni demo --output_dir demo-output
    python -m trl_omni.scripts.demo --sft_steps 200 --rl_steps 10 --seed 1
"""

from __future__ import annotations

import html
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any


REWARDS = ("calibrated", "accuracy_perception", "reference")


@dataclass
class DemoArguments:
    """Arguments of `trl-omni demo`."""

    output_dir: str = field(
        default="trl-omni-demo",
        metadata={"help": "Where checkpoints (pesft/, perpo/), results.json and report.html are written."},
    )
    sft_steps: int = field(default=320, metadata={"help": "PeSFT optimisation steps."})
    rl_steps: int = field(default=12, metadata={"help": "PeRPO optimisation steps after PeSFT (0 skips PeRPO)."})
    seed: int = field(default=0, metadata={"help": "Seed of the model, the Uni-Skills suite and training."})
    num_train: int = field(default=512, metadata={"help": "Uni-Skills training rows (spread over the skills)."})
    num_test: int = field(default=48, metadata={"help": "Held-out Uni-Skills rows used for every evaluation."})
    reward: str = field(
        default="calibrated",
        metadata={
            "help": "PeRPO reward: 'calibrated' (the perception-calibrated reward: accuracy, 'THOUGHT ... Final "
            "Answer:' format and 2D-TV perception in one), 'accuracy_perception' (the accuracy reward and the "
            "perception reward as two reward functions) or 'reference' (the calibrated reward plus the "
            "reference-image term: each drawing against the row's solver drawing, weight --reference_weight).",
            "choices": list(REWARDS),
        },
    )
    reference_weight: float = field(
        default=0.5,
        metadata={"help": "Weight of the reference-image term of `--reward reference` (ReferenceImageReward)."},
    )
    image_size: int = field(
        default=24, metadata={"help": "Image side in pixels of the demo model; its code grid side is a quarter of it."}
    )
    hidden_size: int = field(default=128, metadata={"help": "Width of the demo model."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Depth of the demo model."})
    sft_batch_size: int = field(default=16, metadata={"help": "PeSFT rows per step."})
    sft_learning_rate: float = field(default=3e-3, metadata={"help": "PeSFT learning rate (constant)."})
    rl_learning_rate: float = field(default=5e-5, metadata={"help": "PeRPO learning rate (constant)."})
    num_generations: int = field(default=4, metadata={"help": "PeRPO completions sampled per prompt."})
    rl_batch_size: int = field(
        default=16, metadata={"help": "PeRPO completions per step (a multiple of num_generations)."}
    )
    num_threads: int = field(
        default=1,
        metadata={
            "help": "CPU threads for torch (0 keeps torch's default). One thread is the fastest choice for this tiny "
            "model on a few shared cores: with more, a descheduled thread stalls every parallel operation."
        },
    )
    eval_batch_size: int = field(default=64, metadata={"help": "Prompts per generation call during evaluation."})
    num_report_samples: int = field(
        default=8, metadata={"help": "Held-out rows rendered in report.html for each model."}
    )


def _html_table(table: str) -> str:
    return (
        "<h1>trl-omni demo: Uni-Skills (held-out split)</h1>\n"
        "<p>Per skill and model: answer accuracy / complete-image rate / correct drawings (the drawn image shows the "
        "answer), in %.</p>\n"
        f'<pre class="demo-results">{html.escape(table)}</pre>\n'
    )


# ------------------------------------------------------------------------------------------------------- the run
def _log(start: float, message: str) -> None:
    print(f"[demo {time.perf_counter() - start:6.1f}s] {message}", flush=True)


def run_demo(args: DemoArguments) -> dict[str, Any]:
    """Runs the whole demo (see the module docstring) and returns `results.json`'s content."""
    import torch
    from datasets import Value

    from trl_omni.collators import InterleavedDataCollator
    from trl_omni.data import part_list_feature
    from trl_omni.demo import completion_budget, demo_decoder, demo_model, evaluate_uniskills, make_uniskills
    from trl_omni.demo.training import run_perpo_stage, run_pesft_stage
    from trl_omni.evaluation import comparison_table
    from trl_omni.models import ImageVocabulary
    from trl_omni.rewards import PerceptionCalibratedReward, PerceptionReward, make_accuracy_reward
    from trl_omni.visualization import render_html_page, render_trajectories

    if args.reward not in REWARDS:
        raise ValueError(f"--reward must be one of {REWARDS}, got {args.reward!r}.")
    if args.reward == "reference" and not 0.0 < args.reference_weight <= 0.95:
        raise ValueError(
            f"--reference_weight must lie in (0, 0.95] for --reward reference, got {args.reference_weight}."
        )
    if args.rl_steps > 0 and args.rl_batch_size % args.num_generations:
        raise ValueError(
            f"--rl_batch_size ({args.rl_batch_size}) must be a multiple of --num_generations ({args.num_generations})."
        )
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    # Tiny weights trained at a high learning rate drift into denormal floats, which are many times slower on CPUs.
    torch.set_flush_denormal(True)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    os.makedirs(args.output_dir, exist_ok=True)

    model, processor = demo_model(
        seed=args.seed,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        image_size=args.image_size,
    )
    vocab = ImageVocabulary.from_model(model, processor)
    train_rows, test_rows = make_uniskills(vocab.grid_size, args.num_train, args.num_test, seed=args.seed)
    num_parameters = sum(p.numel() for p in model.parameters())
    _log(
        start,
        f"model: tiny Chameleon ({num_parameters:,} parameters), {vocab.num_codes}-colour palette codebook, "
        f"{vocab.grid_size[0]}x{vocab.grid_size[1]} code grid; Uni-Skills: {len(train_rows)} train / "
        f"{len(test_rows)} held-out rows",
    )
    collator = InterleavedDataCollator(processor, vocab, template="plain")
    max_new_tokens = completion_budget(collator, test_rows)

    results: dict[str, dict[str, dict[str, float]]] = {}
    outputs: dict[str, Any] = {}

    def run_eval(stage: str) -> None:
        began = time.perf_counter()
        outputs[stage] = evaluate_uniskills(
            model,
            processor,
            test_rows,
            os.path.join(args.output_dir, "eval", stage),
            max_new_tokens,
            batch_size=args.eval_batch_size,
        )
        results[stage] = outputs[stage].metrics
        overall = results[stage]["all"]
        _log(
            start,
            f"eval {stage}: accuracy {100 * overall['accuracy']:.1f}%, complete images "
            f"{100 * overall['complete_image_rate']:.1f}%, correct drawings {100 * overall['drawing_accuracy']:.1f}% "
            f"({time.perf_counter() - began:.1f}s)",
        )

    run_eval("untrained")

    skill_column = {"skill": Value("string")}
    if args.sft_steps > 0:
        _log(start, f"PeSFT: {args.sft_steps} steps of {args.sft_batch_size} rows")
        model = run_pesft_stage(
            model,
            processor,
            train_rows,
            os.path.join(args.output_dir, "pesft"),
            args.sft_steps,
            seed=args.seed,
            batch_size=args.sft_batch_size,
            learning_rate=args.sft_learning_rate,
            extra_columns=skill_column,
        ).model
        run_eval("PeSFT")

    if args.rl_steps > 0:
        reward_weights = None
        if args.reward in ("calibrated", "reference"):
            reward_funcs: list = [
                PerceptionCalibratedReward(
                    vocab,
                    format_style="thought",
                    processing_class=processor,
                    reference_weight=args.reference_weight if args.reward == "reference" else 0.0,
                )
            ]
        else:
            reward_funcs = [
                make_accuracy_reward(processing_class=processor, image_vocabulary=vocab),
                PerceptionReward(vocab),
            ]
            # The perception score weighs as in the calibrated reward's default (0.05 against accuracy).
            reward_weights = [1.0, 0.05]
        stage = "PeSFT+PeRPO" if args.sft_steps > 0 else "PeRPO"
        _log(
            start,
            f"PeRPO: {args.rl_steps} steps of {args.rl_batch_size // args.num_generations} prompts x "
            f"{args.num_generations} completions, reward {args.reward}",
        )
        model = run_perpo_stage(
            model,
            processor,
            train_rows,
            os.path.join(args.output_dir, "perpo"),
            args.rl_steps,
            reward_funcs,
            max_completion_length=max_new_tokens,
            reward_weights=reward_weights,
            seed=args.seed,
            batch_size=args.rl_batch_size,
            num_generations=args.num_generations,
            learning_rate=args.rl_learning_rate,
            # The reference reward reads each row's solver drawings.
            extra_columns={
                **skill_column,
                **({"reference_images": part_list_feature()} if args.reward == "reference" else {}),
            },
        ).model
        run_eval(stage)

    table = comparison_table(results)
    print("\nUni-Skills held-out split: answer accuracy / complete-image rate / correct drawings (%)\n" + table + "\n")

    decoder = demo_decoder(vocab.grid_size)
    shown = list(range(min(args.num_report_samples, len(test_rows))))
    trajectories = []
    for stage, output in outputs.items():
        trajectories += render_trajectories(
            [output.sequences[i] for i in shown],
            processor,
            vocab,
            decoder,
            titles=[f"{stage}: {test_rows[i]['id']}" for i in shown],
            metadata=[{"answer": test_rows[i]["answer"], **output.scores[i]} for i in shown],
        )
    page = render_html_page(trajectories, title="trl-omni demo")
    page = page.replace("<body>\n", "<body>\n" + _html_table(table), 1)
    report_path = os.path.join(args.output_dir, "report.html")
    with open(report_path, "w", encoding="utf-8") as handle:
        handle.write(page)
    summary = {
        "arguments": asdict(args),
        "results": results,
        "max_new_tokens": max_new_tokens,
        "seconds": round(time.perf_counter() - start, 1),
    }
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    _log(start, f"report: {report_path}; results: {os.path.join(args.output_dir, 'results.json')}")
    return summary


def make_parser(prog: str | None = None):
    """The `trl-omni demo` argument parser (a `TrlParser` over [`DemoArguments`], so `--config demo.yaml` works)."""
    from trl_omni.cli.launch import config_parser

    return config_parser(DemoArguments, __doc__, prog=prog)


def main(args: DemoArguments) -> dict[str, Any]:
    """Entry point of `trl-omni demo`: runs [`run_demo`]."""
    return run_demo(args)


if __name__ == "__main__":
    from trl_omni.cli.launch import run_script

    raise SystemExit(run_script(make_parser, main, "trl-omni demo"))
