"""[`TrajectoryLogger`]: bounded logging of rendered trajectories to tensorboard, wandb, trackio and files."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .render import RenderedTrajectory, _png_bytes, render_html_page


logger = logging.getLogger(__name__)


SUPPORTED_TRACKERS = ("tensorboard", "wandb", "trackio", "files")


@dataclass
class TrajectoryLogReport:
    """What one [`TrajectoryLogger.log`] call did.

    Attributes:
        step: The training step logged.
        logged: Trajectories logged.
        skipped_for_count: Trajectories beyond `max_per_step`.
        skipped_for_size: Trajectories dropped because they would exceed the byte budget.
        downscaled: Trajectories whose PNG strip was shrunk to fit `max_bytes_per_item`.
        bytes: Bytes of PNG + HTML handed to the trackers.
        trackers: Trackers written to.
        files: Files written (with the `files` tracker).
    """

    step: int
    logged: int = 0
    skipped_for_count: int = 0
    skipped_for_size: int = 0
    downscaled: int = 0
    bytes: int = 0
    trackers: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def check_log_budget(
    max_per_step: int, max_bytes_per_step: int, max_bytes_per_item: int, png_width: int
) -> dict[str, int]:
    """The budget of a [`TrajectoryLogger`] as keyword arguments, checked (raises `ValueError` naming the bad value)."""
    if max_per_step < 0 or max_bytes_per_step <= 0 or max_bytes_per_item <= 0 or png_width <= 0:
        raise ValueError(
            f"max_per_step must be >= 0 and the byte budgets and png_width > 0; got max_per_step={max_per_step}, "
            f"max_bytes_per_step={max_bytes_per_step}, max_bytes_per_item={max_bytes_per_item}, png_width={png_width}."
        )
    return {
        "max_per_step": max_per_step,
        "max_bytes_per_step": max_bytes_per_step,
        "max_bytes_per_item": max_bytes_per_item,
        "png_width": png_width,
    }


class TrajectoryLogger:
    """Logs rendered trajectories to trackers, bounded in count and bytes per step.

    Each trajectory becomes a PNG strip (and, for `files` and `wandb`, an HTML page). At most `max_per_step`
    trajectories are logged per call; a strip larger than `max_bytes_per_item` is downscaled until it fits (or
    dropped); trajectories are dropped once the step's `max_bytes_per_step` budget would be exceeded. Every drop is
    counted in the returned [`TrajectoryLogReport`] and logged at INFO level.

    Trackers: `"tensorboard"` (`torch.utils.tensorboard.SummaryWriter`, images + text), `"wandb"` (`wandb.Image` +
    `wandb.Html`, only while a run is active), `"trackio"` (`trackio.Image`), `"files"` (`<output_dir>/step_<N>/`).
    A tracker that cannot be imported is skipped with one warning; when none is usable, files are written instead
    (if `output_dir` is set).

    Args:
        output_dir: Directory for the `files` tracker (and the fallback).
        trackers: Tracker names; default `("files",)`.
        max_per_step: Most trajectories logged per call.
        max_bytes_per_step: Byte budget (PNG + HTML) per call.
        max_bytes_per_item: Byte budget per trajectory's PNG strip.
        png_width: Width of the PNG strips.
        tag: Name under which trackers show the trajectories.
        tensorboard_dir: Log directory of the tensorboard writer (default `<output_dir>/tensorboard`).

    Example:
        ```python
        >>> trajectory_logger = TrajectoryLogger(output_dir="out/rendered", trackers=["tensorboard", "files"])
        >>> report = trajectory_logger.log(render_trajectories(completion_ids, processor, vocab), step=10)
        ```
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        trackers: Sequence[str] | None = None,
        max_per_step: int = 4,
        max_bytes_per_step: int = 4 * 2**20,
        max_bytes_per_item: int = 2**20,
        png_width: int = 512,
        tag: str = "rendered_trajectories",
        tensorboard_dir: str | os.PathLike | None = None,
    ):
        trackers = list(trackers) if trackers is not None else ["files"]
        unknown = [t for t in trackers if t not in SUPPORTED_TRACKERS]
        if unknown:
            raise ValueError(f"Unknown trackers {unknown}; supported: {list(SUPPORTED_TRACKERS)}.")
        check_log_budget(max_per_step, max_bytes_per_step, max_bytes_per_item, png_width)
        self.output_dir = None if output_dir is None else os.fspath(output_dir)
        self.max_per_step = max_per_step
        self.max_bytes_per_step = max_bytes_per_step
        self.max_bytes_per_item = max_bytes_per_item
        self.png_width = png_width
        self.tag = tag
        self.tensorboard_dir = tensorboard_dir
        self._writer = None
        self._warned: set[str] = set()
        self.trackers = [t for t in trackers if self._available(t)]
        if not self.trackers and self.output_dir is not None:
            self.trackers = ["files"]
        if "files" in self.trackers and self.output_dir is None:
            raise ValueError("The 'files' tracker needs output_dir.")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def _available(self, tracker: str) -> bool:
        if tracker == "files":
            return True
        try:
            if tracker == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            elif tracker == "wandb":
                import wandb  # noqa: F401
            else:
                import trackio  # noqa: F401
        except ImportError:  # torch.utils.tensorboard raises ImportError when tensorboard is missing
            self._warn_once(tracker, f"Rendered trajectories: {tracker} is not installed; not logging to it.")
            return False
        return True

    def _prepare(
        self, trajectory: RenderedTrajectory, report: TrajectoryLogReport
    ) -> tuple[Image.Image, bytes] | None:
        strip = trajectory.to_png(width=self.png_width)
        data = _png_bytes(strip)
        shrunk = False
        for _ in range(6):
            if len(data) <= self.max_bytes_per_item:
                break
            factor = max(0.1, min(0.9, (self.max_bytes_per_item / len(data)) ** 0.5))
            strip = strip.resize(
                (max(1, int(strip.width * factor)), max(1, int(strip.height * factor))), Image.LANCZOS
            )
            data = _png_bytes(strip)
            shrunk = True
        if len(data) > self.max_bytes_per_item:
            return None
        report.downscaled += int(shrunk)
        return strip, data

    def log(self, trajectories: Sequence[RenderedTrajectory], step: int) -> TrajectoryLogReport:
        """Logs up to `max_per_step` trajectories for `step`, within the byte budgets.

        Args:
            trajectories: Rendered trajectories (the first ones are logged first).
            step: Training step (tracker x-axis, file directory name).

        Returns:
            A [`TrajectoryLogReport`].
        """
        report = TrajectoryLogReport(step=step, trackers=list(self.trackers))
        chosen = list(trajectories[: self.max_per_step])
        report.skipped_for_count = max(0, len(trajectories) - len(chosen))
        accepted: list[tuple[RenderedTrajectory, Image.Image, bytes, str | None]] = []
        wants_html = "files" in self.trackers or "wandb" in self.trackers
        for trajectory in chosen:
            prepared = self._prepare(trajectory, report)
            if prepared is None:
                report.skipped_for_size += 1
                continue
            strip, data = prepared
            page = trajectory.to_html() if wants_html else None
            page_bytes = len(page.encode("utf-8")) if page is not None else 0
            if page is not None and page_bytes > self.max_bytes_per_item:
                page, page_bytes = None, 0  # the PNG still goes out; the page alone is too large
            cost = len(data) + page_bytes
            if report.bytes + cost > self.max_bytes_per_step:
                report.skipped_for_size += 1
                continue
            report.bytes += cost
            accepted.append((trajectory, strip, data, page))
        report.logged = len(accepted)
        if report.skipped_for_count or report.skipped_for_size:
            logger.info(
                "Rendered trajectories at step %d: logged %d, skipped %d (count limit) and %d (size limit).",
                step,
                report.logged,
                report.skipped_for_count,
                report.skipped_for_size,
            )
        if accepted:
            for tracker in self.trackers:
                getattr(self, f"_log_{tracker}")(accepted, step, report)
        return report

    # ------------------------------------------------------------------ trackers
    def _log_files(self, accepted: list, step: int, report: TrajectoryLogReport) -> None:
        directory = os.path.join(self.output_dir, f"step_{step:08d}")
        os.makedirs(directory, exist_ok=True)
        for i, (_, _, data, page) in enumerate(accepted):
            png_path = os.path.join(directory, f"trajectory_{i:02d}.png")
            with open(png_path, "wb") as f:
                f.write(data)
            report.files.append(png_path)
            if page is not None:
                html_path = os.path.join(directory, f"trajectory_{i:02d}.html")
                with open(html_path, "w", encoding="utf-8") as f:
                    f.write(page)
                report.files.append(html_path)

    def _log_tensorboard(self, accepted: list, step: int, report: TrajectoryLogReport) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = self.tensorboard_dir or os.path.join(self.output_dir or ".", "tensorboard")
            self._writer = SummaryWriter(log_dir=os.fspath(log_dir))
        for i, (trajectory, strip, _, _) in enumerate(accepted):
            self._writer.add_image(f"{self.tag}/{i}", np.asarray(strip), step, dataformats="HWC")
            self._writer.add_text(f"{self.tag}/{i}", trajectory.text, step)
        self._writer.flush()

    def _log_wandb(self, accepted: list, step: int, report: TrajectoryLogReport) -> None:
        import wandb

        if wandb.run is None:
            self._warn_once("wandb_run", "Rendered trajectories: no active wandb run; not logging to wandb.")
            return
        images = [
            wandb.Image(strip, caption=trajectory.title or f"trajectory {i}")
            for i, (trajectory, strip, _, _) in enumerate(accepted)
        ]
        payload = {self.tag: images}
        pages = [t for t, _, _, page in accepted if page is not None]
        if pages:
            payload[f"{self.tag}_html"] = wandb.Html(render_html_page(pages, title=f"step {step}"))
        wandb.log(payload)  # no explicit step: the Trainer's wandb callback owns the step counter

    def _log_trackio(self, accepted: list, step: int, report: TrajectoryLogReport) -> None:
        import trackio

        if not hasattr(trackio, "Image"):
            self._warn_once("trackio_image", "Rendered trajectories: this trackio version has no trackio.Image.")
            return
        images = [
            trackio.Image(strip, caption=trajectory.title or f"trajectory {i}")
            for i, (trajectory, strip, _, _) in enumerate(accepted)
        ]
        trackio.log({self.tag: images})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
