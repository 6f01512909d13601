"""The image-token core: every image-token fact and operation used by the rest of trl-omni."""

from .constrained_generation import generate_with_images
from .encoding import ImageEncoder, encode_images, to_rgb
from .generation import (
    ImageSpanLogitsProcessor,
    disable_image_generation,
    enable_image_generation,
    is_image_generation_enabled,
)
from .image_vocabulary import ImageSegment, ImageSegments, ImageVocabulary, unwrap_model
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


__all__ = [
    "ChameleonVQDecoder",
    "CheckpointError",
    "ImageEncoder",
    "ImageSegment",
    "ImageSegments",
    "ImageSpanConstraint",
    "ImageSpanLogitsProcessor",
    "ImageVocabulary",
    "MissingVQDecoderWeightsError",
    "PaletteDecoder",
    "SpanMode",
    "SpanState",
    "VQImageDecoder",
    "check_checkpoint",
    "decode_images",
    "decode_without_images",
    "disable_image_generation",
    "enable_image_generation",
    "encode_images",
    "exact_float32_convolutions",
    "freeze_vq_model",
    "generate_with_images",
    "is_image_generation_enabled",
    "load_omni_model",
    "load_vq_decoder",
    "palette_codebook",
    "read_vq_decoder_state_dict",
    "resolve_device",
    "strip_image_tokens",
    "to_rgb",
    "uniform_palette",
    "unwrap_model",
]
