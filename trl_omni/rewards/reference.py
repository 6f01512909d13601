"""Reference-image reward: pays for drawing the right picture, by comparing each drawn image with the row's
reference drawing in the codebook-embedding space."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..models.image_vocabulary import check_image_vocabulary
from ._common import CompletionIdsReward
from ._images import completion_images


METRICS = ("distance", "cosine")
ALIGNMENTS = ("order", "best")
REFERENCE_COLUMN = "reference_images"
_IDENTICAL = 1.0 - 1e-6


class ReferenceImageReward(CompletionIdsReward):
    """Scores each drawn image against the row's reference image(s), in [0, 1]; None when the row has none.

    **Data.** A row carries its reference drawings in a column (default `reference_images`): a list, one entry per
    reasoning image, each an image part of the interleaved schema (`image_part(codes=...)`, the form
    `pretokenize_images(..., columns=(..., "reference_images"))` writes) or a plain list / array of the `H*W`
    codes. Parts holding a PIL image, bytes, base64 or a path are encoded when an `image_encoder` is given (cached
    by content); pre-tokenizing the column is faster. `trl_omni.data.add_reference_images` fills the column from
    the images of a row's reference completion (Zebra-CoT reasoning images, bootstrapped drawings); the Uni-Skills
    demo rows carry it. A row whose value is None or empty gets None (TRL leaves it out of this reward).

    **Per image pair.** With `E` the frozen codebook, each grid cell compares the drawn code `d` with the reference
    code `r`: `"distance"` (default) scores `exp(-||E[d] - E[r]||^2 / s)`, with `s` the mean squared distance
    between two distinct codebook entries (so a random pair of codes scores about `exp(-1)` whatever the codebook's
    scale); `"cosine"` scores `(1 + cos(E[d], E[r])) / 2`. Equal codes score exactly 1. The pair's similarity
    `S` is the mean over the `H x W` cells. With `chance_corrected=True` (default) it is rescaled against the best
    constant guess, the reference's most frequent code repeated over the grid, whose similarity is `S0`:
    `score = clip((S - S0) / (1 - S0), 0, 1)` (1 for an identical drawing, 0 for a blank or unrelated one). Drawings
    are mostly background, so without the correction a flat image already scores close to 1 and the policy is paid
    for drawing nothing (the failure the demo measured with the smoothness-only perception reward). A constant
    reference has `S0 = 1`: only the identical drawing scores (1), any other 0.

    **Alignment** of drawn images (the complete images of the completion, in order) to references when the counts
    differ: `"order"` (default) pairs the k-th drawn image with the k-th reference; `"best"` gives each reference
    its most similar drawn image. Either way a reference without a drawn image scores 0, drawn images beyond the
    references are not scored, and the completion's score is the mean over the row's references. So a completion
    that draws nothing scores 0 when the row has references.

    All pairs of a batch are scored at once: drawn codes come from the core's parse of `completion_ids`
    ([`~trl_omni.ImageVocabulary.parse_completions`], cached per batch and shared with the other rewards), cell
    similarities from a lookup in the vocabulary's `(K, K)` table of squared
    codebook distances ([`~trl_omni.ImageVocabulary.codebook_distances`], shared with the perception reward) or,
    when it would exceed `max_table_bytes`, from gathered embeddings.

    Args:
        image_vocabulary: The policy's [`~trl_omni.ImageVocabulary`].
        reference_column: Dataset column holding each row's reference images.
        metric: `"distance"` or `"cosine"`.
        alignment: `"order"` or `"best"`.
        chance_corrected: Rescale against the reference's best constant image (see above).
        image_encoder: Optional [`~trl_omni.ImageEncoder`] to encode references given as pictures.
        image_root: Directory confining reference image paths (see `docs/data-formats.md`).
        device: Device to score on; None uses the device of `completion_ids` when it is a tensor, else the CPU.
        max_table_bytes: Largest distance table used (`"distance"` metric); larger codebooks gather embeddings.
        max_chunk_elements: Bound on one gathered `(chunk, H*W, D)` tensor.
        name: Reward name (TRL logs `rewards/<name>/mean`).

    Example:
        ```python
        >>> reward = ReferenceImageReward(ImageVocabulary.from_model(model, processor))
        >>> reward(prompts, completions, completion_ids=ids, reference_images=[[image_part(codes=grid)], None])
        [0.83, None]
        ```
    """

    def __init__(
        self,
        image_vocabulary: Any,
        reference_column: str = REFERENCE_COLUMN,
        metric: str = "distance",
        alignment: str = "order",
        chance_corrected: bool = True,
        image_encoder: Any | None = None,
        image_root: str | None = None,
        device: torch.device | str | None = None,
        max_table_bytes: int = 1 << 29,
        max_chunk_elements: int = 1 << 21,
        name: str = "reference_image_reward",
    ):
        check_image_vocabulary(image_vocabulary, type(self).__name__)
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}.")
        self.image_vocabulary = image_vocabulary
        self.reference_column = reference_column
        self.metric = metric
        self.alignment = alignment
        self.chance_corrected = bool(chance_corrected)
        self.image_encoder = image_encoder
        self.image_root = image_root
        self.device = None if device is None else torch.device(device)
        self.max_table_bytes = int(max_table_bytes)
        self.max_chunk_elements = int(max_chunk_elements)
        self.name = name
        self.__name__ = name  # TRL names rewards by `__name__`
        self._scales: dict[str, float] = {}
        self._encoded: OrderedDict[str, list[int]] = OrderedDict()

    # ------------------------------------------------------------------------------------------------ references
    def _encode(self, part: Mapping[str, Any], row: Any, field: str) -> list[int]:
        from ..data.images import load_image

        digest = hashlib.blake2b(digest_size=16)
        for key in ("path", "base64", "bytes"):
            if part.get(key) is not None:
                value = part[key]
                digest.update(key.encode() + (value if isinstance(value, bytes) else str(value).encode()))
                break
        else:
            image = part.get("image")
            digest.update(image.mode.encode() + str(image.size).encode() + image.tobytes())
        key = digest.hexdigest()
        if key not in self._encoded:
            image = load_image(part, self.image_root, row, field)
            self._encoded[key] = self.image_encoder.encode([image])[0].reshape(-1).tolist()
            if len(self._encoded) > 4096:
                self._encoded.popitem(last=False)
        return self._encoded[key]

    def _reference_codes(self, value: Any, row: Any, field: str) -> np.ndarray:
        """One reference as a flat int64 array of `H*W` codes, checked (types are checked, never coerced)."""
        vocab = self.image_vocabulary
        if isinstance(value, Mapping):
            if value.get("codes") is not None:
                value = value["codes"]
            elif any(value.get(key) is not None for key in ("image", "path", "bytes", "base64")):
                if self.image_encoder is None:
                    raise ValueError(
                        f"Row {row}, field '{field}': the reference image has no codes. Fix: pre-tokenize the column "
                        f"(pretokenize_images(dataset, model, processor, columns=(..., {self.reference_column!r}))) "
                        "or build the reward with image_encoder=ImageEncoder(model, processor)."
                    )
                value = self._encode(value, row, field)
            else:
                raise ValueError(f"Row {row}, field '{field}': the reference image part has no image source.")
        elif hasattr(value, "mode") and hasattr(value, "size") and hasattr(value, "tobytes"):  # a PIL image
            if self.image_encoder is None:
                raise ValueError(
                    f"Row {row}, field '{field}': the reference is a picture; pass image_encoder= or pre-tokenize it."
                )
            value = self.image_encoder.encode([value])[0].reshape(-1).tolist()
        codes = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if codes.size and codes.dtype.kind not in "iu":
            raise ValueError(
                f"Row {row}, field '{field}': reference codes must be integers, got {codes.dtype} values. Fix: store "
                "the VQ codes (image_part(codes=...)), not pixels, floats or booleans."
            )
        codes = codes.reshape(-1).astype(np.int64)
        out_of_range = codes.size and not 0 <= codes.min() <= codes.max() < vocab.num_codes
        if codes.size != vocab.tokens_per_image or out_of_range:
            found = f"{codes.size} codes" + (f" in [{codes.min()}, {codes.max()}]" if codes.size else "")
            raise ValueError(
                f"Row {row}, field '{field}': found {found}; this model's images are {vocab.grid_size[0]}x"
                f"{vocab.grid_size[1]} = {vocab.tokens_per_image} codes in [0, {vocab.num_codes}). Fix: re-encode "
                "the reference with this model's VQ encoder (pretokenize_images)."
            )
        return codes

    def reference_grids(self, references: Sequence[Any], row_names: Sequence[Any] | None = None) -> tuple:
        """`((R, H, W) codes, (R,) row of each reference, (B,) references per row)` of a batch's column values."""
        grids, rows, counts = [], [], []
        for index, value in enumerate(references):
            row = index if row_names is None or row_names[index] is None else f"{index} (id {row_names[index]!r})"
            if value is None or isinstance(value, (str, bytes)) or isinstance(value, Mapping):
                if value is not None:
                    raise ValueError(
                        f"Row {row}, field '{self.reference_column}': expected a list of reference images, got "
                        f"{type(value).__name__}. Fix: wrap a single image in a list."
                    )
                counts.append(0)
                continue
            items = list(value)
            for j, item in enumerate(items):
                grids.append(self._reference_codes(item, row, f"{self.reference_column}[{j}]"))
                rows.append(index)
            counts.append(len(items))
        h, w = self.image_vocabulary.grid_size
        codes = torch.from_numpy(np.stack(grids)).view(-1, h, w) if grids else torch.zeros(0, h, w, dtype=torch.long)
        return codes, torch.tensor(rows, dtype=torch.long), torch.tensor(counts, dtype=torch.long)

    # ------------------------------------------------------------------------------------------------ similarity
    def _scale(self, device: torch.device) -> float:
        key = str(device)
        if key not in self._scales:
            codebook = self.image_vocabulary.codebook_on(device, torch.float32).double()
            k = codebook.shape[0]
            # Mean of ||a - b||^2 over ordered pairs of distinct entries: 2K/(K-1) (mean |e|^2 - |mean e|^2).
            spread = codebook.pow(2).sum(-1).mean() - codebook.mean(0).pow(2).sum()
            scale = float(2 * k / max(k - 1, 1) * spread)
            self._scales[key] = scale if scale > 0 else 1.0
        return self._scales[key]

    def cell_similarities(self, drawn: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """`(P, N)` similarities in [0, 1] of code pairs `drawn[p, n]` / `reference[p, n]` (equal codes score 1)."""
        vocab = self.image_vocabulary
        device = drawn.device
        if drawn.numel() == 0:
            return torch.zeros(drawn.shape, device=device)
        if self.metric == "distance":
            if vocab.num_codes**2 * 4 <= self.max_table_bytes:
                squared = vocab.codebook_distances(device).view(-1)[drawn * vocab.num_codes + reference]
            else:
                codebook = vocab.codebook_on(device, torch.float32)
                chunk = max(1, self.max_chunk_elements // max(drawn.shape[1] * vocab.codebook_dim, 1))
                squared = torch.cat(
                    [
                        (codebook[drawn[i : i + chunk]] - codebook[reference[i : i + chunk]]).pow(2).sum(-1)
                        for i in range(0, drawn.shape[0], chunk)
                    ]
                )
            similarity = torch.exp(-squared / self._scale(device))
        else:
            unit = torch.nn.functional.normalize(vocab.codebook_on(device, torch.float32), dim=-1)
            chunk = max(1, self.max_chunk_elements // max(drawn.shape[1] * vocab.codebook_dim, 1))
            cosine = torch.cat(
                [
                    (unit[drawn[i : i + chunk]] * unit[reference[i : i + chunk]]).sum(-1)
                    for i in range(0, drawn.shape[0], chunk)
                ]
            )
            similarity = ((1.0 + cosine) / 2).clamp(0.0, 1.0)
        return torch.where(drawn == reference, torch.ones_like(similarity), similarity)

    def pair_scores(self, drawn: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """`(P,)` scores of `(P, H, W)` drawn grids against `(P, H, W)` reference grids (see the class docstring)."""
        drawn, reference = drawn.flatten(1), reference.flatten(1)
        similarity = self.cell_similarities(drawn, reference).mean(1)
        if not self.chance_corrected or similarity.numel() == 0:
            return similarity
        constant = torch.mode(reference, dim=1).values[:, None].expand_as(reference)
        baseline = self.cell_similarities(constant, reference).mean(1)
        corrected = ((similarity - baseline) / (1.0 - baseline).clamp(min=1e-6)).clamp(0.0, 1.0)
        return torch.where(similarity >= _IDENTICAL, torch.ones_like(corrected), corrected)

    # ------------------------------------------------------------------------------------------------ scoring
    def score_tensor(
        self,
        completion_ids: Any,
        references: Sequence[Any],
        image_segments: Sequence[Sequence[Any]] | None = None,
        row_names: Sequence[Any] | None = None,
        log_metric: Any | None = None,
    ) -> torch.Tensor:
        """`(B,)` scores, NaN where a row has no reference.

        Args:
            completion_ids: TRL's `completion_ids` (list of id lists) or a `(B, L)` tensor.
            references: Per row, the reference column's value (a list of references, or None).
            image_segments: Optional per-completion segments already parsed from `completion_ids` (PeRPO).
            row_names: Optional per-row ids, used in error messages.
            log_metric: Optional TRL `log_metric`.
        """
        num_rows = len(completion_ids)
        if len(references) != num_rows:
            raise ValueError(f"{self.name}: {len(references)} reference entries for {num_rows} completions.")
        device = self.device or (completion_ids.device if isinstance(completion_ids, torch.Tensor) else "cpu")
        device = torch.device(device)
        images = completion_images(self.image_vocabulary, completion_ids, device, image_segments)
        ref_codes, ref_rows, ref_counts = (t.to(device) for t in self.reference_grids(references, row_names))
        drawn_counts = torch.bincount(images.rows, minlength=num_rows)
        drawn_starts = torch.cumsum(drawn_counts, 0) - drawn_counts
        ref_rank = torch.arange(len(ref_rows), device=device) - (torch.cumsum(ref_counts, 0) - ref_counts)[ref_rows]
        ref_scores = torch.zeros(len(ref_rows), device=device)
        if self.alignment == "order":
            aligned = ref_rank < drawn_counts[ref_rows]
            drawn_index = drawn_starts[ref_rows[aligned]] + ref_rank[aligned]
            ref_scores[aligned] = self.pair_scores(images.codes[drawn_index], ref_codes[aligned]).float()
        else:
            per_ref = drawn_counts[ref_rows]
            pair_ref = torch.repeat_interleave(torch.arange(len(ref_rows), device=device), per_ref)
            first = torch.repeat_interleave(torch.cumsum(per_ref, 0) - per_ref, per_ref)
            pair_drawn = drawn_starts[ref_rows][pair_ref] + torch.arange(len(pair_ref), device=device) - first
            scores = self.pair_scores(images.codes[pair_drawn], ref_codes[pair_ref]).float()
            ref_scores = ref_scores.scatter_reduce(0, pair_ref, scores, "amax")
            aligned = per_ref > 0
        totals = torch.zeros(num_rows, device=device).index_add(0, ref_rows, ref_scores)
        result = totals / ref_counts.clamp(min=1)
        if log_metric is not None and len(ref_rows):
            log_metric(f"{self.name}/with_reference", float((ref_counts > 0).float().mean()))
            log_metric(f"{self.name}/aligned_references", float(aligned.float().mean()))
        return torch.where(ref_counts > 0, result, torch.full_like(result, float("nan")))

    def _reward(
        self, prompts: Any, completions: Any, completion_ids: Any, log_metric: Any, kwargs: dict[str, Any]
    ) -> list[float | None]:
        if self.reference_column not in kwargs:
            received = sorted(
                k for k in kwargs if k not in ("trainer_state", "log_metric", "log_extra", "image_segments")
            )
            raise KeyError(
                f"{self.name}: the dataset has no column {self.reference_column!r} (columns received: {received}). "
                "Add reference images (trl_omni.data.add_reference_images) or set reference_column=."
            )
        values = self.score_tensor(
            completion_ids,
            kwargs[self.reference_column],
            image_segments=kwargs.get("image_segments"),
            row_names=kwargs.get("id"),
            log_metric=log_metric,
        ).tolist()
        return [None if v != v else float(v) for v in values]

    def __repr__(self) -> str:
        return (
            f"ReferenceImageReward(column={self.reference_column!r}, metric={self.metric!r}, "
            f"alignment={self.alignment!r}, chance_corrected={self.chance_corrected})"
        )
