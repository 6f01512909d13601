"""`SkipReport`: rows left out of a run (skip policies, length drops), counted by stage and reported at the end."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback


logger = logging.getLogger(__name__)
_MAX_ROWS = 20


@dataclass
class SkipEntry:
    """Rows left out at one stage, for one reason.

    Attributes:
        stage: Where they were left out (e.g. `"convert_zebra_cot"`, `"pretokenize_images"`, `"PeSFT train rows"`).
        skipped: How many rows.
        total: Rows the stage saw (None when unknown, e.g. a streamed dataset).
        reason: Why (the policy and the kind of problem).
        examples: The first few errors, as their messages.
        rows: The first rows left out (indices or ids).
    """

    stage: str
    skipped: int
    total: int | None
    reason: str
    examples: list[str] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)

    def line(self) -> str:
        of = f" of {self.total}" if self.total is not None else ""
        rows = f": rows {self.rows}{' ...' if self.skipped > len(self.rows) else ''}" if self.rows else ""
        first = f" First: {self.examples[0]}" if self.examples else ""
        return f"{self.stage}: skipped {self.skipped}{of} rows ({self.reason}){rows}.{first}"


@dataclass
class SkipReport:
    """Rows left out of a run, by stage. Every stage that skips under a documented policy (`on_error="skip"`,
    `length_policy="drop"`) logs a warning when it skips and adds an entry here; `summary()` is printed at the end
    of the run (the `trl-omni` commands do, `PeSFTTrainer` does at the end of training).

    Example:
        ```python
        >>> report = SkipReport()
        >>> train = convert_zebra_cot(rows, on_error="skip", skip_report=report)
        >>> print(report.summary())
        ```
    """

    entries: list[SkipEntry] = field(default_factory=list)

    def add(
        self,
        stage: str,
        skipped: int,
        total: int | None,
        reason: str,
        examples: Sequence[str] = (),
        rows: Sequence[Any] = (),
        log: bool = True,
    ) -> None:
        """Records `skipped` rows left out at `stage` (nothing when 0) and logs one warning about them.

        Args:
            stage: Where the rows were left out.
            skipped: How many.
            total: Rows the stage saw (None when unknown).
            reason: The policy / kind of problem.
            examples: Error messages (the first three are kept).
            rows: Indices or ids of the rows left out (the first twenty are kept).
            log: Log the warning (False when the caller already did).
        """
        if skipped <= 0:
            return
        entry = SkipEntry(
            stage, int(skipped), total, reason, [str(e) for e in list(examples)[:3]], list(rows)[:_MAX_ROWS]
        )
        self.entries.append(entry)
        if log:
            logger.warning("%s", entry.line())

    def merge(self, other: SkipReport | None) -> SkipReport:
        """Appends the entries of `other` (not logged again)."""
        if other is not None and other is not self:
            self.entries.extend(other.entries)
        return self

    @property
    def total_skipped(self) -> int:
        return sum(entry.skipped for entry in self.entries)

    def summary(self) -> str:
        """One line per stage, or a line saying that no row was left out."""
        if not self.entries:
            return "Rows left out: none."
        lines = [f"Rows left out: {self.total_skipped}."] + [f"  - {entry.line()}" for entry in self.entries]
        return "\n".join(lines)

    def to_dict(self) -> list[dict[str, Any]]:
        """The entries as plain dicts (for a run manifest / JSON)."""
        return [
            {
                "stage": e.stage,
                "skipped": e.skipped,
                "total": e.total,
                "reason": e.reason,
                "rows": e.rows,
                "examples": e.examples,
            }
            for e in self.entries
        ]


class SkipReportCallback(TrainerCallback):
    """Logs a [`SkipReport`] at the end of training (main process), with the collator's length drops.

    Args:
        report: The run's [`SkipReport`] (stages before training add to it; so may the trainer).
        collator: The data collator; its `stats["dropped"]` / `stats["truncated"]` (an
            [`InterleavedDataCollator`]'s counters, per process) are added to the summary.
    """

    def __init__(self, report: SkipReport, collator: Any = None):
        self.report = report
        self.collator = collator

    def summary(self) -> SkipReport:
        """The report with the collator's counters added."""
        report = SkipReport(list(self.report.entries))
        stats = getattr(self.collator, "stats", None)
        if isinstance(stats, dict) and stats.get("dropped"):
            policy = getattr(self.collator, "length_policy", "drop")
            report.add(
                "collator", stats["dropped"], stats.get("rows"), f"longer than max_length, length_policy={policy!r}",
                log=False,
            )  # fmt: skip
        return report

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        report = self.summary()
        stats = getattr(self.collator, "stats", None)
        truncated = stats.get("truncated", 0) if isinstance(stats, dict) else 0
        note = f"\n  ({truncated} rows were truncated at an image boundary by the collator.)" if truncated else ""
        if report.entries or truncated:
            logger.warning("%s%s", report.summary(), note)
        else:
            logger.info("%s", report.summary())
