"""Image segments of token sequences: the vectorised parse behind [`ImageVocabulary.parse_segments`] and
[`ImageVocabulary.parse_completions`], and the objects it returns."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..utils.type_checks import is_integer_number


if TYPE_CHECKING:
    from .image_vocabulary import ImageVocabulary


def check_integer_tensor(values: torch.Tensor, what: str) -> torch.Tensor:
    """`values` unchanged when its dtype is an integer one; a float or bool tensor is refused (never cast)."""
    if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
        raise TypeError(
            f"{what} must be integers, got {values.dtype} (a float or bool is never a code or a token id)."
        )
    return values


def _pack_rows(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads lists of ids of any lengths into `(B, L)` ids and a mask, with one flat copy (no per-row tensors)."""
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
    length = int(lengths.max()) if len(rows) else 0
    # np.fromiter would cast silently (2.5 -> 2, "3" -> 3): let numpy infer the type and accept integers only.
    try:
        values = np.asarray(list(chain.from_iterable(rows)))
    except ValueError:  # rows of rows
        values = np.asarray([None])
    if values.size and (values.dtype.kind not in "iu" or values.ndim != 1):
        bad = next(i for i, row in enumerate(rows) if not all(is_integer_number(token) for token in row))
        raise TypeError(f"Token ids must be integers; row {bad} holds {str(list(rows[bad]))[:80]}.")
    flat = torch.from_numpy(values.astype(np.int64, copy=False)) if values.size else torch.zeros(0, dtype=torch.long)
    mask = torch.arange(length).expand(len(rows), length) < lengths[:, None]
    padded = torch.zeros(len(rows), length, dtype=torch.long)
    padded[mask] = flat
    return padded, mask


@dataclass
class ImageSegment:
    """One image segment found in a token sequence.

    Attributes:
        batch_index: Row of the batch holding the segment.
        start: Position of the BOI token.
        end: One past the last position of the segment (the EOI position + 1 when closed; otherwise the position
            where the segment was cut: the next BOI, the first padding position, or the sequence length).
        codes: VQ codes of the image tokens inside the segment, in order (1-D `LongTensor`).
        complete: Whether the segment is closed by EOI and holds exactly `tokens_per_image` image tokens and
            nothing else.
    """

    batch_index: int
    start: int
    end: int
    codes: torch.Tensor
    complete: bool


@dataclass
class ImageSegments:
    """All image segments of a batch, as tensors (one entry per segment, ordered by row then position).

    Attributes:
        batch_index: `(N,)` row of each segment.
        start: `(N,)` BOI position of each segment.
        end: `(N,)` exclusive end of each segment (see [`ImageSegment`]).
        complete: `(N,)` bool, whether each segment is a complete image.
        num_image_tokens: `(N,)` number of image tokens inside each segment.
        complete_codes: `(M, H, W)` codes of the `M` complete segments, in segment order.
        complete_batch_index: `(M,)` row of each complete segment.
        stray_image_tokens: `(B,)` image tokens found outside any segment, per row.
    """

    batch_index: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    complete: torch.Tensor
    num_image_tokens: torch.Tensor
    complete_codes: torch.Tensor
    complete_batch_index: torch.Tensor
    stray_image_tokens: torch.Tensor
    _ids: torch.Tensor = field(repr=False)
    _codes: torch.Tensor = field(repr=False)

    def __len__(self) -> int:
        return int(self.batch_index.numel())

    def __iter__(self) -> Iterator[ImageSegment]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i: int) -> ImageSegment:
        row, start, end = int(self.batch_index[i]), int(self.start[i]), int(self.end[i])
        inner = self._codes[row, start + 1 : end]
        return ImageSegment(row, start, end, inner[inner >= 0], bool(self.complete[i]))

    def per_row(self, num_rows: int) -> list[list[ImageSegment]]:
        """Groups the segments by batch row."""
        rows: list[list[ImageSegment]] = [[] for _ in range(num_rows)]
        for segment in self:
            rows[segment.batch_index].append(segment)
        return rows


def parse_segments(
    vocab: ImageVocabulary,
    ids: torch.Tensor | Sequence[Sequence[int]],
    attention_mask: torch.Tensor | None = None,
    continue_open_image: bool = False,
) -> ImageSegments:
    """[`ImageVocabulary.parse_segments`] (see there), as a function of the vocabulary."""
    if not isinstance(ids, torch.Tensor):
        ids, attention_mask = _pack_rows(ids)
    else:
        check_integer_tensor(ids, "Token ids")
    ids = ids.long()
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if continue_open_image:
        return _parse_after_open_image(vocab, ids, attention_mask)
    device = ids.device
    batch, length = ids.shape
    valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()

    codes = torch.where(valid, vocab.ids_to_codes(ids), -1)
    is_image = codes >= 0
    is_boi = (ids == vocab.boi_token_id) & valid
    is_eoi = (ids == vocab.eoi_token_id) & valid
    # A segment is cut by the next BOI, the next EOI (which closes it) or the next absent position.
    is_stop = is_boi | is_eoi | ~valid
    positions = torch.arange(length, device=device).expand(batch, length)
    stop_pos = torch.where(is_stop, positions, torch.full_like(positions, length))
    # next_stop[b, t] = first stop position >= t (length when none).
    next_stop = torch.flip(torch.cummin(torch.flip(stop_pos, [1]), dim=1).values, [1])
    next_stop = torch.cat([next_stop, torch.full((batch, 1), length, device=device, dtype=torch.long)], dim=1)

    seg_rows, seg_starts = is_boi.nonzero(as_tuple=True)
    stop = next_stop[seg_rows, seg_starts + 1]
    closed_by_eoi = torch.zeros_like(stop, dtype=torch.bool)
    inside = stop < length
    closed_by_eoi[inside] = is_eoi[seg_rows[inside], stop[inside]]
    seg_ends = torch.where(closed_by_eoi, stop + 1, stop)

    image_cumsum = torch.cat(
        [torch.zeros(batch, 1, dtype=torch.long, device=device), is_image.long().cumsum(dim=1)], dim=1
    )
    inner_images = image_cumsum[seg_rows, stop] - image_cumsum[seg_rows, seg_starts + 1]
    inner_length = stop - seg_starts - 1
    complete = closed_by_eoi & (inner_length == vocab.tokens_per_image) & (inner_images == inner_length)

    # Stray image tokens: image tokens not covered by any segment span.
    coverage = torch.zeros(batch, length + 1, dtype=torch.long, device=device)
    coverage.index_put_((seg_rows, seg_starts), torch.ones_like(seg_starts), accumulate=True)
    coverage.index_put_((seg_rows, seg_ends), -torch.ones_like(seg_ends), accumulate=True)
    covered = coverage.cumsum(dim=1)[:, :length] > 0
    stray = (is_image & ~covered).sum(dim=1)

    h, w = vocab.grid_size
    c_rows, c_starts = seg_rows[complete], seg_starts[complete]
    offsets = torch.arange(1, vocab.tokens_per_image + 1, device=device)
    gather_pos = (c_starts[:, None] + offsets[None, :]).clamp(max=max(length - 1, 0))
    complete_codes = codes[c_rows[:, None], gather_pos].reshape(-1, h, w)

    return ImageSegments(
        batch_index=seg_rows,
        start=seg_starts,
        end=seg_ends,
        complete=complete,
        num_image_tokens=inner_images,
        complete_codes=complete_codes,
        complete_batch_index=c_rows,
        stray_image_tokens=stray,
        _ids=ids,
        _codes=codes,
    )


def _parse_after_open_image(
    vocab: ImageVocabulary, ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> ImageSegments:
    """`parse_segments` of rows that continue an open image: a BOI is put before each row that begins with an
    image code, the rows are parsed, and positions are shifted back (that BOI sits at position -1)."""
    batch = ids.shape[0]
    valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if ids.shape[1]:
        opened = valid[:, :1] & vocab.is_image_token(ids[:, :1])
    else:
        opened = torch.zeros(batch, 1, dtype=torch.bool, device=ids.device)
    boi = torch.full((batch, 1), vocab.boi_token_id, dtype=ids.dtype, device=ids.device)
    parsed = parse_segments(vocab, torch.cat([boi, ids], dim=1), torch.cat([opened, valid], dim=1))
    parsed.start = parsed.start - 1
    parsed.end = parsed.end - 1
    # `ImageSegments.__getitem__` reads codes from `start + 1`: the row's own positions.
    parsed._ids = parsed._ids[:, 1:]
    parsed._codes = parsed._codes[:, 1:]
    return parsed
