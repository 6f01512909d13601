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
from .rewards import (
    ModelReward,
    PerceptionCalibratedReward,
    PerceptionReward,
    RewardError,
    accuracy_reward,
    format_reward,
    get_reward,
    list_rewards,
    make_accuracy_reward,
    make_format_reward,
    safe_reward,
)


__all__ = [
    "ImageEncoder",
    "ImageSegment",
    "ImageSegments",
    "ImageSpanLogitsProcessor",
    "ImageVocabulary",
    "InterleavedDataCollator",
    "InterleavedDataError",
    "ModelReward",
    "PerceptionCalibratedReward",
    "PerceptionReward",
    "RewardError",
    "__version__",
    "accuracy_reward",
    "convert_m3cot",
    "convert_omni_bench",
    "convert_zebra_cot",
    "disable_image_generation",
    "enable_image_generation",
    "encode_images",
    "format_reward",
    "freeze_vq_model",
    "get_reward",
    "image_part",
    "interleaved_features",
    "is_image_generation_enabled",
    "list_rewards",
    "load_omni_model",
    "make_accuracy_reward",
    "make_format_reward",
    "pretokenize_images",
    "safe_reward",
    "text_part",
]
