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


def accuracy_table(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy overall, per task group and per source from prediction records (`score` None = unscored).

    Example:
        ```python
        >>> accuracy_table([{"source": "chartqa", "group": "structured_image", "score": 1.0}])["overall"]
        {'accuracy': 1.0, 'num_rows': 1, 'num_scored': 1, 'mean_images': 0.0}
        ```
    """

    def summarize(rows: list) -> dict[str, Any]:
        scores = [row["score"] for row in rows if row.get("score") is not None]
        return {
            "accuracy": sum(scores) / len(scores) if scores else None,
            "num_rows": len(rows),
            "num_scored": len(scores),
            "mean_images": sum(row.get("num_images", 0) for row in rows) / len(rows) if rows else 0.0,
        }

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


def format_table(metrics: Mapping[str, Any]) -> str:
    """The metrics of [`accuracy_table`] as a markdown table."""
    lines = ["| split | name | accuracy | scored / rows | images / row |", "|---|---|---|---|---|"]

    def line(kind: str, name: str, entry: Mapping[str, Any]) -> str:
        accuracy = "n/a" if entry["accuracy"] is None else f"{100 * entry['accuracy']:.1f}%"
        return f"| {kind} | {name} | {accuracy} | {entry['num_scored']} / {entry['num_rows']} | {entry['mean_images']:.2f} |"

    lines += [line("group", name, entry) for name, entry in metrics["groups"].items()]
    lines += [line("source", name, entry) for name, entry in metrics["sources"].items()]
    lines.append(line("overall", "all", metrics["overall"]))
    return "\n".join(lines)
