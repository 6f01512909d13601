"""Perception reward: 2D total variation of the codebook embeddings of generated images (Omni-R1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


MAPPINGS = ("inverse", "exp")
AGGREGATIONS = ("min", "mean", "max", "median")


def total_variation_energy(embeddings: torch.Tensor) -> torch.Tensor:
    """2D total-variation energy of a batch of embedded code grids.

    `E = (TV_x + TV_y) / D` with `TV_x` the mean over the `H x (W-1)` horizontal neighbour pairs of
    `||Z[i, j+1] - Z[i, j]||^2` and `TV_y` likewise over the `(H-1) x W` vertical pairs. A grid with a single
    column (row) has `TV_x = 0` (`TV_y = 0`).

    Args:
        embeddings: `(M, H, W, D)` codebook embeddings of `M` images.

    Returns:
        `(M,)` energies.
    """
    m, h, w, d = embeddings.shape
    tv_x = (embeddings[:, :, 1:] - embeddings[:, :, :-1]).pow(2).sum(-1).mean((1, 2)) if w > 1 else None
    tv_y = (embeddings[:, 1:] - embeddings[:, :-1]).pow(2).sum(-1).mean((1, 2)) if h > 1 else None
    zero = embeddings.new_zeros(m)
    return ((tv_x if tv_x is not None else zero) + (tv_y if tv_y is not None else zero)) / d


def _segment_reduce(values: torch.Tensor, index: torch.Tensor, num_rows: int, how: str) -> torch.Tensor:
    """Per-row reduction of `values` grouped by `index` (rows without values get NaN)."""
    counts = torch.bincount(index, minlength=num_rows)
    if how in ("min", "max"):
        fill = float("inf") if how == "min" else float("-inf")
        out = values.new_full((num_rows,), fill).scatter_reduce(0, index, values, "amin" if how == "min" else "amax")
    elif how == "mean":
        out = values.new_zeros(num_rows).index_add(0, index, values) / counts.clamp(min=1)
    elif how == "median":
        # Sort by value, then stably by row: each row's values end up contiguous and ascending.
        order = torch.sort(values, stable=True).indices
        order = order[torch.sort(index[order], stable=True).indices]
        ordered = values[order]
        starts = torch.cumsum(counts, 0) - counts
        low = (starts + (counts - 1).clamp(min=0) // 2).clamp(max=max(len(values) - 1, 0))
        high = (starts + counts // 2).clamp(max=max(len(values) - 1, 0))
        out = (ordered[low] + ordered[high]) / 2 if len(values) else values.new_zeros(num_rows)
    else:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}.")
    return torch.where(counts > 0, out, torch.full_like(out, float("nan")))


class PerceptionReward:
    """Perception reward: smoothness of each generated image, measured on its codebook embeddings.

    For every complete image segment in a completion (BOI + exactly H*W image tokens + EOI, as parsed by
    [`~trl_omni.ImageVocabulary.parse_segments`]): `Z = codebook[codes]` of shape `(H, W, D)`,
    `E = (TV_x + TV_y) / D` ([`total_variation_energy`]), and the image scores `1 / (1 + E / tau)` (`"inverse"`)
    or `exp(-E / tau)` (`"exp"`). A completion's score aggregates its images' scores with `min` (the authors'
    default), `mean`, `max` or `median` (the mean of the two middle values for an even count). A completion without
    a complete image gets None. Incomplete segments are ignored; their count is reported through `log_metric`
    (`<name>/incomplete_images`) together with `<name>/complete_images`.

    All images of the batch are scored at once: one parse of the padded batch, one gather of codebook embeddings
    and one tensor expression for the TV (chunked only to bound memory), and segment reductions per completion. The
    codebook comes from `ImageVocabulary.codebook_on(device)`, cached per device.

    Args:
        image_vocabulary: The policy's [`~trl_omni.ImageVocabulary`].
        tau: Temperature of the mapping (3.0 in the paper).
        mapping: `"inverse"` or `"exp"`.
        aggregation: `"min"`, `"mean"`, `"max"` or `"median"`.
        device: Device to score on; None uses the device of `completion_ids` when it is a tensor, else the CPU.
        max_chunk_elements: Bound on the elements of one gathered `(chunk, H, W, D)` embedding tensor.
        name: Reward name (TRL logs `rewards/<name>/mean`).

    Example:
        ```python
        >>> reward = PerceptionReward(ImageVocabulary.from_model(model, processor), aggregation="min")
        >>> reward(prompts, completions, completion_ids=ids)  # inside TRL's GRPOTrainer, or directly
        [0.93, None, 0.71]
        ```
    """

    def __init__(
        self,
        image_vocabulary: Any,
        tau: float = 3.0,
        mapping: str = "inverse",
        aggregation: str = "min",
        device: torch.device | str | None = None,
        max_chunk_elements: int = 1 << 25,
        name: str = "perception_reward",
    ):
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}.")
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}.")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
        self.image_vocabulary = image_vocabulary
        self.tau = float(tau)
        self.mapping = mapping
        self.aggregation = aggregation
        self.device = None if device is None else torch.device(device)
        self.max_chunk_elements = int(max_chunk_elements)
        self.name = name
        self.__name__ = name  # TRL names rewards by `__name__`

    # ------------------------------------------------------------------------------------------------ scoring
    def image_scores(self, codes: torch.Tensor) -> torch.Tensor:
        """Scores `(M, H, W)` code grids: `(M,)` values in (0, 1]."""
        vocab = self.image_vocabulary
        codebook = vocab.codebook_on(codes.device, torch.float32)
        m, h, w = codes.shape
        per_image = h * w * codebook.shape[1]
        chunk = max(1, self.max_chunk_elements // max(per_image, 1))
        energies = [total_variation_energy(codebook[codes[i : i + chunk]]) for i in range(0, m, chunk)] or [
            codebook.new_zeros(0)
        ]
        energy = torch.cat(energies)
        if self.mapping == "inverse":
            return 1.0 / (1.0 + energy / self.tau)
        return torch.exp(-energy / self.tau)

    def _to_batch(self, completion_ids: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(completion_ids, torch.Tensor):
            ids = completion_ids if self.device is None else completion_ids.to(self.device)
            return ids, None
        rows = [list(r) for r in completion_ids]
        length = max((len(r) for r in rows), default=0)
        device = self.device or torch.device("cpu")
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, row in enumerate(rows):
            if row:
                ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
                mask[i, : len(row)] = True
        return ids.to(device), mask.to(device)

    def score_tensor(
        self, completion_ids: Any, attention_mask: torch.Tensor | None = None, log_metric: Any | None = None
    ) -> torch.Tensor:
        """Per-completion scores as a `(B,)` float tensor, NaN where a completion has no complete image."""
        ids, mask = self._to_batch(completion_ids)
        if attention_mask is not None:
            mask = attention_mask.to(ids.device)
        segments = self.image_vocabulary.parse_segments(ids, attention_mask=mask)
        scores = self.image_scores(segments.complete_codes)
        if log_metric is not None:
            log_metric(f"{self.name}/incomplete_images", float((~segments.complete).sum()))
            log_metric(f"{self.name}/complete_images", float(segments.complete.sum()))
        return _segment_reduce(scores, segments.complete_batch_index, ids.shape[0], self.aggregation)

    def score(self, completion_ids: Any, log_metric: Any | None = None) -> list[float | None]:
        """Per-completion scores (None where a completion has no complete image).

        Args:
            completion_ids: A list of id lists (TRL's `completion_ids`) or a `(B, L)` tensor (no padding inside
                rows other than at positions that are not BOI/EOI/image tokens).
            log_metric: Optional TRL `log_metric` callable for the image counts.
        """
        values = self.score_tensor(completion_ids, log_metric=log_metric).tolist()
        return [None if v != v else float(v) for v in values]

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] | None = None,
        completion_ids: Sequence[Sequence[int]] | None = None,
        log_metric: Any | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        if completion_ids is None:
            raise ValueError(
                f"{self.name} needs `completion_ids` (the generated token ids); TRL's GRPOTrainer passes them. "
                "Call `.score(completion_ids)` when using it outside a trainer."
            )
        return self.score(completion_ids, log_metric=log_metric)

    def __repr__(self) -> str:
        return (
            f"PerceptionReward(tau={self.tau}, mapping={self.mapping!r}, aggregation={self.aggregation!r}, "
            f"grid={self.image_vocabulary.grid_size}, codebook_dim={self.image_vocabulary.codebook_dim})"
        )
