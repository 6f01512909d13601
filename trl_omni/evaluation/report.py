"""`report.html`: the accuracy table and rendered trajectories of the predictions."""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import EvalConfig


def write_report(
    records: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    table: str,
    processor: Any,
    vocab: Any,
    decoder: Any,
    path: str | os.PathLike,
    config: EvalConfig,
) -> Path:
    """Writes `report.html`: the accuracy table and up to `config.report_max_rows` rendered trajectories, each with
    its question (without the template's text) and its prompt's images next to the drawn ones."""
    from ..visualization import render_html_page, render_trajectories

    shown = list(records)[: config.report_max_rows]
    trajectories = []
    if shown:
        trajectories = render_trajectories(
            [record["completion_ids"] for record in shown],
            processor,
            vocab,
            decoder,
            # Records written before prompts were stored have no `prompt_ids`: no prompt images for those.
            prompt_ids=[record.get("prompt_ids") or [] for record in shown],
            titles=[f"#{record['index']} {record['id']} ({record['source']}, {record['group']})" for record in shown],
            metadata=[
                {
                    "question": record["question"] if "question" in record else record["prompt"][-300:],
                    "gold": record["gold"],
                    "extracted answer": record["extracted_answer"],
                    "score": record["score"],
                }
                for record in shown
            ],
        )
    page = render_html_page(trajectories, title=f"trl-omni evaluation: {config.output_dir}")
    summary = [f"<h1>Evaluation ({metrics['overall']['num_rows']} rows)</h1>", _table_html(metrics)]
    if len(records) > len(shown):
        summary.append(f"<p>Showing the first {len(shown)} of {len(records)} trajectories.</p>")
    page = page.replace("<body>\n", "<body>\n" + "\n".join(summary) + "\n", 1)
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)


def _table_html(metrics: Mapping[str, Any]) -> str:
    rows = [("group", name, entry) for name, entry in metrics["groups"].items()]
    rows += [("source", name, entry) for name, entry in metrics["sources"].items()]
    rows.append(("overall", "all", metrics["overall"]))
    cells = []
    for kind, name, entry in rows:
        accuracy = "n/a" if entry["accuracy"] is None else f"{100 * entry['accuracy']:.1f}%"
        cells.append(
            f'<tr class="{kind}"><td>{kind}</td><td>{html.escape(str(name))}</td><td>{accuracy}</td>'
            f"<td>{entry['num_scored']}</td><td>{entry['num_rows']}</td><td>{entry['mean_images']:.2f}</td></tr>"
        )
    return (
        '<table id="accuracy"><thead><tr><th>split</th><th>name</th><th>accuracy</th><th>scored</th><th>rows</th>'
        "<th>images / row</th></tr></thead><tbody>\n" + "\n".join(cells) + "\n</tbody></table>"
    )
