"""Code grids -> PIL images through a [`ChameleonVQDecoder`] and the core's codebook."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ..image_vocabulary import ImageVocabulary
from ..precision import exact_float32_convolutions
from .network import ChameleonVQDecoder


def _as_code_grids(codes: Any, grid_size: tuple[int, int] | None, num_codes: int | None) -> torch.Tensor:
    """Normalises `codes` ((H, W), (N, H, W), (N, H*W) or a list of grids) to a `(N, H, W)` LongTensor."""
    if isinstance(codes, torch.Tensor | np.ndarray):
        grids = torch.as_tensor(codes)
        if grids.dim() == 2 and (grid_size is None or tuple(grids.shape) == tuple(grid_size)):
            grids = grids.unsqueeze(0)  # one (H, W) grid
        elif grids.dim() == 1:
            grids = grids.unsqueeze(0)  # one flat image
    else:
        items = [torch.as_tensor(getattr(c, "codes", c)) for c in codes]
        if not items:
            return torch.zeros(0, *(grid_size or (0, 0)), dtype=torch.long)
        shapes = {tuple(item.shape) for item in items}
        if len(shapes) != 1:
            raise ValueError(f"All code grids in one call must have the same shape; got {sorted(shapes)}.")
        grids = torch.stack([item.cpu() for item in items])
    grids = grids.long()
    if grids.dim() == 2:  # (N, H*W)
        if grid_size is None:
            raise ValueError(f"Flat codes of shape {tuple(grids.shape)} need a grid size; pass (N, H, W) codes.")
        if grids.shape[1] != grid_size[0] * grid_size[1]:
            raise ValueError(
                f"An image needs {grid_size[0] * grid_size[1]} codes ({grid_size[0]}x{grid_size[1]}); got "
                f"{grids.shape[1]}. Only complete images can be decoded (see `ImageSegments.complete_codes`)."
            )
        grids = grids.reshape(-1, *grid_size)
    if grids.dim() != 3:
        raise ValueError(f"Expected codes shaped (H, W), (N, H, W) or (N, H*W); got {tuple(grids.shape)}.")
    if grid_size is not None and tuple(grids.shape[1:]) != tuple(grid_size):
        raise ValueError(f"Code grids are {tuple(grids.shape[1:])} but the image grid is {tuple(grid_size)}.")
    if num_codes is not None and grids.numel() and (int(grids.min()) < 0 or int(grids.max()) >= num_codes):
        raise ValueError(
            f"Image codes must lie in [0, {num_codes}); got values in [{int(grids.min())}, {int(grids.max())}]. "
            "Were these token ids? Map them with `ImageVocabulary.ids_to_codes` first."
        )
    return grids


def decode_images(
    codes: Any,
    decoder: ChameleonVQDecoder,
    image_vocabulary: ImageVocabulary,
    batch_size: int = 8,
) -> list[Image.Image]:
    """Decodes VQ code grids to PIL images: codebook embeddings -> `post_quant_conv` -> decoder -> pixels.

    The embeddings come from `image_vocabulary.codebook` (the core's frozen copy), so the decoder needs no copy of
    the codebook. Runs without gradients, in chunks of `batch_size`, on the decoder's device and dtype (on GPUs a
    float32 decoder runs without TF32 convolutions, see [`exact_float32_convolutions`]).

    Args:
        codes: `(H, W)`, `(N, H, W)` or `(N, H*W)` codes (tensor or array), or a list of grids / `ImageSegment`s.
        decoder: A [`ChameleonVQDecoder`] (see [`load_vq_decoder`]).
        image_vocabulary: The model's [`ImageVocabulary`].
        batch_size: Images decoded per forward pass (bounds peak memory).

    Returns:
        One RGB `PIL.Image` per grid, `(W * f, H * f)` pixels with `f = decoder.upsampling_factor`.

    Example:
        ```python
        >>> segments = vocab.parse_segments(completion_ids)
        >>> images = decode_images(segments.complete_codes, decoder, vocab)
        ```
    """
    grids = _as_code_grids(codes, image_vocabulary.grid_size, image_vocabulary.num_codes)
    if image_vocabulary.codebook_dim != decoder.embed_dim:
        raise ValueError(
            f"The codebook has dimension {image_vocabulary.codebook_dim} but the decoder expects {decoder.embed_dim}: "
            "the decoder was built for another model."
        )
    parameter = next(decoder.parameters())
    codebook = image_vocabulary.codebook_on(parameter.device, parameter.dtype)
    images: list[Image.Image] = []
    with torch.no_grad(), exact_float32_convolutions(parameter.device):
        for chunk in grids.split(max(1, batch_size)):
            latents = codebook[chunk.to(parameter.device)].permute(0, 3, 1, 2)  # (n, D, H, W)
            images.extend(decoder.to_pil(decoder(latents)))
    return images


class VQImageDecoder:
    """Binds a [`ChameleonVQDecoder`] to an [`ImageVocabulary`]: `decode(codes) -> list[PIL.Image]`.

    This is the decoder interface [`trl_omni.visualization.render_trajectory`] accepts.

    Args:
        decoder: The VQGAN decoder.
        image_vocabulary: The model's image vocabulary (codebook and grid).
        batch_size: Images per forward pass.
    """

    def __init__(self, decoder: ChameleonVQDecoder, image_vocabulary: ImageVocabulary, batch_size: int = 8):
        self.decoder = decoder
        self.image_vocabulary = image_vocabulary
        self.batch_size = batch_size

    def decode(self, codes: Any) -> list[Image.Image]:
        return decode_images(codes, self.decoder, self.image_vocabulary, batch_size=self.batch_size)
