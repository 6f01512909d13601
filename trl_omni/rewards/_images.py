"""The images a batch of completions drew, as one tensor: shared by the rewards that score drawings."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


AGGREGATIONS = ("min", "mean", "max", "median")


def segment_reduce(values: torch.Tensor, index: torch.Tensor, num_rows: int, how: str) -> torch.Tensor:
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


@dataclass
class CompletionImages:
    """Every complete image of a batch of completions.

    Attributes:
        codes: `(M, H, W)` codes of the `M` complete images, ordered by completion, then position.
        rows: `(M,)` completion index of each image.
        incomplete: Number of incomplete segments (ignored by the rewards).
    """

    codes: torch.Tensor
    rows: torch.Tensor
    incomplete: int

    @property
    def complete(self) -> int:
        return int(self.rows.numel())


def pack_completion_ids(completion_ids: Any, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(B, L)` ids and mask from TRL's list of id lists (or a tensor, returned as is with no mask)."""
    if isinstance(completion_ids, torch.Tensor):
        return completion_ids.to(device), None
    rows = [r.tolist() if isinstance(r, torch.Tensor) else r for r in completion_ids]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    length = int(lengths.max()) if len(rows) else 0
    # One array from the concatenated rows, scattered under the mask: building tensors from Python int lists row by
    # row (or with torch.tensor) costs several times the whole scoring.
    mask = torch.arange(length)[None, :] < lengths[:, None]
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    ids[mask] = torch.from_numpy(flat)
    return ids.to(device), mask.to(device)


def completion_images(
    image_vocabulary: Any,
    completion_ids: Any,
    device: torch.device | str,
    image_segments: Sequence[Sequence[Any]] | None = None,
    attention_mask: torch.Tensor | None = None,
) -> CompletionImages:
    """The complete images of a batch, from the core's parse of `completion_ids`
    ([`~trl_omni.ImageVocabulary.parse_completions`]: cached per batch, so every reward, metric and rendering of a
    step shares one parse; an image a prompt opened with BOI counts once the completion finishes it).

    `image_segments` (what `PeRPOTrainer` passes rewards) is accepted for compatibility and not needed: it holds the
    same segments.
    """
    if isinstance(completion_ids, torch.Tensor) or attention_mask is not None:
        ids, mask = pack_completion_ids(completion_ids, device)
        if attention_mask is not None:
            mask = attention_mask.to(ids.device)
        segments = image_vocabulary.parse_segments(ids, attention_mask=mask, continue_open_image=True)
    else:
        segments = image_vocabulary.parse_completions(completion_ids)
    rows = segments.complete_batch_index.to(device)
    return CompletionImages(segments.complete_codes.to(device), rows, int((~segments.complete).sum()))
