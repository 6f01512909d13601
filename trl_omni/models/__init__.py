"""The image-token core: every image-token fact and operation used by the rest of trl-omni.

Its public names are imported on first access, like the package root's: `import trl_omni.models` loads no torch, and
the root exports exactly this list (`trl_omni.__all__` includes `__all__` below).
"""

from typing import TYPE_CHECKING

from ..utils.imports import lazy_exports
from .vq_decoder import __all__ as _VQ_DECODER_NAMES


# Submodule -> the public names it provides (the VQ decoders' are all of `vq_decoder.__all__`).
_EXPORTS = {
    "constrained_generation": ["generate_with_images"],
    "encoding": ["ImageEncoder", "encode_images", "to_rgb"],
    "generation": [
        "ImageSpanLogitsProcessor",
        "disable_image_generation",
        "enable_image_generation",
        "is_image_generation_enabled",
    ],
    "image_vocabulary": ["ImageSegment", "ImageSegments", "ImageVocabulary", "check_image_vocabulary", "unwrap_model"],
    "loading": [
        "CheckpointError",
        "check_checkpoint",
        "freeze_vq_model",
        "load_omni_model",
        "resolve_device",
    ],
    "precision": ["exact_float32_convolutions"],
    "span_constraint": ["ImageSpanConstraint", "SpanMode", "SpanState"],
    "text": ["decode_without_images", "strip_image_tokens"],
    "vq_decoder": _VQ_DECODER_NAMES,
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see; tests/test_lazy_imports.py keeps it equal to _EXPORTS
    from .constrained_generation import generate_with_images
    from .encoding import ImageEncoder, encode_images, to_rgb
    from .generation import (
        ImageSpanLogitsProcessor,
        disable_image_generation,
        enable_image_generation,
        is_image_generation_enabled,
    )
    from .image_vocabulary import (
        ImageSegment,
        ImageSegments,
        ImageVocabulary,
        check_image_vocabulary,
        unwrap_model,
    )
    from .loading import CheckpointError, check_checkpoint, freeze_vq_model, load_omni_model, resolve_device
    from .precision import exact_float32_convolutions
    from .span_constraint import ImageSpanConstraint, SpanMode, SpanState
    from .text import decode_without_images, strip_image_tokens
    from .vq_decoder import (
        ChameleonVQDecoder,
        MissingVQDecoderWeightsError,
        PaletteDecoder,
        VQImageDecoder,
        decode_images,
        load_vq_decoder,
        palette_codebook,
        read_vq_decoder_state_dict,
        uniform_palette,
    )
