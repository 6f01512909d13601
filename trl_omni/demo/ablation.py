"""The ablation behind `trl-omni ablate`: the paper's claims tested on Uni-Skills with the demo model, several seeds.

Every arm starts from one **base model**: the demo model trained on generic drawing only ([`make_generic_drawing`]:
copy, mirror, turn upside down, frame, paint the background; never a Uni-Skills task, question or chain of thought),
the stand-in for Anole, which both Omni-R1 and Omni-R1-Zero start from. The arms:

| arm | training |
|---|---|
| `untrained` | none (the base model) |
| `sft` | `PeSFTTrainer` with `perception_loss_weight=0` (plain SFT) on the suite's interleaved rows |
| `pesft` | `PeSFTTrainer` (lambda = `perception_loss_weight`) on the same rows |
| `pesft_perpo` | `pesft`, then `PeRPOTrainer` with `PerceptionCalibratedReward` |
| `pesft_perpo_ref` | `pesft`, then `PeRPOTrainer` with the calibrated reward plus `ReferenceImageReward` |
| `zero_pesft` | text-only chains of thought bootstrapped by the base model (`bootstrap_dataset`), then PeSFT |
| `zero_pesft_perpo` | `zero_pesft`, then PeRPO with the calibrated reward |

Each stage has the same step budget in every arm (`sft_steps` for the SFT-type stages, `rl_steps` for PeRPO). A seed
changes the data order, the perception head's initialisation, the rollouts' sampling and the bootstrap's drawings;
the base model and the suite (training rows and held-out split) are the same for every seed, so arms are compared
on the same rows, seed by seed. Evaluation is `trl_omni.evaluation.evaluate` with the suite's drawing check.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any


ARMS: dict[str, str] = {
    "untrained": "the base model (generic drawing only), not trained on Uni-Skills",
    "sft": "SFT: PeSFTTrainer with perception_loss_weight=0",
    "pesft": "PeSFT",
    "pesft_perpo": "PeSFT + PeRPO (calibrated reward)",
    "pesft_perpo_ref": "PeSFT + PeRPO (calibrated + ReferenceImageReward)",
    "zero_pesft": "Zero: bootstrapped traces + PeSFT",
    "zero_pesft_perpo": "Zero: bootstrapped traces + PeSFT + PeRPO (calibrated)",
}
# The arm each arm continues from (its first stages are that arm's).
_PARENT = {"pesft_perpo": "pesft", "pesft_perpo_ref": "pesft", "zero_pesft_perpo": "zero_pesft"}


@dataclass
class AblationConfig:
    """Arguments of [`run_ablation`] and of `trl-omni ablate` (every field is a `--flag`)."""

    output_dir: str = field(
        default="trl-omni-ablation", metadata={"help": "Where results.json, report.html and the stages' files go."}
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "Training seeds (data order, perception-head init, rollout and bootstrap sampling)."},
    )
    arms: list[str] = field(
        default_factory=lambda: list(ARMS),
        metadata={"help": f"Arms to run, among {list(ARMS)}; the arms they continue from are added."},
    )
    base_steps: int = field(default=300, metadata={"help": "Generic-drawing steps of the shared base model."})
    sft_steps: int = field(default=240, metadata={"help": "Steps of every SFT-type stage (SFT, PeSFT, Zero PeSFT)."})
    rl_steps: int = field(default=16, metadata={"help": "Steps of every PeRPO stage."})
    num_train: int = field(default=512, metadata={"help": "Uni-Skills training rows."})
    num_test: int = field(default=48, metadata={"help": "Held-out Uni-Skills rows (every evaluation)."})
    num_generic: int = field(default=1024, metadata={"help": "Generic drawing rows of the base model."})
    suite_seed: int = field(default=0, metadata={"help": "Seed of the Uni-Skills rows (the same for every seed)."})
    model_seed: int = field(default=0, metadata={"help": "Seed of the base model's weights and generic data."})
    image_size: int = field(default=24, metadata={"help": "Image side in pixels (the code grid is a quarter)."})
    hidden_size: int = field(default=128, metadata={"help": "Width of the demo model."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Depth of the demo model."})
    sft_batch_size: int = field(default=16, metadata={"help": "Rows per SFT-type step."})
    sft_learning_rate: float = field(default=3e-3, metadata={"help": "Learning rate of the SFT-type stages."})
    perception_loss_weight: float = field(default=1.0, metadata={"help": "lambda of the PeSFT arms."})
    rl_batch_size: int = field(default=16, metadata={"help": "Completions per PeRPO step."})
    num_generations: int = field(default=4, metadata={"help": "Completions per prompt in PeRPO."})
    rl_learning_rate: float = field(default=5e-5, metadata={"help": "PeRPO learning rate."})
    reference_weight: float = field(
        default=0.5, metadata={"help": "TRL reward weight of ReferenceImageReward next to the calibrated reward (1)."}
    )
    bootstrap_temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature of the bootstrap's drawings (BootstrapConfig's default)."}
    )
    max_images: int = field(
        default=2, metadata={"help": "Images a completion may draw in rollouts and evaluations (bootstrapped traces "
                             "draw one per reasoning step)."}
    )  # fmt: skip
    eval_batch_size: int = field(default=64, metadata={"help": "Prompts per generation call in evaluations."})
    num_report_samples: int = field(default=4, metadata={"help": "Held-out rows rendered per arm in report.html."})
    num_threads: int = field(default=1, metadata={"help": "torch CPU threads (0 keeps torch's default)."})

    def __post_init__(self):
        unknown = [arm for arm in self.arms if arm not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"Unknown arms {unknown or self.arms}; choose from {list(ARMS)}.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}.")
        if min(self.base_steps, self.sft_steps, self.rl_steps) < 1:
            raise ValueError("base_steps, sft_steps and rl_steps must be >= 1.")
        if self.rl_batch_size % self.num_generations:
            raise ValueError(
                f"rl_batch_size ({self.rl_batch_size}) must be a multiple of num_generations ({self.num_generations})."
            )
        # Arms run in the table's order, with the arms they continue from.
        wanted = set(self.arms) | {_PARENT[arm] for arm in self.arms if arm in _PARENT}
        self.arms = [arm for arm in ARMS if arm in wanted]


class _Progress:
    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[ablate {time.perf_counter() - self.start:7.1f}s] {message}", flush=True)


def reference_image_reward_class() -> Any:
    """`trl_omni.rewards.ReferenceImageReward`, or None in an installation without it."""
    from .. import rewards

    return getattr(rewards, "ReferenceImageReward", None)


def _fresh_copy(source: Any, config: AblationConfig) -> Any:
    """A copy of `source`'s weights in a new demo model, without its perception head (a PeSFT stage initialises its
    own with the stage's seed; PeRPO has none)."""
    from .uniskills import demo_model

    model, _ = demo_model(
        seed=config.model_seed,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        image_size=config.image_size,
    )
    state = {key: value for key, value in source.state_dict().items() if not key.startswith("perception_head.")}
    model.load_state_dict(state)
    return model


@dataclass
class _Context:
    """What every arm of one run uses."""

    config: AblationConfig
    processor: Any
    vocab: Any
    base: Any
    train_rows: list[dict[str, Any]]
    test_rows: list[dict[str, Any]]
    max_new_tokens: int
    progress: _Progress
    report_rows: list[int]


def _evaluate(ctx: _Context, model: Any, name: str) -> Any:
    from .evaluation import evaluate_uniskills

    began = time.perf_counter()
    evaluation = evaluate_uniskills(
        model,
        ctx.processor,
        ctx.test_rows,
        os.path.join(ctx.config.output_dir, "eval", name),
        ctx.max_new_tokens,
        batch_size=ctx.config.eval_batch_size,
        max_images=ctx.config.max_images,
    )
    overall = evaluation.metrics["all"]
    ctx.progress(
        f"  eval {name}: accuracy {100 * overall['accuracy']:.1f}%, complete images "
        f"{100 * overall['complete_image_rate']:.1f}%, correct drawings {100 * overall['drawing_accuracy']:.1f}% "
        f"({time.perf_counter() - began:.1f}s)"
    )
    return evaluation


def _stage_record(result: Any, before: dict[str, Any], **extra: Any) -> dict[str, Any]:
    from .training import parameter_change

    return {
        "steps": result.steps,
        "first_loss": result.losses[0] if result.losses else None,
        "last_loss": result.losses[-1] if result.losses else None,
        "losses_finite": result.losses_finite,
        "parameter_change": parameter_change(before, result.model),
        "seconds": round(result.seconds, 2),
        "cpu_seconds": round(result.cpu_seconds, 2),
        **extra,
    }


def _log_stage(ctx: _Context, what: str, record: dict[str, Any]) -> None:
    losses = (
        f"loss {record['first_loss']:.3g} -> {record['last_loss']:.3g}" if record["first_loss"] is not None else ""
    )
    ctx.progress(
        f"  {what}: {record['steps']} steps, {losses}, parameters moved {record['parameter_change']:.2e} "
        f"({record['seconds']:.1f}s, cpu {record['cpu_seconds']:.1f}s)"
    )


def _sft_stage(ctx: _Context, start: Any, rows: list[dict], seed: int, name: str, weight: float) -> tuple[Any, dict]:
    from datasets import Value

    from .training import run_pesft_stage

    model = _fresh_copy(start, ctx.config)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    result = run_pesft_stage(
        model,
        ctx.processor,
        rows,
        os.path.join(ctx.config.output_dir, "stages", name),
        ctx.config.sft_steps,
        seed=seed,
        batch_size=ctx.config.sft_batch_size,
        learning_rate=ctx.config.sft_learning_rate,
        perception_loss_weight=weight,
        extra_columns={"skill": Value("string")},
        save=False,
        quiet=True,
    )
    record = _stage_record(result, before, perception_loss_weight=weight)
    _log_stage(ctx, f"{'SFT' if weight == 0 else 'PeSFT'} (lambda {weight:g})", record)
    return result.model, record


def _rl_stage(ctx: _Context, start: Any, seed: int, name: str, with_reference: bool) -> tuple[Any, dict]:
    from datasets import Value

    from ..data.schema import image_part, part_list_feature
    from ..rewards import PerceptionCalibratedReward
    from .training import run_perpo_stage
    from .uniskills import row_images

    model = _fresh_copy(start, ctx.config)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    rewards: list = [PerceptionCalibratedReward(ctx.vocab, format_style="thought", processing_class=ctx.processor)]
    weights, columns, rows = None, {"skill": Value("string")}, ctx.train_rows
    if with_reference:
        rewards.append(reference_image_reward_class()(ctx.vocab))
        weights, columns["reference_images"] = [1.0, ctx.config.reference_weight], part_list_feature()
        # The suite's solver drawings are the references (rows of newer suites carry them already).
        rows = [
            {**row, "reference_images": row.get("reference_images")
             or [image_part(codes=codes) for codes in row_images(row, "completion")]}
            for row in rows
        ]  # fmt: skip
    result = run_perpo_stage(
        model,
        ctx.processor,
        rows,
        os.path.join(ctx.config.output_dir, "stages", name),
        ctx.config.rl_steps,
        rewards,
        max_completion_length=ctx.max_new_tokens,
        reward_weights=weights,
        seed=seed,
        batch_size=ctx.config.rl_batch_size,
        num_generations=ctx.config.num_generations,
        learning_rate=ctx.config.rl_learning_rate,
        max_images=ctx.config.max_images,
        extra_columns=columns,
        save=False,
        quiet=True,
    )
    rewards_logged = [entry["reward"] for entry in result.logs if "reward" in entry]
    record = _stage_record(
        result, before, mean_reward=sum(rewards_logged) / len(rewards_logged) if rewards_logged else None
    )
    _log_stage(ctx, "PeRPO" + (" + reference reward" if with_reference else ""), record)
    return result.model, record


def _zero_rows(ctx: _Context, seed: int) -> tuple[list[dict], dict]:
    """The suite's text-only chains of thought bootstrapped by the base model, paired with the suite's prompts."""
    from ..data.bootstrap import bootstrap_dataset
    from .zero import text_only_cot

    began, cpu_began = time.perf_counter(), time.process_time()
    output_dir = os.path.join(ctx.config.output_dir, "bootstrap", f"seed-{seed}")
    bootstrapped = bootstrap_dataset(
        text_only_cot(ctx.train_rows), ctx.base, ctx.processor, output_dir, keep_columns=["skill"], seed=seed,
        temperature=ctx.config.bootstrap_temperature, template="plain", overwrite=True, disable_tqdm=True,
    )  # fmt: skip
    by_id = {row["id"]: row for row in ctx.train_rows}
    # The M3CoT converter writes "Question: ..." prompts; the suite's own prompt keeps train and test layouts equal.
    rows = [{**by_id[row["id"]], "completion": row["completion"]} for row in bootstrapped]
    record = {
        "rows": len(rows),
        "images_per_row": sum(p["type"] == "image" for r in rows for p in r["completion"]) / max(1, len(rows)),
        "seconds": round(time.perf_counter() - began, 2),
        "cpu_seconds": round(time.process_time() - cpu_began, 2),
    }
    ctx.progress(
        f"  bootstrap: {record['rows']} text-only chains of thought -> interleaved traces, "
        f"{record['images_per_row']:.1f} drawings per trace ({record['seconds']:.1f}s)"
    )
    return rows, record


def _base_model(config: AblationConfig, progress: _Progress) -> tuple[Any, Any, Any, dict[str, Any]]:
    """The shared base model: the demo model trained on generic drawing only (plain SFT), and how well it draws."""
    from datasets import Value

    from ..evaluation import EvalConfig, evaluate
    from ..models import ImageVocabulary
    from .training import run_pesft_stage
    from .uniskills import demo_model
    from .zero import GENERIC_TASKS, check_generic_drawing, make_generic_drawing

    model, processor = demo_model(
        seed=config.model_seed,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        image_size=config.image_size,
    )
    vocab = ImageVocabulary.from_model(model, processor)
    num_check = 10 * len(GENERIC_TASKS)
    generic = make_generic_drawing(vocab.grid_size, config.num_generic + num_check, seed=config.model_seed)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    result = run_pesft_stage(
        model, processor, generic[: config.num_generic], os.path.join(config.output_dir, "stages", "base"),
        config.base_steps, seed=config.model_seed, batch_size=config.sft_batch_size,
        learning_rate=config.sft_learning_rate, perception_loss_weight=0.0, extra_columns={"task": Value("string")},
        save=False, quiet=True,
    )  # fmt: skip
    record = _stage_record(result, before, generic_rows=config.num_generic)
    check = EvalConfig(
        output_dir=os.path.join(config.output_dir, "eval", "base-generic-drawing"), overwrite=True, template="plain",
        batch_size=config.eval_batch_size, max_new_tokens=vocab.span_length + 2, max_images=1,
        source_columns=["task"], task_groups={task: [task] for task in GENERIC_TASKS}, save_images=False,
        report_max_rows=0, progress=False, print_table=False,
    )  # fmt: skip
    metrics = evaluate(
        model, processor, generic[config.num_generic :], check, dataset_format="interleaved",
        drawing_check=check_generic_drawing,
    ).metrics  # fmt: skip
    record["generic_drawing_cells_right"] = {
        name: entry["drawing_accuracy"] for name, entry in {**metrics["groups"], "all": metrics["overall"]}.items()
    }
    progress(
        f"base model: {result.steps} steps of generic drawing (loss {record['first_loss']:.3g} -> "
        f"{record['last_loss']:.3g}, {record['seconds']:.1f}s); on {num_check} further generic requests "
        f"{100 * record['generic_drawing_cells_right']['all']:.0f}% of the drawn cells are right"
    )
    return model, processor, vocab, record


def run_ablation(config: AblationConfig) -> dict[str, Any]:
    """Runs every arm for every seed, prints progress, the per-skill tables and the claims, and writes
    `results.json` and `report.html` to `config.output_dir`. Returns the content of `results.json`.

    Example:
        ```python
        >>> from trl_omni.demo.ablation import AblationConfig, run_ablation
        >>> summary = run_ablation(AblationConfig(output_dir="ablation", seeds=[0], sft_steps=20, rl_steps=2))
        >>> summary["comparisons"][0]["verdict"]
        ```
    """
    import json
    import platform

    import datasets
    import torch

    from ..collators import InterleavedDataCollator
    from . import ablation_report as report
    from .evaluation import completion_budget
    from .uniskills import make_uniskills

    progress = _Progress()
    wall, cpu, load_start = time.perf_counter(), time.process_time(), os.getloadavg()
    torch.manual_seed(config.model_seed)
    torch.set_flush_denormal(True)  # tiny weights trained at a high learning rate drift into slow denormals
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    os.makedirs(config.output_dir, exist_ok=True)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the stages' dataset and bootstrap writes; progress is reported per stage
    try:
        base, processor, vocab, base_record = _base_model(config, progress)
        train_rows, test_rows = make_uniskills(vocab.grid_size, config.num_train, config.num_test, config.suite_seed)
        budget = completion_budget(InterleavedDataCollator(processor, vocab, template="plain"), test_rows)
        ctx = _Context(
            config, processor, vocab, base, train_rows, test_rows,
            max_new_tokens=budget + (config.max_images - 1) * vocab.span_length, progress=progress,
            report_rows=list(range(min(config.num_report_samples, len(test_rows)))),
        )  # fmt: skip
        notes, arms = [], list(config.arms)
        if "pesft_perpo_ref" in arms and reference_image_reward_class() is None:
            arms.remove("pesft_perpo_ref")
            notes.append(
                "Arm pesft_perpo_ref skipped: trl_omni.rewards.ReferenceImageReward is not in this installation."
            )
        runs: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
        samples: dict[str, Any] = {}
        zero_samples: list[dict] = []
        if "untrained" in arms:  # greedy and untrained: the same for every seed, evaluated once
            samples["untrained"] = _evaluate(ctx, base, "untrained")
            for seed in config.seeds:
                runs["untrained"][seed] = {"metrics": samples["untrained"].metrics, "stages": []}
        for position, seed in enumerate(config.seeds):
            progress(f"seed {seed} ({position + 1}/{len(config.seeds)})")
            models: dict[str, Any] = {}
            for arm in arms:
                if arm == "untrained":
                    continue
                name, parent = f"seed-{seed}/{arm}", _PARENT.get(arm)
                progress(f" {arm}: {ARMS[arm]}")
                stages = list(runs[parent][seed]["stages"]) if parent else []
                if arm in ("sft", "pesft"):
                    weight = 0.0 if arm == "sft" else config.perception_loss_weight
                    models[arm], stage = _sft_stage(ctx, base, train_rows, seed, name, weight)
                elif arm == "zero_pesft":
                    zero_rows, bootstrap = _zero_rows(ctx, seed)
                    zero_samples = zero_samples or zero_rows
                    stages.append({"bootstrap": bootstrap})
                    models[arm], stage = _sft_stage(ctx, base, zero_rows, seed, name, config.perception_loss_weight)
                else:
                    models[arm], stage = _rl_stage(ctx, models[parent], seed, name, arm == "pesft_perpo_ref")
                evaluation = _evaluate(ctx, models[arm], name)
                runs[arm][seed] = {"metrics": evaluation.metrics, "stages": [*stages, stage]}
                if position == 0:
                    samples[arm] = evaluation
        table = report.aggregate(runs)
        comparisons = report.compare(runs, report.CLAIMS)
        secondary = report.compare(runs, report.SECONDARY)
        labels = {arm: arm for arm in ARMS}
        tables = report.format_tables(table, labels)
        claims = report.format_comparisons(comparisons)
        others = report.format_comparisons(secondary)
        timing = {
            "wall_seconds": round(time.perf_counter() - wall, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1),
            "load_average_start": [round(v, 2) for v in load_start],
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
        }
        summary = {
            "config": {key: getattr(config, key) for key in config.__dataclass_fields__},
            "seeds": list(config.seeds),
            "arms": {arm: ARMS[arm] for arm in arms},
            "machine": {
                "description": f"{os.cpu_count()} CPU(s), torch {torch.__version__}, {platform.processor() or platform.machine()}",
                "torch_threads": torch.get_num_threads(),
            },
            "num_test": len(test_rows),
            "max_new_tokens": ctx.max_new_tokens,
            "base_model": base_record,
            "runs": {arm: {str(seed): run for seed, run in by_seed.items()} for arm, by_seed in runs.items()},
            "table": table,
            "comparisons": comparisons,
            "secondary_comparisons": secondary,
            "notes": notes,
            "timing": timing,
        }
        trajectories = report.render_samples(ctx, samples, zero_samples, labels)
        page = report.report_html(summary, tables, claims + "\n\n" + others, trajectories)
        with open(os.path.join(config.output_dir, "report.html"), "w", encoding="utf-8") as handle:
            handle.write(page)
        with open(os.path.join(config.output_dir, "results.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    finally:
        if bars:
            datasets.enable_progress_bars()
    print(
        f"\nUni-Skills held-out split ({len(test_rows)} rows; one row of a skill is {400 / len(test_rows):.1f} points)\n"
    )
    print(tables + "\n\nClaims (paired by seed; spread = the larger std of the two arms)\n" + claims)
    print("\nOther comparisons\n" + others + "\n")
    for note in notes:
        print(f"Note: {note}")
    progress(
        f"done: {timing['wall_seconds']:.0f}s wall, {timing['cpu_seconds']:.0f}s CPU (load average "
        f"{timing['load_average_start'][0]:.1f} at start, {timing['load_average_end'][0]:.1f} at the end); "
        f"{os.path.join(config.output_dir, 'results.json')}, {os.path.join(config.output_dir, 'report.html')}"
    )
    return summary
