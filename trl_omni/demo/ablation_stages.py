"""The ablation's stages: the base model, the SFT-type and PeRPO stages, the Zero bootstrap, the evaluations, and
[`run_chain`], which runs the arms of one seed that build on each other (in the main process or in a worker)."""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any

from .ablation import ARMS, PARENT, AblationConfig


class Progress:
    """Prints `[ablate  12.3s] message` lines, timed from `start` (`time.time()`, shared with worker processes)."""

    def __init__(self, start: float | None = None):
        self.start = time.time() if start is None else start

    def __call__(self, message: str) -> None:
        print(f"[ablate {time.time() - self.start:7.1f}s] {message}", flush=True)


def _demo_model(config: AblationConfig) -> tuple[Any, Any]:
    from .uniskills import demo_model

    return demo_model(
        seed=config.model_seed,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        image_size=config.image_size,
    )


def weights_without_head(model: Any) -> dict[str, Any]:
    """The model's state dict without its perception head (a PeSFT stage initialises its own with the stage's seed;
    PeRPO has none)."""
    return {key: value for key, value in model.state_dict().items() if not key.startswith("perception_head.")}


def _fresh_copy(source: Any, config: AblationConfig) -> Any:
    """A copy of `source`'s weights (without its perception head) in a new demo model."""
    model, _ = _demo_model(config)
    model.load_state_dict(weights_without_head(source))
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
    progress: Progress
    report_rows: list[int]


def evaluate_arm(ctx: _Context, model: Any, name: str) -> Any:
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

    from ..data import REFERENCE_COLUMN, part_list_feature
    from ..rewards import PerceptionCalibratedReward
    from .training import run_perpo_stage

    model = _fresh_copy(start, ctx.config)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    # The authors' calibrated reward; with the reference term, each drawing is also scored against the row's solver
    # drawing (ReferenceImageReward inside the calibration, as `trl-omni demo --reward reference`).
    reward = PerceptionCalibratedReward(
        ctx.vocab,
        format_style="thought",
        processing_class=ctx.processor,
        reference_weight=ctx.config.reference_weight if with_reference else 0.0,
    )
    columns = {"skill": Value("string"), **({REFERENCE_COLUMN: part_list_feature()} if with_reference else {})}
    result = run_perpo_stage(
        model,
        ctx.processor,
        ctx.train_rows,
        os.path.join(ctx.config.output_dir, "stages", name),
        ctx.config.rl_steps,
        [reward],
        max_completion_length=ctx.max_new_tokens,
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
        choices_column=None, context_column=None,  # free-form questions
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


def train_base_model(config: AblationConfig, progress: Progress) -> tuple[Any, Any, Any, dict[str, Any]]:
    """The shared base model: the demo model trained on generic drawing only (plain SFT), and how well it draws."""
    from datasets import Value

    from ..evaluation import EvalConfig, evaluate
    from ..models import ImageVocabulary
    from .training import run_pesft_stage
    from .zero import GENERIC_TASKS, check_generic_drawing, make_generic_drawing

    model, processor = _demo_model(config)
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
        batch_size=config.eval_batch_size, max_new_tokens=vocab.generation_budget(num_images=1, text_tokens=2),
        max_images=1,
        source_columns=["task"], task_groups={task: [task] for task in GENERIC_TASKS}, save_images=False,
        report_max_rows=0, progress=False, print_table=False,
    )  # fmt: skip
    evaluation_logger = logging.getLogger("trl_omni.evaluation")
    level = evaluation_logger.level
    evaluation_logger.setLevel(logging.ERROR)  # drawing requests have no answer to score: no "no gold answer" warning
    try:
        metrics = evaluate(
            model, processor, generic[config.num_generic :], check, dataset_format="interleaved",
            drawing_check=check_generic_drawing,
        ).metrics  # fmt: skip
    finally:
        evaluation_logger.setLevel(level)
    record["generic_drawing_foreground"] = {
        name: entry["drawing_accuracy"] for name, entry in {**metrics["groups"], "all": metrics["overall"]}.items()
    }
    progress(
        f"base model: {result.steps} steps of generic drawing (loss {record['first_loss']:.3g} -> "
        f"{record['last_loss']:.3g}, {record['seconds']:.1f}s); on {num_check} further generic requests it draws "
        f"{100 * record['generic_drawing_foreground']['all']:.0f}% of the foreground cells right"
    )
    return model, processor, vocab, record


def make_context(config: AblationConfig, base: Any, processor: Any, vocab: Any, progress: Progress) -> _Context:
    """The suite (the same rows for every seed) and the evaluation budget around a base model."""
    from ..collators import InterleavedDataCollator
    from .evaluation import completion_budget
    from .uniskills import make_uniskills

    train_rows, test_rows = make_uniskills(vocab.grid_size, config.num_train, config.num_test, config.suite_seed)
    budget = completion_budget(InterleavedDataCollator(processor, vocab, template="plain"), test_rows)
    return _Context(
        config, processor, vocab, base, train_rows, test_rows,
        # Room for every image a completion may draw (bootstrapped traces draw one per reasoning step).
        max_new_tokens=budget + vocab.generation_budget(num_images=config.max_images - 1, text_tokens=0),
        progress=progress,
        report_rows=list(range(min(config.num_report_samples, len(test_rows)))),
    )  # fmt: skip


def run_chain(ctx: _Context, seed: int, arms: list[str]) -> dict[str, Any]:
    """Trains and evaluates `arms` for `seed`, each continuing from the one it builds on (`PARENT`).

    Returns:
        arm -> `{"metrics", "stages", "sequences", "scores"}` (the sequences and scores of the report rows), plus
        `"zero_rows"`: the first bootstrapped training rows when the chain bootstrapped.
    """
    out: dict[str, Any] = {"zero_rows": []}
    models: dict[str, Any] = {}
    for arm in arms:
        name, parent = f"seed-{seed}/{arm}", PARENT.get(arm)
        ctx.progress(f"seed {seed} · {arm}: {ARMS[arm]}")
        stages = list(out[parent]["stages"]) if parent else []
        if arm in ("sft", "pesft"):
            weight = 0.0 if arm == "sft" else ctx.config.perception_loss_weight
            models[arm], stage = _sft_stage(ctx, ctx.base, ctx.train_rows, seed, name, weight)
        elif arm == "zero_pesft":
            zero_rows, bootstrap = _zero_rows(ctx, seed)
            out["zero_rows"] = zero_rows[: len(ctx.report_rows)]
            stages.append({"bootstrap": bootstrap})
            models[arm], stage = _sft_stage(ctx, ctx.base, zero_rows, seed, name, ctx.config.perception_loss_weight)
        else:
            models[arm], stage = _rl_stage(ctx, models[parent], seed, name, arm == "pesft_perpo_ref")
        evaluation = evaluate_arm(ctx, models[arm], name)
        out[arm] = {
            "metrics": evaluation.metrics,
            "stages": [*stages, stage],
            "sequences": [evaluation.sequences[i] for i in ctx.report_rows],
            "scores": [evaluation.scores[i] for i in ctx.report_rows],
        }
    return out


_WORKER_CONTEXT: dict[str, _Context] = {}


def run_chain_in_worker(config: AblationConfig, base_path: str, start: float, seed: int, arms: list[str]) -> dict:
    """[`run_chain`] in a worker process: the base model is read from `base_path` once per worker."""
    import datasets
    import torch

    from ..models import ImageVocabulary

    try:
        if base_path not in _WORKER_CONTEXT:
            if config.num_threads > 0:
                torch.set_num_threads(config.num_threads)
            torch.set_flush_denormal(True)
            datasets.disable_progress_bars()
            base, processor = _demo_model(config)
            base.load_state_dict(torch.load(base_path, weights_only=True))
            vocab = ImageVocabulary.from_model(base, processor)
            _WORKER_CONTEXT[base_path] = make_context(config, base, processor, vocab, Progress(start))
        return run_chain(_WORKER_CONTEXT[base_path], seed, arms)
    except Exception as error:
        # Sent back as text: not every exception can be pickled (one that cannot would break the pool instead).
        raise RuntimeError(
            f"seed {seed}, arms {arms}: {type(error).__name__}: {error}\n{traceback.format_exc()}"
        ) from None
