"""trl-omni: train unified-token multimodal models (Chameleon / Anole) to reason by drawing, on top of TRL.

The public names below are imported on first access (like TRL's package root): `import trl_omni` loads neither torch
nor transformers nor TRL, and `trl_omni.PeSFTTrainer` imports what it needs when it is first read.
"""

from typing import TYPE_CHECKING

from .models import __all__ as _CORE_NAMES
from .utils.imports import lazy_exports


__version__ = "0.1.0.dev0"

# Submodule -> the public names it provides at the package root (the image-token core's are all of `models.__all__`).
_EXPORTS = {
    "collators": ["InterleavedDataCollator"],
    "data": [
        "BootstrapConfig",
        "DatasetFormatError",
        "InterleavedDataError",
        "SkipReport",
        "bootstrap_dataset",
        "convert_m3cot",
        "convert_omni_bench",
        "convert_zebra_cot",
        "drop_overlong_rows",
        "image_part",
        "interleaved_features",
        "load_bootstrapped",
        "pretokenize_images",
        "run_bootstrap",
        "text_part",
    ],
    "evaluation": ["EvalConfig", "EvalResult", "evaluate"],
    "models": _CORE_NAMES,
    "rewards": [
        "ModelReward",
        "PerceptionCalibratedReward",
        "PerceptionReward",
        "RewardError",
        "accuracy_reward",
        "format_reward",
        "get_reward",
        "list_rewards",
        "make_accuracy_reward",
        "make_format_reward",
        "safe_reward",
    ],
    "trainers": ["PerceptionHead", "PeRPOConfig", "PeRPOTrainer", "PeSFTConfig", "PeSFTTrainer"],
    "visualization": [
        "FalseColorDecoder",
        "RenderedTrajectoriesCallback",
        "TrajectoryLogger",
        "render_trajectories",
        "render_trajectory",
    ],
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, eager=["__version__"])

if TYPE_CHECKING:  # what type checkers and IDEs see; tests/test_lazy_imports.py keeps it equal to _EXPORTS
    from .collators import InterleavedDataCollator
    from .data import (
        BootstrapConfig,
        DatasetFormatError,
        InterleavedDataError,
        SkipReport,
        bootstrap_dataset,
        convert_m3cot,
        convert_omni_bench,
        convert_zebra_cot,
        drop_overlong_rows,
        image_part,
        interleaved_features,
        load_bootstrapped,
        pretokenize_images,
        run_bootstrap,
        text_part,
    )
    from .evaluation import EvalConfig, EvalResult, evaluate
    from .models import (
        ChameleonVQDecoder,
        CheckpointError,
        ImageEncoder,
        ImageSegment,
        ImageSegments,
        ImageSpanConstraint,
        ImageSpanLogitsProcessor,
        ImageVocabulary,
        MissingVQDecoderWeightsError,
        PaletteDecoder,
        SpanMode,
        SpanState,
        VQImageDecoder,
        check_checkpoint,
        check_image_vocabulary,
        decode_images,
        decode_without_images,
        disable_image_generation,
        enable_image_generation,
        encode_images,
        exact_float32_convolutions,
        freeze_vq_model,
        generate_with_images,
        is_image_generation_enabled,
        load_omni_model,
        load_vq_decoder,
        palette_codebook,
        read_vq_decoder_state_dict,
        resolve_device,
        strip_image_tokens,
        to_rgb,
        uniform_palette,
        unwrap_model,
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
    from .trainers import PerceptionHead, PeRPOConfig, PeRPOTrainer, PeSFTConfig, PeSFTTrainer
    from .visualization import (
        FalseColorDecoder,
        RenderedTrajectoriesCallback,
        TrajectoryLogger,
        render_trajectories,
        render_trajectory,
    )
