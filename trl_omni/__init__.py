"""trl-omni: train unified-token multimodal models (Chameleon / Anole) to reason by drawing, on top of TRL."""

__version__ = "0.1.0.dev0"

from .collators import InterleavedDataCollator
from .data import (
    InterleavedDataError,
    convert_m3cot,
    convert_omni_bench,
    convert_zebra_cot,
    image_part,
    interleaved_features,
    pretokenize_images,
    text_part,
)
from .models import (
    ImageEncoder,
    ImageSegment,
    ImageSegments,
    ImageSpanLogitsProcessor,
    ImageVocabulary,
    disable_image_generation,
    enable_image_generation,
    encode_images,
    freeze_vq_model,
    is_image_generation_enabled,
    load_omni_model,
)


__all__ = [
    "ImageEncoder",
    "ImageSegment",
    "ImageSegments",
    "ImageSpanLogitsProcessor",
    "ImageVocabulary",
    "InterleavedDataCollator",
    "InterleavedDataError",
    "__version__",
    "convert_m3cot",
    "convert_omni_bench",
    "convert_zebra_cot",
    "disable_image_generation",
    "enable_image_generation",
    "encode_images",
    "freeze_vq_model",
    "image_part",
    "interleaved_features",
    "is_image_generation_enabled",
    "load_omni_model",
    "pretokenize_images",
    "text_part",
]
