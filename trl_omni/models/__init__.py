"""The image-token core: every image-token fact and operation used by the rest of trl-omni."""

from .encoding import ImageEncoder, encode_images, to_rgb
from .generation import (
    ImageSpanLogitsProcessor,
    disable_image_generation,
    enable_image_generation,
    is_image_generation_enabled,
)
from .image_vocabulary import ImageSegment, ImageSegments, ImageVocabulary, unwrap_model
from .loading import freeze_vq_model, load_omni_model


__all__ = [
    "ImageEncoder",
    "ImageSegment",
    "ImageSegments",
    "ImageSpanLogitsProcessor",
    "ImageVocabulary",
    "disable_image_generation",
    "encode_images",
    "enable_image_generation",
    "freeze_vq_model",
    "is_image_generation_enabled",
    "load_omni_model",
    "to_rgb",
    "unwrap_model",
]
