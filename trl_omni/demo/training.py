"""The demo's training stages: `PeSFTTrainer` and `PeRPOTrainer` on interleaved rows with the demo's settings, used
by `trl-omni demo` and `trl-omni ablate` (one place for the stage arguments, so both run the same recipe)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageResult:
    """One training stage.

    Attributes:
        model: The trained model (`trainer.model`).
        steps: Optimisation steps run.
        losses: The logged training losses, in order.
        seconds: Wall-clock seconds of `train()`.
        cpu_seconds: CPU seconds of this process during `train()`.
        logs: TRL's log history (every logged metric).
    """

    model: Any
    steps: int
    losses: list[float]
    seconds: float
    cpu_seconds: float
    logs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def losses_finite(self) -> bool:
        """Whether every logged loss is a finite number (and at least one was logged)."""
        return bool(self.losses) and all(math.isfinite(loss) for loss in self.losses)


def _common_arguments(
    output_dir: str, steps: int, batch_size: int, learning_rate: float, seed: int, quiet: bool
) -> dict[str, Any]:
    """The config arguments both stages take: the caller's budget, seed and output directory, and the demo's fixed
    settings (CPU unless a GPU is there, fp32, constant learning rate, `plain` template, nothing saved during training
    or rendered).

    Args:
        output_dir: The trainer's output directory.
        steps: Optimisation steps (`max_steps`).
        batch_size: `per_device_train_batch_size` (rows for PeSFT, completions for PeRPO).
        learning_rate: Constant learning rate.
        seed: Trainer seed.
        quiet: No progress bar.
    """
    import torch

    return {
        "output_dir": output_dir,
        "max_steps": steps,
        "per_device_train_batch_size": batch_size,
        "learning_rate": learning_rate,
        "log_rendered_trajectories": 0,
        "bf16": False,
        "use_cpu": not torch.cuda.is_available(),
        "report_to": "none",
        "save_strategy": "no",
        "seed": seed,
        "lr_scheduler_type": "constant",
        "interleaved_template": "plain",
        "disable_tqdm": quiet,
    }


def _train(trainer: Any, quiet: bool, save: bool, processor: Any) -> StageResult:
    if quiet:
        from transformers import PrinterCallback

        # Without progress bars the Trainer prints every log dict; the caller reports the stage instead.
        trainer.remove_callback(PrinterCallback)
    began, cpu_began = time.perf_counter(), time.process_time()
    output = trainer.train()
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu_began
    if save:
        trainer.save_model()
        processor.save_pretrained(trainer.args.output_dir)
    logs = list(trainer.state.log_history)
    losses = [float(entry["loss"]) for entry in logs if "loss" in entry]
    return StageResult(trainer.model, int(output.global_step), losses, seconds, cpu_seconds, logs)


def run_pesft_stage(
    model: Any,
    processor: Any,
    rows: list[dict[str, Any]],
    output_dir: str,
    steps: int,
    *,
    seed: int = 0,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    perception_loss_weight: float = 1.0,
    extra_columns: dict[str, Any] | None = None,
    save: bool = True,
    quiet: bool = False,
) -> StageResult:
    """PeSFT on interleaved rows (`plain` template, constant learning rate with a short warm-up).

    `perception_loss_weight=0` is plain SFT through the same trainer (PeSFT at lambda 0 equals `SFTTrainer`).

    Args:
        model: The model to train (modified in place).
        processor: Its processor.
        rows: Interleaved rows (`prompt`, `completion`, `answer`, and the columns of `extra_columns`; others are
            dropped).
        output_dir: The trainer's output directory (the model and processor are saved there when `save`).
        steps: Optimisation steps.
        seed: Trainer seed (data order) and perception-head seed.
        batch_size: Rows per step.
        learning_rate: Constant learning rate.
        perception_loss_weight: lambda of `L = L_CE + lambda * L_Pe`.
        extra_columns: `datasets` features of columns besides the interleaved ones (e.g. `{"skill": Value("string")}`).
        save: Save the trained model and processor to `output_dir`.
        quiet: No progress bar and no printed logs.
    """
    from datasets import Dataset

    from ..data import interleaved_features
    from ..trainers import PeSFTConfig, PeSFTTrainer

    args = PeSFTConfig(
        warmup_steps=min(10, steps // 10),
        logging_steps=max(1, steps // 8),
        perception_loss_weight=perception_loss_weight,
        **_common_arguments(output_dir, steps, batch_size, learning_rate, seed, quiet),
    )
    features = interleaved_features(**(extra_columns or {}))
    # Other columns (e.g. `reference_images`, read by PeRPO's reference reward) are not PeSFT's.
    dataset = Dataset.from_list([{key: row.get(key) for key in features} for row in rows], features=features)
    trainer = PeSFTTrainer(model, args=args, train_dataset=dataset, processing_class=processor)
    return _train(trainer, quiet, save, processor)


def run_perpo_stage(
    model: Any,
    processor: Any,
    rows: list[dict[str, Any]],
    output_dir: str,
    steps: int,
    reward_funcs: list[Any],
    *,
    max_completion_length: int,
    reward_weights: list[float] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    num_generations: int = 4,
    learning_rate: float = 5e-5,
    max_images: int = 1,
    extra_columns: dict[str, Any] | None = None,
    save: bool = True,
    quiet: bool = False,
) -> StageResult:
    """PeRPO on the prompts of interleaved rows (their completions are dropped; other columns reach the rewards).

    Args:
        model: The model to train (modified in place).
        processor: Its processor.
        rows: Rows with `prompt`, `answer` and the columns named in `extra_columns`.
        output_dir: The trainer's output directory.
        steps: Optimisation steps.
        reward_funcs: Reward callables.
        max_completion_length: Rollout budget in tokens.
        reward_weights: TRL's `reward_weights` (None: all 1).
        seed: Trainer seed (prompt order, rollout sampling).
        batch_size: Completions per step (a multiple of `num_generations`).
        num_generations: Completions per prompt.
        learning_rate: Constant learning rate.
        max_images: Images a rollout may draw.
        extra_columns: `datasets` features of the columns kept besides `prompt` and `answer` (e.g. `skill`,
            `reference_images`).
        save: Save the trained model and processor to `output_dir`.
        quiet: No progress bar and no printed logs.
    """
    from datasets import Dataset

    from ..data import interleaved_features
    from ..trainers import PeRPOConfig, PeRPOTrainer

    if batch_size % num_generations:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of num_generations ({num_generations}).")
    extra_columns = dict(extra_columns or {})
    kept = ("id", "prompt", "answer", *extra_columns)
    args = PeRPOConfig(
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        max_images_per_completion=max_images,
        reward_weights=reward_weights,
        logging_steps=max(1, steps // 4),
        **_common_arguments(output_dir, steps, batch_size, learning_rate, seed, quiet),
    )
    features = interleaved_features(columns=("prompt",), **extra_columns)
    dataset = Dataset.from_list([{key: row[key] for key in kept if key in row} for row in rows], features=features)
    trainer = PeRPOTrainer(
        model, reward_funcs=reward_funcs, args=args, train_dataset=dataset, processing_class=processor
    )
    return _train(trainer, quiet, save, processor)


def parameter_change(before: dict[str, Any], after: Any) -> float:
    """Relative L2 distance between a state dict and a model's matching parameters (0: nothing changed)."""
    import torch

    moved = total = 0.0
    for name, value in after.state_dict().items():
        if name in before and value.is_floating_point():
            moved += float(torch.sum((value.float() - before[name].float()) ** 2))
            total += float(torch.sum(before[name].float() ** 2))
    return (moved / total) ** 0.5 if total else 0.0
