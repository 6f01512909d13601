"""The image-token core: every image-token fact and operation used by the rest of trl-omni."""

from .generation import (
    ImageSpanLogitsProcessor,
    disable_image_generation,
    enable_image_generation,
    is_image_generation_enabled,
)
from .image_vocabulary import ImageSegment, ImageSegments, ImageVocabulary, unwrap_model
from .loading import freeze_vq_model, load_omni_model


__all__ = [
    "ImageSegment",
    "ImageSegments",
    "ImageSpanLogitsProcessor",
    "ImageVocabulary",
    "disable_image_generation",
    "enable_image_generation",
    "freeze_vq_model",
    "is_image_generation_enabled",
    "load_omni_model",
    "unwrap_model",
]
