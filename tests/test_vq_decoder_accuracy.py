"""ChameleonVQDecoder: float32 as exact as the network allows at 512 px, and uint8 levels exactly the authors'."""

import copy

import numpy as np
import pytest
import torch

from trl_omni import ImageVocabulary
from trl_omni.models import ChameleonVQDecoder, decode_images, load_vq_decoder


def test_float32_decoder_is_within_1e4_of_float64_at_512_pixels(anole):
    """No layout trick may cost accuracy: channels_last GroupNorm on CPU was ~3e-4 off here (~2e-3 at Anole width)."""
    vocab = ImageVocabulary.from_model(anole.model, anole.processor)
    decoder = load_vq_decoder(anole.model, anole.path, image_processor=anole.processor.image_processor)
    assert next(decoder.parameters()).dtype == torch.float32
    reference = copy.deepcopy(decoder).double()
    codes = torch.randint(0, vocab.num_codes, (1, *vocab.grid_size), generator=torch.Generator().manual_seed(0))
    latents = vocab.codebook[codes].permute(0, 3, 1, 2)
    with torch.no_grad():
        pixels = decoder(latents)
        exact = reference(latents.double())
    assert pixels.shape == (1, 3, 512, 512)
    error = float((pixels.double() - exact).abs().max())
    assert error < 1e-4, f"max abs error {error:.2e} against float64"
    assert float(exact.abs().max()) > 0.5  # a real signal, not vanishing activations


def authors_postprocess(pixels: np.ndarray, rescale_factor: float, mean: float = 1.0, std: float = 1.0) -> np.ndarray:
    """The Omni-R1 release's uint8 conversion, written independently in numpy float32: unnormalise, multiply by
    1 / rescale_factor, clip to [0, 255], cast (which truncates)."""
    values = pixels.astype(np.float32) * np.float32(std) + np.float32(mean)
    values = values * np.float32(1.0 / rescale_factor)
    return np.clip(values, 0, 255).astype(np.uint8)


def test_uint8_levels_truncate_like_the_authors_by_default_and_round_on_request(tiny):
    model, processor = tiny
    rescale = processor.image_processor.rescale_factor
    decoder = ChameleonVQDecoder(model.config.vq_config, processor.image_processor)
    assert decoder.pixel_rounding == "truncate"
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 16, 16, generator=generator) * 2.4 - 1.2  # beyond [-1, 1]: clamping matters too
    # Hand-picked levels: 100.7 truncates to 100 and rounds to 101, 254.6 to 254 and 255; out of range clamps.
    targets = torch.tensor([100.7, 37.3, -5.0, 300.0, 254.6])
    pixels[0, 0, 0, : targets.numel()] = targets * rescale - 1.0

    levels = decoder.to_uint8(pixels)
    np.testing.assert_array_equal(levels.numpy(), authors_postprocess(pixels.numpy(), rescale))
    assert levels[0, 0, 0, :5].tolist() == [100, 37, 0, 255, 254]
    rounded = ChameleonVQDecoder(model.config.vq_config, processor.image_processor, pixel_rounding="round")
    assert rounded.to_uint8(pixels)[0, 0, 0, :5].tolist() == [101, 37, 0, 255, 255]
    # About half of all values differ by one level between the two conventions, never by more.
    difference = rounded.to_uint8(pixels).int() - levels.int()
    assert difference.min() >= 0 and difference.max() == 1 and 0.3 < float((difference == 1).float().mean()) < 0.7

    # decode_images and to_pil use the same conversion.
    vocab = ImageVocabulary.from_model(model, processor)
    codes = torch.randint(0, vocab.num_codes, (1, *vocab.grid_size), generator=generator)
    (image,) = decode_images(codes, decoder, vocab)
    with torch.no_grad():
        raw = decoder(vocab.codebook[codes].permute(0, 3, 1, 2))
    np.testing.assert_array_equal(np.asarray(image), authors_postprocess(raw.numpy(), rescale)[0].transpose(1, 2, 0))
    with pytest.raises(ValueError, match="pixel_rounding"):
        ChameleonVQDecoder(model.config.vq_config, pixel_rounding="nearest")
