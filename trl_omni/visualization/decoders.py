"""[`FalseColorDecoder`]: codes shown as colours of their codebook embeddings, without decoder weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ..models.image_vocabulary import ImageVocabulary
from ..models.vq_decoder import PaletteDecoder


class FalseColorDecoder:
    """Shows raw codes as a false-colour grid, without any decoder weights.

    Each code gets the colour of its codebook embedding projected on the codebook's first three principal components
    (each scaled to `[0, 255]`), so codes with similar embeddings get similar colours. Each code is drawn as a square
    cell of `cell_size` pixels.

    Args:
        image_vocabulary: The model's image vocabulary (codebook and grid).
        cell_size: Pixels per code; by default chosen so that an image is about `target_size` pixels wide.
        target_size: Width aimed at when `cell_size` is not given.

    Example:
        ```python
        >>> decoder = FalseColorDecoder(vocab)
        >>> images = decoder.decode(vocab.parse_segments(ids).complete_codes)
        ```
    """

    def __init__(self, image_vocabulary: ImageVocabulary, cell_size: int | None = None, target_size: int = 256):
        height, width = image_vocabulary.grid_size
        self.cell_size = cell_size or max(1, target_size // max(height, width))
        self.palette = self.codebook_colors(image_vocabulary.codebook)
        self._palette_decoder = PaletteDecoder(self.palette, self.cell_size, grid_size=image_vocabulary.grid_size)

    @staticmethod
    def codebook_colors(codebook: torch.Tensor) -> np.ndarray:
        """`(K, 3)` uint8 colours from the top-3 principal components of a `(K, D)` codebook."""
        embeddings = codebook.detach().float().cpu()
        centered = embeddings - embeddings.mean(dim=0, keepdim=True)
        if centered.shape[0] > 1 and centered.abs().sum() > 0:
            _, _, v = torch.linalg.svd(centered, full_matrices=False)
            projected = centered @ v[:3].T
        else:
            projected = torch.zeros(embeddings.shape[0], 0)
        if projected.shape[1] < 3:  # fewer than 3 informative directions: pad with a constant mid-grey channel
            projected = torch.cat([projected, torch.zeros(projected.shape[0], 3 - projected.shape[1])], dim=1)
        low, high = projected.min(dim=0).values, projected.max(dim=0).values
        span = torch.where(high > low, high - low, torch.ones_like(high))
        scaled = torch.where(high > low, (projected - low) / span, torch.full_like(projected, 0.5))
        return (scaled * 255).round().to(torch.uint8).numpy()

    def decode(self, codes: Any) -> list[Image.Image]:
        return self._palette_decoder.decode(codes)
