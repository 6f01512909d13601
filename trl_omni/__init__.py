"""trl-omni: train unified-token multimodal models (Chameleon / Anole) to reason by drawing, on top of TRL."""

__version__ = "0.1.0.dev0"

from .models import (
    ImageSegment,
    ImageSegments,
    ImageSpanLogitsProcessor,
    ImageVocabulary,
    disable_image_generation,
    enable_image_generation,
    freeze_vq_model,
    is_image_generation_enabled,
    load_omni_model,
)


__all__ = [
    "ImageSegment",
    "ImageSegments",
    "ImageSpanLogitsProcessor",
    "ImageVocabulary",
    "__version__",
    "disable_image_generation",
    "enable_image_generation",
    "freeze_vq_model",
    "is_image_generation_enabled",
    "load_omni_model",
]
