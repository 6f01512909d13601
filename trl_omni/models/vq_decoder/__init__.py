"""Turning image codes back into pixels: a VQGAN decoder for Chameleon / Anole, and an exact palette decoder.

Modules: `network` ([`ChameleonVQDecoder`], built from the model's `vq_config`), `checkpoint` (the key layouts of
the released checkpoints, [`read_vq_decoder_state_dict`], [`load_vq_decoder`]), `decoding` ([`decode_images`],
[`VQImageDecoder`]) and `palette` ([`PaletteDecoder`], [`palette_codebook`], [`uniform_palette`]).
"""

from .checkpoint import KEY_PREFIXES, MissingVQDecoderWeightsError, load_vq_decoder, read_vq_decoder_state_dict
from .decoding import VQImageDecoder, decode_images
from .network import ChameleonVQDecoder
from .palette import PaletteDecoder, palette_codebook, uniform_palette


__all__ = [
    "KEY_PREFIXES",
    "ChameleonVQDecoder",
    "MissingVQDecoderWeightsError",
    "PaletteDecoder",
    "VQImageDecoder",
    "decode_images",
    "load_vq_decoder",
    "palette_codebook",
    "read_vq_decoder_state_dict",
    "uniform_palette",
]
