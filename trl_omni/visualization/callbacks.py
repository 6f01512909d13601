"""[`RenderedTrajectoriesCallback`]: renders submitted completions at logging steps during training."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback

from ..models.image_vocabulary import ImageVocabulary
from .decoders import FalseColorDecoder
from .render import _rows_of, render_trajectories
from .trackers import TrajectoryLogger, TrajectoryLogReport, check_log_budget


class RenderedTrajectoriesCallback(TrainerCallback):
    """Logs a few rendered trajectories at each logging step of a `transformers.Trainer` (TRL trainers included).

    Hook for trainers: call [`submit`] with completion ids whenever completions exist (e.g. after generation in a
    GRPO-style trainer, or after evaluation generation); it only stores ids (cheap). At the next `on_log` the callback
    renders at most `max_per_step` of the latest submissions on the main process, logs them with a
    [`TrajectoryLogger`], and clears the buffer. Find the registered instance with [`RenderedTrajectoriesCallback.find`]:

    ```python
    callback = RenderedTrajectoriesCallback.find(self)  # inside a trainer method; None when not registered
    if callback is not None:
        callback.submit(completion_ids, metadata=[{"reward": r} for r in rewards])
    ```

    Trackers default to the trainer's `report_to` (tensorboard / wandb / trackio); with none of those, PNG and HTML
    files are written under `<output_dir>/rendered_trajectories/step_<N>/`.

    Args:
        image_vocabulary: The model's image vocabulary; by default read from the trainer's model at first use.
        processing_class: Processor or tokenizer for text; by default the trainer's `processing_class`.
        decoder: Object with `decode(codes) -> list[PIL.Image]`; by default [`FalseColorDecoder`].
        max_per_step: Most trajectories logged per logging step.
        max_bytes_per_step: Byte budget per logging step.
        max_bytes_per_item: Byte budget per PNG strip.
        output_dir: Directory for files (default `<args.output_dir>/rendered_trajectories`).
        trackers: Explicit tracker names (see [`TrajectoryLogger`]); default from `args.report_to`.
        png_width: Width of the PNG strips.

    Example:
        ```python
        >>> trainer = PeRPOTrainer(model, args=args, train_dataset=dataset, processing_class=processor)
        >>> trainer.add_callback(RenderedTrajectoriesCallback(max_per_step=4))
        ```
    """

    def __init__(
        self,
        image_vocabulary: ImageVocabulary | None = None,
        processing_class: Any | None = None,
        decoder: Any | None = None,
        max_per_step: int = 4,
        max_bytes_per_step: int = 4 * 2**20,
        max_bytes_per_item: int = 2**20,
        output_dir: str | os.PathLike | None = None,
        trackers: Sequence[str] | None = None,
        png_width: int = 512,
    ):
        self.image_vocabulary = image_vocabulary
        self.processing_class = processing_class
        self.decoder = decoder
        self.output_dir = output_dir
        self.trackers = None if trackers is None else list(trackers)
        # The logger is built at the first log (it needs the trainer's output_dir and report_to); its budget is checked
        # now, so a bad value fails where the callback is made rather than steps into training.
        self.log_budget = check_log_budget(max_per_step, max_bytes_per_step, max_bytes_per_item, png_width)
        # (completion ids, prompt ids or None, title, metadata)
        self._pending: deque[tuple[list[int], list[int] | None, str | None, dict[str, Any]]] = deque(
            maxlen=max(1, max_per_step)
        )
        self._logger: TrajectoryLogger | None = None
        self.last_report: TrajectoryLogReport | None = None

    @classmethod
    def find(cls, trainer: Any) -> RenderedTrajectoriesCallback | None:
        """The instance registered on `trainer` (via `callbacks=` or `add_callback`), or None."""
        handler = getattr(trainer, "callback_handler", None)
        for callback in getattr(handler, "callbacks", []):
            if isinstance(callback, cls):
                return callback
        return None

    def submit(
        self,
        completion_ids: Any,
        titles: Sequence[str | None] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
        attention_mask: Any | None = None,
        prompt_ids: Sequence[Sequence[int]] | None = None,
    ) -> None:
        """Hands completions to the callback; only the latest `max_per_step` are kept until the next log.

        Args:
            completion_ids: `(B, L)` tensor or list of id lists (padding removed, as TRL's reward functions get them),
                or full sequences; prompt text and images render too when included.
            titles: Optional title per completion (e.g. the prompt).
            metadata: Optional dict per completion (e.g. `{"reward": 0.8}`), shown with the trajectory.
            attention_mask: Optional mask for a padded tensor of ids (0 = padding, dropped).
            prompt_ids: Optional prompt of each completion (padding removed): its images (the problem image) are
                shown with the completion (see [`render_trajectories`]).
        """
        rows = _rows_of(completion_ids, attention_mask)
        for i, row in enumerate(rows):
            title = None if titles is None else titles[i]
            facts = {} if metadata is None else dict(metadata[i])
            prompt = None if prompt_ids is None else [int(token) for token in prompt_ids[i]]
            self._pending.append((row, prompt, title, facts))

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def _get_logger(self, args: Any) -> TrajectoryLogger:
        if self._logger is None:
            output_dir = self.output_dir or os.path.join(args.output_dir, "rendered_trajectories")
            trackers = self.trackers
            if trackers is None:
                report_to = getattr(args, "report_to", None) or []
                report_to = [report_to] if isinstance(report_to, str) else list(report_to)
                if "all" in report_to:
                    report_to = ["tensorboard", "wandb", "trackio"]
                trackers = [t for t in report_to if t in ("tensorboard", "wandb", "trackio")]
            tensorboard_dir = os.environ.get("TENSORBOARD_LOGGING_DIR") or os.path.join(
                args.output_dir, "runs", "rendered_trajectories"
            )
            self._logger = TrajectoryLogger(
                output_dir=output_dir,
                trackers=trackers,
                tensorboard_dir=tensorboard_dir,
                **self.log_budget,
            )
        return self._logger

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not self._pending:
            return
        pending = list(self._pending)
        self._pending.clear()
        if not state.is_world_process_zero:
            return
        processing_class = self.processing_class or kwargs.get("processing_class")
        if self.image_vocabulary is None:
            model = kwargs.get("model")
            if model is None:
                raise ValueError("RenderedTrajectoriesCallback needs `image_vocabulary=` or a trainer model.")
            self.image_vocabulary = ImageVocabulary.from_model(model, processing_class)
        if self.decoder is None:
            self.decoder = FalseColorDecoder(self.image_vocabulary)
        with_prompts = any(prompt is not None for _, prompt, _, _ in pending)
        rendered = render_trajectories(
            [row for row, _, _, _ in pending],
            processing_class,
            self.image_vocabulary,
            self.decoder,
            prompt_ids=[prompt or [] for _, prompt, _, _ in pending] if with_prompts else None,
            titles=[title for _, _, title, _ in pending],
            metadata=[{"step": state.global_step, **facts} for _, _, _, facts in pending],
        )
        self.last_report = self._get_logger(args).log(rendered, step=state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._logger is not None:
            self._logger.close()
