"""`trl-omni demo`: PeSFT then PeRPO on the procedurally generated Uni-Skills suite, offline, in minutes on a CPU.

It builds a tiny Chameleon whose VQ codebook is an 8-colour palette (codes are colours), generates the Uni-Skills
tasks (zoom-in, auxiliary line, marking, visual prediction; see `trl_omni.demo.uniskills`), evaluates the untrained
model on the held-out split, trains it with `PeSFTTrainer`, evaluates, continues with `PeRPOTrainer`, evaluates
again, and prints a per-skill table of answer accuracy, complete-image rate and drawing accuracy for the three
models. Checkpoints, `results.json` and `report.html` (rendered trajectories with exact palette images) go to
`--output_dir`.

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


# ---------------------------------------------------------------------------------------------------- evaluation
@dataclass
class EvalOutput:
    """Greedy completions of one model on the held-out rows, scored.

    Attributes:
        metrics: skill (and `"all"`) -> `{"accuracy", "complete_image_rate", "drawing_accuracy", "n"}`.
        sequences: Per row, the prompt ids followed by the generated completion ids (padding removed).
        scores: Per row, `{"accuracy", "complete_image", "drawing_correct"}`.
    """

    metrics: dict[str, dict[str, float]]
    sequences: list[list[int]]
    scores: list[dict[str, float]]


def completion_budget(collator: Any, rows: list[dict]) -> int:
    """Tokens a completion needs: the longest reference completion of `rows` (text, image span, answer, EOS) + 8."""
    batch = collator(rows)
    return int((batch["labels"] != -100).sum(dim=1).max()) + 8


def evaluate(
    model: Any,
    processor: Any,
    vocab: Any,
    collator: Any,
    rows: list[dict],
    max_new_tokens: int,
    batch_size: int = 64,
) -> EvalOutput:
    """Greedy, constrained generation on `rows`, scored per skill.

    Every image is forced to be an exact span by [`~trl_omni.ImageSpanLogitsProcessor`] (at most one per
    completion, never started without room to finish). Answers are scored with
    `make_accuracy_reward(processing_class=processor)` (its "Final Answer:" extraction and rule cascade); an image
    counts as complete when the completion holds a whole `BOI + H*W codes + EOI` span; the drawing is correct when
    its first complete image shows the answer ([`~trl_omni.demo.answer_from_drawing`]).

    Args:
        model: The policy.
        processor: Its processor (or tokenizer).
        vocab: Its [`~trl_omni.ImageVocabulary`].
        collator: The [`~trl_omni.InterleavedDataCollator`] laying prompts out as in training.
        rows: Uni-Skills rows (`prompt`, `answer`, `skill`).
        max_new_tokens: Generation budget per completion.
        batch_size: Prompts per `generate` call.
    """
    import torch
    from transformers import LogitsProcessorList

    from trl_omni.demo.uniskills import answer_from_drawing, row_question
    from trl_omni.models import ImageSpanLogitsProcessor
    from trl_omni.rewards import make_accuracy_reward

    tokenizer = getattr(processor, "tokenizer", processor)
    accuracy = make_accuracy_reward(processing_class=processor, image_vocabulary=vocab, strict=True)
    was_training = model.training
    model.eval()
    sequences, completions = [], []
    for start in range(0, len(rows), batch_size):
        prompts = collator.encode_prompt_batch(rows[start : start + batch_size])
        prompts = {key: value.to(model.device) for key, value in prompts.items()}
        with torch.no_grad():
            out = model.generate(
                **prompts,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                logits_processor=LogitsProcessorList(
                    [ImageSpanLogitsProcessor(vocab, max_images=1, max_new_tokens=max_new_tokens)]
                ),
            ).cpu()
        prompt_length = prompts["input_ids"].shape[1]
        for row_out, mask in zip(out, prompts["attention_mask"].cpu()):
            completion = row_out[prompt_length:].tolist()
            if tokenizer.eos_token_id in completion:  # generation pads finished rows after their EOS
                completion = completion[: completion.index(tokenizer.eos_token_id) + 1]
            completions.append(completion)
            sequences.append(row_out[:prompt_length][mask.bool()].tolist() + completion)
    model.train(was_training)

    segments = vocab.parse_segments(completions).per_row(len(rows))
    texts = [
        tokenizer.decode(
            [
                t
                for t, image in zip(ids, vocab.is_image_token(torch.tensor(ids, dtype=torch.long)).tolist())
                if not image
            ]
            if ids
            else [],
            skip_special_tokens=True,
        )
        for ids in completions
    ]
    answers = [row["answer"] for row in rows]
    accuracies = accuracy(
        prompts=[row_question(r) for r in rows], completions=texts, completion_ids=completions, answer=answers
    )
    scores = []
    for row, row_segments, acc in zip(rows, segments, accuracies):
        complete = [segment for segment in row_segments if segment.complete]
        drawn = (
            answer_from_drawing(
                row["skill"], row_question(row), complete[0].codes.reshape(-1).tolist(), vocab.grid_size
            )
            if complete
            else None
        )
        scores.append(
            {
                "accuracy": float(acc or 0.0),
                "complete_image": float(bool(complete)),
                "drawing_correct": float(drawn == row["answer"]),
            }
        )
    metrics: dict[str, dict[str, float]] = {}
    for skill in [*dict.fromkeys(row["skill"] for row in rows), "all"]:
        chosen = [s for s, row in zip(scores, rows) if skill == "all" or row["skill"] == skill]
        metrics[skill] = {
            "accuracy": sum(s["accuracy"] for s in chosen) / len(chosen),
            "complete_image_rate": sum(s["complete_image"] for s in chosen) / len(chosen),
            "drawing_accuracy": sum(s["drawing_correct"] for s in chosen) / len(chosen),
            "n": len(chosen),
        }
    return EvalOutput(metrics=metrics, sequences=sequences, scores=scores)


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """A plain-text table: one row per skill, per model `accuracy / complete images / correct drawings` (in %)."""
    stages = list(results)
    skills = list(next(iter(results.values())))
    header = ["skill", *(f"{stage} (acc / img / draw)" for stage in stages)]
    lines = [header]
    for skill in skills:
        cells = [skill]
        for stage in stages:
            m = results[stage][skill]
            cells.append(
                f"{100 * m['accuracy']:5.1f} / {100 * m['complete_image_rate']:5.1f} / {100 * m['drawing_accuracy']:5.1f}"
            )
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rendered = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)


def _html_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    stages = list(results)
    skills = list(next(iter(results.values())))
    head = "".join(f"<th>{html.escape(stage)}<br>acc / img / draw (%)</th>" for stage in stages)
    body = ""
    for skill in skills:
        cells = "".join(
            "<td>{:.1f} / {:.1f} / {:.1f}</td>".format(
                100 * results[stage][skill]["accuracy"],
                100 * results[stage][skill]["complete_image_rate"],
                100 * results[stage][skill]["drawing_accuracy"],
            )
            for stage in stages
        )
        body += f"<tr><td>{html.escape(skill)}</td>{cells}</tr>\n"
    return (
        "<h1>trl-omni demo: Uni-Skills (held-out split)</h1>\n"
        "<p>acc: answer accuracy; img: completions with a complete image; draw: the drawn image shows the answer.</p>\n"
        f'<table class="demo-results" border="1" cellpadding="4"><tr><th>skill</th>{head}</tr>\n{body}</table>\n'
    )


# ------------------------------------------------------------------------------------------------------- the run
def _log(start: float, message: str) -> None:
    print(f"[demo {time.perf_counter() - start:6.1f}s] {message}", flush=True)


def run_demo(args: DemoArguments) -> dict[str, Any]:
    """Runs the whole demo (see the module docstring) and returns `results.json`'s content."""
    import torch
    from datasets import Dataset, Value

    from trl_omni.collators import InterleavedDataCollator
    from trl_omni.data import interleaved_features, part_list_feature
    from trl_omni.demo import demo_decoder, demo_model, make_uniskills
    from trl_omni.models import ImageVocabulary
    from trl_omni.rewards import PerceptionCalibratedReward, PerceptionReward, make_accuracy_reward
    from trl_omni.trainers import PeRPOConfig, PeRPOTrainer, PeSFTConfig, PeSFTTrainer
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
    outputs: dict[str, EvalOutput] = {}

    def run_eval(stage: str) -> None:
        began = time.perf_counter()
        outputs[stage] = evaluate(
            model, processor, vocab, collator, test_rows, max_new_tokens, batch_size=args.eval_batch_size
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

    common = {
        "bf16": False,
        "use_cpu": not torch.cuda.is_available(),
        "report_to": "none",
        "save_strategy": "no",
        "seed": args.seed,
        "lr_scheduler_type": "constant",
        "interleaved_template": "plain",
    }
    features = interleaved_features(skill=Value("string"))
    if args.sft_steps > 0:
        _log(start, f"PeSFT: {args.sft_steps} steps of {args.sft_batch_size} rows")
        sft_args = PeSFTConfig(
            output_dir=os.path.join(args.output_dir, "pesft"),
            max_steps=args.sft_steps,
            per_device_train_batch_size=args.sft_batch_size,
            learning_rate=args.sft_learning_rate,
            warmup_steps=min(10, args.sft_steps // 10),
            logging_steps=max(1, args.sft_steps // 8),
            **common,
        )
        sft = PeSFTTrainer(
            model,
            args=sft_args,
            # The reference drawings are in the completion already; only PeRPO's reference reward reads them.
            train_dataset=Dataset.from_list(
                [{k: v for k, v in row.items() if k != "reference_images"} for row in train_rows], features=features
            ),
            processing_class=processor,
        )
        sft.train()
        sft.save_model()
        processor.save_pretrained(sft_args.output_dir)
        model = sft.model
        run_eval("PeSFT")

    if args.rl_steps > 0:
        columns = ("id", "skill", "prompt", "answer") + (("reference_images",) if args.reward == "reference" else ())
        rl_rows = [{key: row[key] for key in columns} for row in train_rows]
        rl_features = interleaved_features(columns=("prompt",), skill=Value("string"))
        if args.reward == "reference":
            rl_features["reference_images"] = part_list_feature()
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
        rl_args = PeRPOConfig(
            output_dir=os.path.join(args.output_dir, "perpo"),
            max_steps=args.rl_steps,
            per_device_train_batch_size=args.rl_batch_size,
            num_generations=args.num_generations,
            learning_rate=args.rl_learning_rate,
            max_completion_length=max_new_tokens,
            max_images_per_completion=1,
            reward_weights=reward_weights,
            logging_steps=max(1, args.rl_steps // 4),
            **common,
        )
        stage = "PeSFT+PeRPO" if args.sft_steps > 0 else "PeRPO"
        _log(
            start,
            f"PeRPO: {args.rl_steps} steps of {args.rl_batch_size // args.num_generations} prompts x "
            f"{args.num_generations} completions, reward {args.reward}",
        )
        rl = PeRPOTrainer(
            model,
            reward_funcs=reward_funcs,
            args=rl_args,
            train_dataset=Dataset.from_list(rl_rows, features=rl_features),
            processing_class=processor,
        )
        rl.train()
        rl.save_model()
        processor.save_pretrained(rl_args.output_dir)
        model = rl.model
        run_eval(stage)

    table = format_table(results)
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
    page = page.replace("<body>\n", "<body>\n" + _html_table(results), 1)
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
    from trl import TrlParser

    return TrlParser((DemoArguments,), prog=prog, description=__doc__.splitlines()[0])


def main(args: DemoArguments) -> dict[str, Any]:
    """Entry point of `trl-omni demo`: runs [`run_demo`]."""
    return run_demo(args)


if __name__ == "__main__":
    (demo_args,) = make_parser().parse_args_and_config()
    main(demo_args)
