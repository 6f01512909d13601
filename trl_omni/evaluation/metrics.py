"""Scoring tables: task groups of rows and accuracy overall, per task group and per source."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .config import OTHER_GROUP


def _normalize(name: Any) -> str:
    return re.sub(r"[^0-9a-z*]", "", str(name).lower())


def task_group_of(values: Sequence[Any], task_groups: Mapping[str, Sequence[str]]) -> str:
    """The task group of a row from its source / dataset values (first match wins), or `"other"`."""
    lookup = {_normalize(name): group for group, names in task_groups.items() for name in names}
    lookup.update({_normalize(group): group for group in task_groups})
    for value in values:
        if value is not None and _normalize(value) in lookup:
            return lookup[_normalize(value)]
    return OTHER_GROUP


# The columns a drawing check adds (records with a `drawing_score` key, see `evaluate(drawing_check=...)`).
DRAWING_COLUMNS = ("complete_image_rate", "drawing_accuracy")


def accuracy_table(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy overall, per task group and per source from prediction records (`score` None = unscored).

    When the records carry a `drawing_score` (the evaluation ran a drawing check), each entry also holds
    `complete_image_rate` (rows with at least one complete image), `drawing_accuracy` (mean drawing score of the
    rows the check scored; None when it scored none) and `num_drawing_scored`.

    Example:
        ```python
        >>> accuracy_table([{"source": "chartqa", "group": "structured_image", "score": 1.0}])["overall"]
        {'accuracy': 1.0, 'num_rows': 1, 'num_scored': 1, 'mean_images': 0.0}
        ```
    """
    with_drawings = any("drawing_score" in row for row in records)

    def summarize(rows: list) -> dict[str, Any]:
        scores = [row["score"] for row in rows if row.get("score") is not None]
        entry = {
            "accuracy": sum(scores) / len(scores) if scores else None,
            "num_rows": len(rows),
            "num_scored": len(scores),
            "mean_images": sum(row.get("num_images", 0) for row in rows) / len(rows) if rows else 0.0,
        }
        if with_drawings:
            drawn = [row["drawing_score"] for row in rows if row.get("drawing_score") is not None]
            entry["complete_image_rate"] = (
                sum(row.get("num_images", 0) > 0 for row in rows) / len(rows) if rows else 0.0
            )
            entry["drawing_accuracy"] = sum(drawn) / len(drawn) if drawn else None
            entry["num_drawing_scored"] = len(drawn)
        return entry

    by_group: dict[str, list] = {}
    by_source: dict[str, list] = {}
    for row in records:
        by_group.setdefault(row["group"], []).append(row)
        by_source.setdefault(str(row["source"]), []).append(row)
    return {
        "overall": summarize(list(records)),
        "groups": {name: summarize(rows) for name, rows in sorted(by_group.items())},
        "sources": {name: summarize(rows) for name, rows in sorted(by_source.items())},
    }


def percent(value: float | None) -> str:
    """`0.125` -> `"12.5%"`; None (nothing scored) -> `"n/a"`."""
    return "n/a" if value is None else f"{100 * value:.1f}%"


def format_table(metrics: Mapping[str, Any]) -> str:
    """The metrics of [`accuracy_table`] as a markdown table (with the drawing columns when they were measured)."""
    drawing = all(column in metrics["overall"] for column in DRAWING_COLUMNS)
    extra_header = " complete images | correct drawings |" if drawing else ""
    lines = [
        "| split | name | accuracy | scored / rows | images / row |" + extra_header,
        "|---|---|---|---|---|" + ("---|---|" if drawing else ""),
    ]

    def line(kind: str, name: str, entry: Mapping[str, Any]) -> str:
        cells = f"| {kind} | {name} | {percent(entry['accuracy'])} | {entry['num_scored']} / {entry['num_rows']} |"
        cells += f" {entry['mean_images']:.2f} |"
        if drawing:
            cells += f" {percent(entry['complete_image_rate'])} | {percent(entry['drawing_accuracy'])} |"
        return cells

    lines += [line("group", name, entry) for name, entry in metrics["groups"].items()]
    lines += [line("source", name, entry) for name, entry in metrics["sources"].items()]
    lines.append(line("overall", "all", metrics["overall"]))
    return "\n".join(lines)


def per_group(metrics: Mapping[str, Any], overall: str = "all") -> dict[str, dict[str, Any]]:
    """The task-group entries of [`accuracy_table`] followed by the overall one (named `overall`)."""
    return {**metrics["groups"], overall: metrics["overall"]}


def comparison_table(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    columns: Sequence[str] = ("accuracy", *DRAWING_COLUMNS),
) -> str:
    """Several evaluations side by side, as a markdown table: one line per row name (task group, `all`), one
    column per evaluation, each cell the `columns` of that entry in % joined by ` / ` (`n/a` where unmeasured).

    Args:
        results: Evaluation name (e.g. the training stage) -> row name -> entry (e.g. [`per_group`] of an
            evaluation's metrics).
        columns: Entry keys shown in each cell; those missing from every entry are left out.

    Example:
        ```python
        >>> print(comparison_table({"base": per_group(base.metrics), "tuned": per_group(tuned.metrics)}))
        | group | base (accuracy / complete images / correct drawings) | tuned (...) |
        ```
    """
    names = list(results)
    entries = [entry for table in results.values() for entry in table.values()]
    columns = [column for column in columns if any(column in entry for entry in entries)]
    labels = {"accuracy": "accuracy", "complete_image_rate": "complete images", "drawing_accuracy": "correct drawings"}
    legend = " / ".join(labels.get(column, column) for column in columns)
    rows = list(dict.fromkeys(row for table in results.values() for row in table))
    lines = ["| group | " + " | ".join(f"{name} ({legend})" for name in names) + " |"]
    lines.append("|---|" + "---|" * len(names))
    for row in rows:
        cells = []
        for name in names:
            entry = results[name].get(row)
            cells.append("-" if entry is None else " / ".join(percent(entry.get(column)) for column in columns))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
