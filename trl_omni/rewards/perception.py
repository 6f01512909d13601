"""Perception reward: 2D total variation of the codebook embeddings of generated images (Omni-R1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..models.image_vocabulary import check_image_vocabulary
from ._common import CompletionIdsReward, check_real
from ._images import AGGREGATIONS, completion_images, pack_completion_ids, segment_reduce


MAPPINGS = ("inverse", "exp")


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


class PerceptionReward(CompletionIdsReward):
    """Perception reward: smoothness of each generated image, measured on its codebook embeddings.

    For every complete image segment in a completion (BOI + exactly H*W image tokens + EOI, as parsed by
    [`~trl_omni.ImageVocabulary.parse_completions`]; an image its prompt opened with BOI counts when the completion
    finishes it): `Z = codebook[codes]` of shape `(H, W, D)`,
    `E = (TV_x + TV_y) / D` ([`total_variation_energy`]), and the image scores `1 / (1 + E / tau)` (`"inverse"`)
    or `exp(-E / tau)` (`"exp"`). A completion's score aggregates its images' scores with `min` (the authors'
    default), `mean`, `max` or `median` (the mean of the two middle values for an even count). A completion without
    a complete image gets None. Incomplete segments are ignored; their count is reported through `log_metric`
    (`<name>/incomplete_images`) together with `<name>/complete_images`.

    All images of the batch are scored at once: one parse of the batch
    ([`~trl_omni.ImageVocabulary.parse_completions`], cached by the core and shared with every other reader of the
    same `completion_ids`), one tensor expression for the TV of every image (a lookup of all neighbour pairs in a
    cached table of squared codebook distances, or a gather of the embeddings, see `method`), and segment reductions
    per completion. The codebook comes from `ImageVocabulary.codebook_on(device)`, cached per device. The scores of
    the last batch are kept, so a second call on the same `completion_ids` (a trainer's metrics) costs nothing.

    Args:
        image_vocabulary: The policy's [`~trl_omni.ImageVocabulary`].
        tau: Temperature of the mapping (3.0 in the paper).
        mapping: `"inverse"` or `"exp"`.
        aggregation: `"min"`, `"mean"`, `"max"` or `"median"`.
        device: Device to score on; None uses the device of `completion_ids` when it is a tensor, else the CPU.
            Inside a trainer, pass the accelerator's device.
        method: `"table"`: neighbour distances are looked up in a `(K, K)` table of squared codebook distances
            built once per device (the codebook is frozen); `"gather"`: embeddings are gathered and differenced;
            `"auto"` (default): the table when it fits in `max_table_bytes` (512 MiB: K = 8192 takes 256 MiB).
            Both compute the same formula.
        max_table_bytes: Size limit of the distance table for `method="auto"`.
        max_chunk_elements: Bound on the elements of one gathered `(chunk, H, W, D)` tensor (gather method).
        name: Reward name (TRL logs `rewards/<name>/mean`).

    Example:
        ```python
        >>> reward = PerceptionReward(ImageVocabulary.from_model(model, processor), aggregation="min")
        >>> reward(prompts, completions, completion_ids=ids)  # inside TRL's GRPOTrainer, or directly
        [0.93, None, 0.71]
        ```
    """

    missing_ids_hint = " Call `.score(completion_ids)` when using it outside a trainer."

    def __init__(
        self,
        image_vocabulary: Any,
        tau: float = 3.0,
        mapping: str = "inverse",
        aggregation: str = "min",
        device: torch.device | str | None = None,
        method: str = "auto",
        max_table_bytes: int = 1 << 29,
        max_chunk_elements: int = 1 << 19,
        name: str = "perception_reward",
    ):
        check_image_vocabulary(image_vocabulary, type(self).__name__)
        if check_real(tau, type(self).__name__, "tau") <= 0:
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
        if method not in ("auto", "table", "gather"):
            raise ValueError(f"method must be 'auto', 'table' or 'gather', got {method!r}.")
        self.method = method
        self.max_table_bytes = int(max_table_bytes)
        self.max_chunk_elements = int(max_chunk_elements)
        # (completion_ids, its length, scores, incomplete, complete) of the last batch scored.
        self._last_scores: tuple | None = None
        self.name = name
        self.__name__ = name  # TRL names rewards by `__name__`

    # ------------------------------------------------------------------------------------------------ scoring
    def _use_table(self, num_codes: int) -> bool:
        if self.method == "auto":
            return num_codes * num_codes * 4 <= self.max_table_bytes
        return self.method == "table"

    def distance_table(self, device: torch.device | str) -> torch.Tensor:
        """`(K, K)` squared distances `||E[a] - E[b]||^2` between codebook entries on `device`.

        The codebook is frozen, so every neighbour pair of every image reduces to one lookup in this table instead
        of a gather of two `D`-dim embeddings and their difference. The table is
        [`~trl_omni.ImageVocabulary.codebook_distances`]: built once per device and shared by every reward holding
        the same vocabulary (a constant image scores exactly 1: the diagonal is exactly zero).
        """
        return self.image_vocabulary.codebook_distances(device)

    def image_energies(self, codes: torch.Tensor) -> torch.Tensor:
        """`(M,)` TV energies `E = (TV_x + TV_y) / D` of `(M, H, W)` code grids, all images at once."""
        vocab = self.image_vocabulary
        m, h, w = codes.shape
        d = vocab.codebook_dim
        if m == 0:
            return torch.zeros(0, device=codes.device)
        if self._use_table(vocab.num_codes):
            table = self.distance_table(codes.device).view(-1)
            k = vocab.num_codes
            tv_x = table[codes[:, :, :-1] * k + codes[:, :, 1:]].mean((1, 2)) if w > 1 else 0.0
            tv_y = table[codes[:, :-1, :] * k + codes[:, 1:, :]].mean((1, 2)) if h > 1 else 0.0
            return (tv_x + tv_y) / d + torch.zeros(m, device=codes.device)
        codebook = vocab.codebook_on(codes.device, torch.float32)
        # Gather path: embeddings of all images, chunked only to bound the memory of one (chunk, H, W, D) tensor.
        chunk = max(1, self.max_chunk_elements // max(h * w * d, 1))
        return torch.cat([total_variation_energy(codebook[codes[i : i + chunk]]) for i in range(0, m, chunk)])

    def image_scores(self, codes: torch.Tensor) -> torch.Tensor:
        """Scores `(M, H, W)` code grids: `(M,)` values in (0, 1]."""
        energy = self.image_energies(codes)
        if self.mapping == "inverse":
            return 1.0 / (1.0 + energy / self.tau)
        return torch.exp(-energy / self.tau)

    def _to_batch(self, completion_ids: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        return pack_completion_ids(completion_ids, self.device or torch.device("cpu"))

    def score_tensor(
        self,
        completion_ids: Any,
        attention_mask: torch.Tensor | None = None,
        log_metric: Any | None = None,
        image_segments: Sequence[Sequence[Any]] | None = None,
    ) -> torch.Tensor:
        """Per-completion scores as a `(B,)` float tensor, NaN where a completion has no complete image.

        Completions are parsed by [`~trl_omni.ImageVocabulary.parse_completions`] (a completion that begins with
        image codes finishes the image its prompt opened with BOI), cached per batch by the core. The scores of the
        last batch are kept too, so a trainer's perception metrics and this reward score a step's images once.
        `image_segments` is accepted for compatibility and not needed: the core's cached parse gives the same
        segments.
        """
        num_rows = len(completion_ids)
        memo = self._last_scores
        if attention_mask is None and memo is not None and memo[0] is completion_ids and memo[1] == num_rows:
            scores, incomplete, complete = memo[2:]
        else:
            device = self.device or (completion_ids.device if isinstance(completion_ids, torch.Tensor) else "cpu")
            images = completion_images(self.image_vocabulary, completion_ids, device, image_segments, attention_mask)
            image_scores = self.image_scores(images.codes)
            rows = images.rows.to(image_scores.device)
            scores = segment_reduce(image_scores, rows, num_rows, self.aggregation)
            incomplete, complete = images.incomplete, images.complete
            if attention_mask is None:
                self._last_scores = (completion_ids, num_rows, scores, incomplete, complete)
        if log_metric is not None:
            log_metric(f"{self.name}/incomplete_images", float(incomplete))
            log_metric(f"{self.name}/complete_images", float(complete))
        return scores.clone()

    def score(
        self,
        completion_ids: Any,
        log_metric: Any | None = None,
        image_segments: Sequence[Sequence[Any]] | None = None,
    ) -> list[float | None]:
        """Per-completion scores (None where a completion has no complete image).

        Args:
            completion_ids: A list of id lists (TRL's `completion_ids`) or a `(B, L)` tensor (no padding inside
                rows other than at positions that are not BOI/EOI/image tokens).
            log_metric: Optional TRL `log_metric` callable for the image counts.
            image_segments: Accepted for compatibility (see [`score_tensor`]).
        """
        values = self.score_tensor(completion_ids, log_metric=log_metric, image_segments=image_segments).tolist()
        return [None if v != v else float(v) for v in values]

    def _reward(
        self, prompts: Any, completions: Any, completion_ids: Any, log_metric: Any, kwargs: dict[str, Any]
    ) -> list[float | None]:
        return self.score(completion_ids, log_metric=log_metric, image_segments=kwargs.get("image_segments"))

    def __repr__(self) -> str:
        return (
            f"PerceptionReward(tau={self.tau}, mapping={self.mapping!r}, aggregation={self.aggregation!r}, "
            f"grid={self.image_vocabulary.grid_size}, codebook_dim={self.image_vocabulary.codebook_dim})"
        )
