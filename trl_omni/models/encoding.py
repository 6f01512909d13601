"""Encoding images into VQ codes with the model's own VQ encoder, batched.

Images go through `processor.image_processor` (resize, crop, normalise exactly as the model was trained) and the
model's VQ encoder, whose quantizer indices are the codes (the model's `get_image_tokens` is the same computation
followed by the code -> id mapping), so no id arithmetic happens here. Codes are what the interleaved schema stores
(`codes` of an image part); the collator turns them back into an in-sequence span with
[`ImageVocabulary.image_span_ids`].
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .image_vocabulary import ImageVocabulary, _chameleon_backbone
from .precision import exact_float32_convolutions


def _check_images(images: Any) -> None:
    """Refuses, naming the position and the fix, anything but a sequence of PIL images."""
    from PIL import Image

    if isinstance(images, Image.Image | str | bytes) or not isinstance(images, Sequence):
        raise TypeError(
            f"Images are encoded from a list of PIL images, got {type(images).__name__}. Fix: wrap a single image in "
            "a list."
        )
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"Image {index} is {type(image).__name__}, not a PIL image. Fix: open files with PIL.Image.open(path) "
                "and arrays with PIL.Image.fromarray(array) (uint8, height x width x 3)."
            )


def to_rgb(image: Any, background: tuple[int, int, int] = (255, 255, 255)) -> Any:
    """Converts a PIL image of any mode to RGB.

    Transparent images (RGBA, LA, palette with transparency) are composited over `background` (Chameleon's own
    preprocessing uses white) instead of keeping the colour of fully transparent pixels; 16/32-bit integer and float
    images are rescaled to 8 bits from their actual range; everything else uses PIL's conversion.
    """
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


class ImageEncoder:
    """Batched image -> VQ code encoder built on a unified-token model's own VQ tokenizer.

    The VQ model runs in `dtype`, float32 by default whatever dtype the model was loaded in, on every device, and on
    GPUs without TF32 convolutions: the exact choice, and on CPU also the fastest (a bfloat16 encoder there is two
    orders of magnitude slower). On an H100, bfloat16 encodes ~2.6x faster but changes about half of the codes of a
    randomly initialised encoder; pass `dtype=torch.bfloat16` to trade exactness for speed (docs/benchmarks.md).
    When `dtype` differs from the model's, a private copy of the VQ model is made once; the model is never changed.

    Args:
        model: A Chameleon / Anole model (possibly PEFT / accelerate wrapped). Only its VQ model is used.
        processor: The model's `ChameleonProcessor` (or its image processor).
        image_vocabulary: The model's [`ImageVocabulary`]; built from `model` when omitted.
        batch_size: Images per VQ forward.
        dtype: Dtype the VQ encoder computes in (see above); `None` means float32.

    Example:
        ```python
        >>> from PIL import Image
        >>> from trl_omni.models.encoding import ImageEncoder
        >>> from trl_omni.testing import tiny_chameleon
        >>> model, processor = tiny_chameleon()
        >>> codes = ImageEncoder(model, processor).encode([Image.new("RGB", (40, 30), "red")])
        >>> codes.shape  # (images, H*W)
        torch.Size([1, 64])
        ```
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        image_vocabulary: ImageVocabulary | None = None,
        batch_size: int = 32,
        dtype: torch.dtype | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}.")
        self.backbone = _chameleon_backbone(model)
        self.image_processor = getattr(processor, "image_processor", processor)
        if not callable(self.image_processor):
            raise ValueError("`processor` must be the model's ChameleonProcessor or its image processor.")
        self.vocab = image_vocabulary or ImageVocabulary.from_model(model, processor)
        self.batch_size = batch_size
        self.num_images_encoded = 0
        vq_parameter = next(self.backbone.vqmodel.parameters())
        self.device = vq_parameter.device
        self.dtype = dtype or torch.float32
        self._vqmodel = self.backbone.vqmodel
        if vq_parameter.dtype != self.dtype:
            self._vqmodel = copy.deepcopy(self.backbone.vqmodel).to(dtype=self.dtype).eval().requires_grad_(False)

    def pixel_values(self, images: Sequence[Any]) -> torch.Tensor:
        """Preprocesses PIL images (any mode, any size) with the model's image processor."""
        return self.image_processor([to_rgb(image) for image in images], return_tensors="pt")["pixel_values"]

    @torch.inference_mode()
    def encode(self, images: Sequence[Any]) -> torch.Tensor:
        """Encodes PIL images into codes.

        Args:
            images: PIL images of any mode and size.

        Returns:
            `(N, H*W)` LongTensor of codes on CPU, row-major per image.
        """
        _check_images(images)
        tokens_per_image = self.vocab.tokens_per_image
        if len(images) == 0:
            return torch.empty(0, tokens_per_image, dtype=torch.long)
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.pixel_values(images[start : start + self.batch_size])
            pixels = pixels.to(device=self.device, dtype=self.dtype)
            # The quantizer's indices are the codes (the model's `get_image_tokens` maps them to ids, which
            # `ImageVocabulary` would map back).
            with exact_float32_convolutions(self.device):
                indices = self._vqmodel.encode(pixels, return_dict=True).image_tokens
            chunks.append(indices.reshape(pixels.shape[0], -1).long().cpu())
        codes = torch.cat(chunks)
        if codes.shape[1] != tokens_per_image or int(codes.min()) < 0 or int(codes.max()) >= self.vocab.num_codes:
            raise RuntimeError(
                f"The VQ encoder returned {codes.shape[1]} codes per image (expected {tokens_per_image}) or codes "
                f"outside [0, {self.vocab.num_codes}): the processor and the model do not match."
            )
        self.num_images_encoded += len(images)
        return codes

    def fingerprint(self) -> str:
        """A hash of everything that decides the codes: every VQ weight, the grid and the image-processor settings
        (the cache key of [`~trl_omni.data.pretokenize_images`])."""
        from ..utils.fingerprint import fingerprint_data, fingerprint_processor, fingerprint_tensors

        return fingerprint_data(
            {
                "grid": list(self.vocab.grid_size),
                "dtype": str(self.dtype),  # codes may differ between float32 and bfloat16 encoders
                "vq_weights": fingerprint_tensors(self.backbone.vqmodel.state_dict().items()),
                "image_processor": fingerprint_processor(self.image_processor)["image_processor"],
            }
        )


def encode_images(
    model: Any, processor: Any, images: Sequence[Any], batch_size: int = 32, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Encodes PIL images into `(N, H*W)` VQ codes with `model`'s VQ encoder. See [`ImageEncoder`]."""
    return ImageEncoder(model, processor, batch_size=batch_size, dtype=dtype).encode(images)
