"""[`PaletteDecoder`] decodes palette codebooks exactly (each code is one flat colour patch) and encodes such images
back to codes; [`palette_codebook`] builds a codebook whose embedding distances are colour distances, so the
perception (2D total-variation) reward is meaningful on drawings made of palette codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...utils.type_checks import is_integer_number
from .decoding import _as_code_grids


def uniform_palette(num_colors: int) -> np.ndarray:
    """`num_colors` distinct RGB colours spread over the RGB cube (a regular grid, row-major), as `(K, 3)` uint8.

    Example:
        ```python
        >>> uniform_palette(8).tolist()[:3]
        [[0, 0, 0], [0, 0, 255], [0, 255, 0]]
        ```
    """
    if num_colors < 1:
        raise ValueError(f"num_colors must be >= 1, got {num_colors}.")
    levels = max(2, math.ceil(round(num_colors ** (1 / 3), 9)))
    if levels**3 < num_colors:
        levels += 1
    values = np.round(np.linspace(0, 255, levels)).astype(np.uint8)
    grid = np.stack(np.meshgrid(values, values, values, indexing="ij"), axis=-1).reshape(-1, 3)
    return np.ascontiguousarray(grid[:num_colors])


def palette_codebook(palette: Any, dim: int, scale: float = 1.0) -> torch.Tensor:
    """A `(K, dim)` float32 codebook whose entry `k` encodes colour `palette[k]`.

    The first three dimensions hold the colour in `[0, scale]` (`rgb / 255 * scale`), the rest are zero, so the
    Euclidean distance between two entries is the colour distance (scaled): the perception reward's 2D total
    variation over codebook embeddings then measures colour changes between neighbouring patches of a drawing.

    Args:
        palette: `(K, 3)` uint8 colours.
        dim: Codebook dimension of the model (`ImageVocabulary.codebook_dim`, >= 3).
        scale: Length of the colour cube's edge in embedding space.

    Example:
        ```python
        >>> codebook = palette_codebook(uniform_palette(64), dim=16)
        >>> model.model.vqmodel.quantize.embedding.weight.data.copy_(codebook)  # a model that draws in colours
        ```
    """
    colors = _check_palette(palette)
    if dim < 3:
        raise ValueError(f"A palette codebook needs dim >= 3 (one dimension per colour channel); got {dim}.")
    codebook = torch.zeros(colors.shape[0], dim, dtype=torch.float32)
    codebook[:, :3] = torch.from_numpy(colors.astype(np.float32)) / 255.0 * scale
    return codebook


def _size_pair(value: Any, name: str) -> tuple[int, int]:
    """`(height, width)` from an int (a square) or a pair of ints, each >= 1."""
    pair = (value, value) if is_integer_number(value) else value
    if not isinstance(pair, tuple | list) or len(pair) != 2 or not all(is_integer_number(side) for side in pair):
        raise TypeError(f"{name} must be an int or a pair (height, width) of ints, got {value!r}.")
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}.")
    return int(pair[0]), int(pair[1])


def _check_palette(palette: Any) -> np.ndarray:
    colors = np.asarray(palette.cpu() if isinstance(palette, torch.Tensor) else palette)
    if colors.ndim != 2 or colors.shape[1] != 3 or colors.shape[0] < 1:
        raise ValueError(f"A palette is a (K, 3) array of RGB colours; got shape {colors.shape}.")
    if colors.min() < 0 or colors.max() > 255:
        raise ValueError("Palette colours must lie in [0, 255].")
    return colors.astype(np.uint8)


class PaletteDecoder:
    """Exact decoder for palette codebooks: code `k` is a flat `patch_size` patch of colour `palette[k]`.

    `encode` is its inverse on images made of palette patches (nearest palette colour to each patch's mean), so
    `decode(encode(image)) == image` pixel for pixel.

    Args:
        palette: `(K, 3)` uint8 RGB colours, one per code.
        patch_size: Pixels per code, `int` or `(height, width)`.
        grid_size: Optional code grid, `int` (square) or `(H, W)`, needed only to decode flat `(N, H*W)` codes.

    Example:
        ```python
        >>> decoder = PaletteDecoder(uniform_palette(64), patch_size=4, grid_size=vocab.grid_size)
        >>> images = decoder.decode(segments.complete_codes)
        >>> codes = decoder.encode(images)  # the same codes back
        ```
    """

    def __init__(
        self, palette: Any, patch_size: int | tuple[int, int], grid_size: int | tuple[int, int] | None = None
    ):
        self.palette = _check_palette(palette)
        self.patch_size = _size_pair(patch_size, "patch_size")
        self.grid_size = None if grid_size is None else _size_pair(grid_size, "grid_size")

    @property
    def num_codes(self) -> int:
        return int(self.palette.shape[0])

    def decode(self, codes: Any) -> list[Image.Image]:
        """Code grids -> RGB images of `(W * patch_w, H * patch_h)` pixels."""
        grids = _as_code_grids(codes, self.grid_size, self.num_codes).cpu().numpy()
        ph, pw = self.patch_size
        pixels = self.palette[grids]  # (N, H, W, 3)
        pixels = pixels.repeat(ph, axis=1).repeat(pw, axis=2)
        return [Image.fromarray(np.ascontiguousarray(p), mode="RGB") for p in pixels]

    def encode(self, images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """Images -> `(N, H, W)` codes, the nearest palette colour to each patch's mean colour."""
        if len({tuple(c) for c in self.palette.tolist()}) != self.num_codes:
            raise ValueError("The palette has duplicate colours, so encoding is ambiguous; use distinct colours.")
        if isinstance(images, Image.Image):
            images = [images]
        ph, pw = self.patch_size
        palette = torch.from_numpy(self.palette.astype(np.float32))
        out = []
        for index, image in enumerate(images):
            array = np.asarray(image.convert("RGB"), dtype=np.float32)
            height, width = array.shape[:2]
            if height % ph or width % pw:
                raise ValueError(
                    f"Image {index} is {width}x{height} pixels, not a multiple of the {pw}x{ph} patch size."
                )
            patches = array.reshape(height // ph, ph, width // pw, pw, 3).mean(axis=(1, 3))
            distances = torch.cdist(torch.from_numpy(patches).reshape(-1, 3), palette)
            out.append(distances.argmin(dim=1).reshape(height // ph, width // pw))
        return torch.stack(out) if out else torch.zeros(0, 0, 0, dtype=torch.long)
