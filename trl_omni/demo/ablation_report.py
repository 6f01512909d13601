"""The ablation's numbers: mean +- standard deviation over seeds per arm and skill, the paired comparison of each
claim, the printed tables and `report.html`."""

from __future__ import annotations

import html
import statistics
from collections.abc import Mapping, Sequence
from typing import Any


METRICS = {
    "accuracy": "answer accuracy",
    "complete_image_rate": "complete-image rate",
    "drawing_accuracy": "correct-drawing rate",
}

# The paper's claims: `arm` against `baseline` on `metric` over the held-out `row` ("all", or "average": the mean
# over skills); `kind` "improves" (the arm should be better) or "matches" (at least as good).
CLAIMS: tuple[dict[str, str], ...] = (
    {"claim": "the perception loss stabilises drawing: PeSFT vs SFT, correct drawings", "arm": "pesft",
     "baseline": "sft", "metric": "drawing_accuracy", "row": "all", "kind": "improves"},
    {"claim": "PeRPO adds accuracy on top of PeSFT: PeSFT+PeRPO vs PeSFT, answer accuracy", "arm": "pesft_perpo",
     "baseline": "pesft", "metric": "accuracy", "row": "all", "kind": "improves"},
    {"claim": "Omni-R1-Zero matches or beats the supervised pipeline on average: Zero PeSFT+PeRPO vs PeSFT+PeRPO, "
     "answer accuracy averaged over skills", "arm": "zero_pesft_perpo", "baseline": "pesft_perpo",
     "metric": "accuracy", "row": "average", "kind": "matches"},
)  # fmt: skip
# Further comparisons shown next to the claims (not claims of the paper).
SECONDARY: tuple[dict[str, str], ...] = (
    {"claim": "the functional drawing reward adds accuracy on top of PeSFT", "arm": "pesft_perpo_ref",
     "baseline": "pesft", "metric": "accuracy", "row": "all", "kind": "improves"},
    {"claim": "the functional drawing reward improves drawings over the calibrated reward alone",
     "arm": "pesft_perpo_ref", "baseline": "pesft_perpo", "metric": "drawing_accuracy", "row": "all",
     "kind": "improves"},
    {"claim": "PeRPO (calibrated) keeps the drawings of PeSFT", "arm": "pesft_perpo", "baseline": "pesft",
     "metric": "drawing_accuracy", "row": "all", "kind": "matches"},
    {"claim": "Zero matches the supervised pipeline after PeSFT (answer accuracy averaged over skills)",
     "arm": "zero_pesft", "baseline": "pesft", "metric": "accuracy", "row": "average", "kind": "matches"},
    {"claim": "Zero draws as correctly as the supervised pipeline (after PeRPO)", "arm": "zero_pesft_perpo",
     "baseline": "pesft_perpo", "metric": "drawing_accuracy", "row": "all", "kind": "matches"},
)  # fmt: skip


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def seed_values(runs: Mapping[str, Mapping[Any, Any]], arm: str, row: str, metric: str) -> list[float]:
    """One value per seed (in seed order) of `metric` for `arm` on skill `row` (`"all"`, or `"average"`: the mean
    over the skills)."""
    values = []
    for run in runs[arm].values():
        metrics = run["metrics"]
        if row == "average":
            skills = [name for name in metrics if name != "all"]
            values.append(sum(metrics[name][metric] for name in skills) / len(skills))
        else:
            values.append(metrics[row][metric])
    return values


def aggregate(runs: Mapping[str, Mapping[Any, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """arm -> skill (and `all`) -> metric -> `{"mean", "std", "values"}` over seeds (sample standard deviation)."""
    table: dict = {}
    for arm, by_seed in runs.items():
        rows = list(next(iter(by_seed.values()))["metrics"])
        table[arm] = {
            row: {
                metric: {"mean": statistics.fmean(values), "std": _std(values), "values": values}
                for metric in METRICS
                for values in [seed_values(runs, arm, row, metric)]
            }
            for row in rows
        }
    return table


def _verdict(kind: str, difference: float, spread: float) -> str:
    exceeds = abs(difference) > spread
    if kind == "improves":
        if not exceeds:
            return "not shown: the difference is within the seed spread"
        return "supported" if difference > 0 else "contradicted: the arm is worse beyond the seed spread"
    if not exceeds:
        return "consistent: the difference is within the seed spread"
    return (
        "supported: better beyond the seed spread" if difference > 0 else "contradicted: worse beyond the seed spread"
    )


def compare(runs: Mapping[str, Mapping[Any, Any]], claims: Sequence[Mapping[str, str]] = CLAIMS) -> list[dict]:
    """The paired comparison of each claim whose two arms ran: per-seed differences (arm - baseline, same seed),
    their mean, the seed spread (the larger standard deviation of the two arms over seeds) and the verdict.

    "Exceeds the seed spread" means `|mean difference| > spread`. With three seeds this is a rough screen, not a
    significance test."""
    out = []
    for claim in claims:
        arm, baseline = claim["arm"], claim["baseline"]
        if arm not in runs or baseline not in runs:
            out.append({**claim, "skipped": f"arm {arm if arm not in runs else baseline!r} did not run"})
            continue
        row = claim["row"]
        ours, theirs = seed_values(runs, arm, row, claim["metric"]), seed_values(runs, baseline, row, claim["metric"])
        differences = [a - b for a, b in zip(ours, theirs)]
        difference = statistics.fmean(differences)
        spread = max(_std(ours), _std(theirs))
        out.append(
            {
                **claim,
                "arm_mean": statistics.fmean(ours),
                "baseline_mean": statistics.fmean(theirs),
                "differences": differences,
                "difference": difference,
                "spread": spread,
                "exceeds_spread": abs(difference) > spread,
                "verdict": _verdict(claim["kind"], difference, spread),
            }
        )
    return out


def format_tables(table: Mapping[str, Any]) -> str:
    """One markdown table per metric: a line per arm, a column per skill and `all`, cells `mean ± std` in %."""
    arms = list(table)
    rows = list(next(iter(table.values())))
    blocks = []
    for metric, title in METRICS.items():
        lines = [f"{title} (%, mean ± std over seeds)", "", "| arm | " + " | ".join(rows) + " |"]
        lines.append("|---|" + "---|" * len(rows))
        for arm in arms:
            cells = [f"{100 * table[arm][row][metric]['mean']:.1f} ± {100 * table[arm][row][metric]['std']:.1f}"
                     for row in rows]  # fmt: skip
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def format_comparisons(comparisons: Sequence[Mapping[str, Any]]) -> str:
    """The comparisons as a markdown table (points of %, per-seed differences in seed order)."""
    lines = [
        "| claim | arm - baseline (per seed) | mean difference | seed spread | exceeds? | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for item in comparisons:
        if "skipped" in item:
            lines.append(f"| {item['claim']} | - | - | - | - | skipped: {item['skipped']} |")
            continue
        per_seed = ", ".join(f"{100 * d:+.1f}" for d in item["differences"])
        lines.append(
            f"| {item['claim']} | {per_seed} | {100 * item['difference']:+.1f} | {100 * item['spread']:.1f} | "
            f"{'yes' if item['exceeds_spread'] else 'no'} | {item['verdict']} |"
        )
    return "\n".join(lines)


def summary_text(summary: Mapping[str, Any], tables: str, claims: str, others: str) -> str:
    """What the run prints at the end: the tables, the claims, the other comparisons and the notes."""
    rows_per_skill = summary["num_test"] / (len(next(iter(summary["table"].values()))) - 1)
    lines = [
        f"\nUni-Skills held-out split: {summary['num_test']} rows, {len(summary['seeds'])} seed(s); one row of a skill "
        f"is {100 / rows_per_skill:.1f} points, one row overall {100 / summary['num_test']:.1f}.\n",
        tables,
        "\nClaims (arm - baseline, paired by seed; spread = the larger std over seeds of the two arms)\n",
        claims,
        "\nOther comparisons\n",
        others,
        "",
        *(f"Note: {note}" for note in summary["notes"]),
    ]
    return "\n".join(lines)


def _markdown_table_html(table: str) -> str:
    """A markdown table (as written above) as an HTML table."""
    rows = [line.strip().strip("|").split("|") for line in table.strip().splitlines() if line.startswith("|")]
    head, body = rows[0], [row for row in rows[2:]]
    cells = "".join(f"<th>{html.escape(cell.strip())}</th>" for cell in head)
    out = [f"<table border='1' cellpadding='4'><tr>{cells}</tr>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td>{html.escape(cell.strip())}</td>" for cell in row) + "</tr>")
    return "\n".join(out) + "</table>"


def report_html(summary: Mapping[str, Any], tables: str, comparisons: str, trajectories: Sequence[Any]) -> str:
    """`report.html`: the run, the per-skill tables, the comparisons, the notes and rendered trajectories."""
    from ..visualization import render_html_page

    parts = ["<h1>trl-omni ablation: Uni-Skills (held-out split)</h1>"]
    timing = summary["timing"]
    parts.append(
        f"<p>{len(summary['seeds'])} seeds ({', '.join(map(str, summary['seeds']))}); per stage "
        f"{summary['config']['sft_steps']} SFT-type steps and {summary['config']['rl_steps']} PeRPO steps; "
        f"{summary['num_test']} held-out rows. Wall {timing['wall_seconds']:.0f} s, CPU "
        f"{timing['cpu_seconds']:.0f} s on {html.escape(summary['machine']['description'])}.</p>"
    )
    for block in tables.split("\n\n"):
        if block.startswith("|"):
            parts.append(_markdown_table_html(block))
        elif block.strip():
            parts.append(f"<h2>{html.escape(block.strip())}</h2>")
    parts += ["<h2>Claims (paired by seed)</h2>", _markdown_table_html(comparisons)]
    for note in summary["notes"]:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    parts.append("<h2>Trajectories (first seed; held-out rows, then bootstrapped training traces)</h2>")
    page = render_html_page(trajectories, title="trl-omni ablation")
    return page.replace("<body>\n", "<body>\n" + "\n".join(parts) + "\n", 1)


def render_samples(ctx: Any, samples: Mapping[str, Mapping[str, list]], zero_rows: list[dict]) -> list:
    """Rendered trajectories for the report: the report rows of each arm (`samples[arm]`: their `sequences` and
    `scores`, first seed), then a few bootstrapped Zero training traces."""
    from ..collators import InterleavedDataCollator
    from ..visualization import render_trajectories
    from .uniskills import demo_decoder

    decoder = demo_decoder(ctx.vocab.grid_size)
    trajectories = []
    for arm, sample in samples.items():
        rows = [ctx.test_rows[i] for i in ctx.report_rows]
        trajectories += render_trajectories(
            sample["sequences"],
            ctx.processor,
            ctx.vocab,
            decoder,
            titles=[f"{arm}: {row['id']}" for row in rows],
            metadata=[{"answer": row["answer"], **scores} for row, scores in zip(rows, sample["scores"])],
        )
    if zero_rows:
        shown = zero_rows[: len(ctx.report_rows)]
        batch = InterleavedDataCollator(ctx.processor, ctx.vocab, template="plain")(shown)
        trajectories += render_trajectories(
            batch["input_ids"],
            ctx.processor,
            ctx.vocab,
            decoder,
            attention_mask=batch["attention_mask"],
            titles=[f"Zero training trace (bootstrapped by the base model): {row['id']}" for row in shown],
        )
    return trajectories
