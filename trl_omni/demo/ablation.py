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
| `pesft_perpo_ref` | `pesft`, then PeRPO with the calibrated reward plus its `ReferenceImageReward` term |
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
    "pesft_perpo_ref": "PeSFT + PeRPO (calibrated reward with the ReferenceImageReward term)",
    "zero_pesft": "Zero: bootstrapped traces + PeSFT",
    "zero_pesft_perpo": "Zero: bootstrapped traces + PeSFT + PeRPO (calibrated)",
}
# The arm each arm continues from (its first stages are that arm's).
PARENT = {"pesft_perpo": "pesft", "pesft_perpo_ref": "pesft", "zero_pesft_perpo": "zero_pesft"}
# Arms that build on each other run together (the unit of work of a worker), longest chain first.
CHAINS = (("zero_pesft", "zero_pesft_perpo"), ("pesft", "pesft_perpo", "pesft_perpo_ref"), ("sft",))


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
    sft_steps: int = field(
        default=320,
        metadata={"help": "Steps of every SFT-type stage (SFT, PeSFT, Zero PeSFT); 320 as in `trl-omni demo`."},
    )
    rl_steps: int = field(default=16, metadata={"help": "Steps of every PeRPO stage."})
    num_train: int = field(default=512, metadata={"help": "Uni-Skills training rows."})
    num_test: int = field(default=96, metadata={"help": "Held-out Uni-Skills rows (every evaluation)."})
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
        default=0.5,
        metadata={
            "help": "Weight of the ReferenceImageReward term inside PerceptionCalibratedReward in the "
            "pesft_perpo_ref arm (as `trl-omni demo --reward reference`)."
        },
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
    num_threads: int = field(default=1, metadata={"help": "torch CPU threads per process (0 keeps torch's default)."})
    num_workers: int = field(
        default=2,
        metadata={
            "help": "Processes that run the seeds' arms in parallel, one per CPU core (the base model is trained "
            "first, in this process). 1 runs everything here. Results do not depend on it."
        },
    )

    def __post_init__(self):
        from ..utils.type_checks import check_field_types
        from .uniskills import _check_names

        check_field_types(self)
        _check_names(self.arms, list(ARMS), "arms")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}.")
        if min(self.base_steps, self.sft_steps, self.rl_steps) < 1:
            raise ValueError("base_steps, sft_steps and rl_steps must be >= 1.")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}.")
        if self.rl_batch_size % self.num_generations:
            raise ValueError(
                f"rl_batch_size ({self.rl_batch_size}) must be a multiple of num_generations ({self.num_generations})."
            )
        # Arms run in the table's order, with the arms they continue from.
        wanted = set(self.arms) | {PARENT[arm] for arm in self.arms if arm in PARENT}
        self.arms = [arm for arm in ARMS if arm in wanted]


def _run_chains(config: AblationConfig, ctx: Any, arms: list[str], start: float) -> dict[tuple[int, tuple], dict]:
    """Every (seed, chain) of `arms`, in this process or in `config.num_workers` worker processes."""
    from . import ablation_stages as stages

    tasks = [
        (seed, chain)
        for seed in config.seeds
        for chain in (tuple(arm for arm in chain if arm in arms) for chain in CHAINS)
        if chain
    ]
    if config.num_workers == 1:
        return {task: stages.run_chain(ctx, task[0], list(task[1])) for task in tasks}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    base_path = os.path.join(config.output_dir, "stages", "base.pt")
    torch.save(stages.weights_without_head(ctx.base), base_path)
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
    with ProcessPoolExecutor(max_workers=config.num_workers, mp_context=context) as pool:
        futures = {
            task: pool.submit(stages.run_chain_in_worker, config, base_path, start, task[0], list(task[1]))
            for task in tasks
        }
        return {task: future.result() for task, future in futures.items()}


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

    from . import ablation_report as report
    from . import ablation_stages as stages

    start = time.time()
    progress = stages.Progress(start)
    wall, cpu, load_start = time.perf_counter(), _cpu_seconds(), os.getloadavg()
    torch.manual_seed(config.model_seed)
    torch.set_flush_denormal(True)  # tiny weights trained at a high learning rate drift into slow denormals
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    os.makedirs(os.path.join(config.output_dir, "stages"), exist_ok=True)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the stages' dataset and bootstrap writes; progress is reported per stage
    try:
        base, processor, vocab, base_record = stages.train_base_model(config, progress)
        ctx = stages.make_context(config, base, processor, vocab, progress)
        arms = list(config.arms)
        notes = ["The untrained arm is greedy and untrained: it is evaluated once, the same for every seed."]
        runs: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
        samples: dict[str, dict] = {}
        if "untrained" in arms:
            evaluation = stages.evaluate_arm(ctx, base, "untrained")
            samples["untrained"] = {
                "sequences": [evaluation.sequences[i] for i in ctx.report_rows],
                "scores": [evaluation.scores[i] for i in ctx.report_rows],
            }
            for seed in config.seeds:
                runs["untrained"][seed] = {"metrics": evaluation.metrics, "stages": []}
        zero_rows: list[dict] = []
        chains = _run_chains(config, ctx, arms, start)
        for seed in config.seeds:  # in seed order, whatever order the chains finished in
            for (chain_seed, _), result in chains.items():
                if chain_seed != seed:
                    continue
                zero_rows = zero_rows or result["zero_rows"]
                for arm in (arm for arm in result if arm in runs):
                    runs[arm][seed] = {"metrics": result[arm]["metrics"], "stages": result[arm]["stages"]}
                    samples.setdefault(arm, result[arm])
        runs = {arm: dict(sorted(by_seed.items())) for arm, by_seed in runs.items()}
        table = report.aggregate(runs)
        comparisons = report.compare(runs, report.CLAIMS)
        secondary = report.compare(runs, report.SECONDARY)
        tables = report.format_tables(table)
        claims, others = report.format_comparisons(comparisons), report.format_comparisons(secondary)
        timing = {
            "wall_seconds": round(time.perf_counter() - wall, 1),
            "cpu_seconds": round(_cpu_seconds() - cpu, 1),
            "load_average_start": [round(v, 2) for v in load_start],
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
        }
        summary = {
            "config": {key: getattr(config, key) for key in config.__dataclass_fields__},
            "seeds": list(config.seeds),
            "arms": {arm: ARMS[arm] for arm in arms},
            "machine": {
                "description": f"{os.cpu_count()} CPU(s), {platform.machine()}, torch {torch.__version__}",
                "torch_threads": torch.get_num_threads(),
            },
            "num_test": len(ctx.test_rows),
            "max_new_tokens": ctx.max_new_tokens,
            "base_model": base_record,
            "runs": {arm: {str(seed): run for seed, run in by_seed.items()} for arm, by_seed in runs.items()},
            "table": table,
            "comparisons": comparisons,
            "secondary_comparisons": secondary,
            "notes": notes,
            "timing": timing,
        }
        trajectories = report.render_samples(ctx, samples, zero_rows)
        page = report.report_html(summary, tables, claims + "\n\n" + others, trajectories)
        with open(os.path.join(config.output_dir, "report.html"), "w", encoding="utf-8") as handle:
            handle.write(page)
        with open(os.path.join(config.output_dir, "results.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    finally:
        if bars:
            datasets.enable_progress_bars()
    print(report.summary_text(summary, tables, claims, others))
    progress(
        f"done: {timing['wall_seconds']:.0f}s wall, {timing['cpu_seconds']:.0f}s CPU (all processes; load average "
        f"{timing['load_average_start'][0]:.1f} at start, {timing['load_average_end'][0]:.1f} at the end); "
        f"{os.path.join(config.output_dir, 'results.json')}, {os.path.join(config.output_dir, 'report.html')}"
    )
    return summary


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the worker processes)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
