"""Turning image codes back into pixels: a VQGAN decoder for Chameleon / Anole, and an exact palette decoder.

Modules: `network` ([`ChameleonVQDecoder`], built from the model's `vq_config`), `checkpoint` (the key layouts of
the released checkpoints, [`read_vq_decoder_state_dict`], [`load_vq_decoder`]), `decoding` ([`decode_images`],
[`VQImageDecoder`]) and `palette` ([`PaletteDecoder`], [`palette_codebook`], [`uniform_palette`]). Names are imported
on first access, like the package root's.
"""

from typing import TYPE_CHECKING

from ...utils.imports import lazy_exports


# Submodule -> the public names it provides.
_EXPORTS = {
    "checkpoint": ["MissingVQDecoderWeightsError", "load_vq_decoder", "read_vq_decoder_state_dict"],
    "decoding": ["VQImageDecoder", "decode_images"],
    "network": ["ChameleonVQDecoder"],
    "palette": ["PaletteDecoder", "palette_codebook", "uniform_palette"],
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see; tests/test_lazy_imports.py keeps it equal to _EXPORTS
    from .checkpoint import MissingVQDecoderWeightsError, load_vq_decoder, read_vq_decoder_state_dict
    from .decoding import VQImageDecoder, decode_images
    from .network import ChameleonVQDecoder
    from .palette import PaletteDecoder, palette_codebook, uniform_palette
