import pytest
import torch
from PIL import Image

from trl_omni.models import ImageVocabulary
from trl_omni.models.encoding import ImageEncoder, encode_images, to_rgb
from trl_omni.testing_data import make_image


@pytest.fixture(scope="module")
def tiny_enc():
    from trl_omni.testing import tiny_chameleon

    model, processor = tiny_chameleon(seed=0)
    return model, processor, ImageEncoder(model, processor, batch_size=2)


def test_codes_agree_with_the_models_own_tokens(tiny_enc):
    model, processor, encoder = tiny_enc
    vocab = ImageVocabulary.from_model(model, processor)
    images = [make_image((32, 32), seed=s) for s in range(3)]
    codes = encoder.encode(images)
    assert codes.shape == (3, vocab.tokens_per_image) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < vocab.num_codes
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ids = model.model.get_image_tokens(pixel_values).long()
    assert torch.equal(vocab.codes_to_ids(codes), ids)
    # Batched (chunks of 2) equals one at a time; the function form agrees too.
    singles = torch.cat([encoder.encode([image]) for image in images])
    assert torch.equal(codes, singles)
    assert torch.equal(encode_images(model, processor, images), codes)
    assert encoder.encode([]).shape == (0, vocab.tokens_per_image)


@pytest.mark.parametrize(
    "mode, size", [("L", (32, 32)), ("RGBA", (48, 32)), ("P", (32, 40)), ("I;16", (32, 32)), ("1", (33, 33))]
)
def test_any_mode_is_encoded(tiny_enc, mode, size):
    _, _, encoder = tiny_enc
    image = make_image(size, mode=mode, seed=1)
    assert image.mode == mode
    codes = encoder.encode([image])
    assert codes.shape == (1, 64)
    assert torch.equal(codes, encoder.encode([to_rgb(image)]))


def test_tiny_and_large_images(tiny_enc):
    _, _, encoder = tiny_enc
    one_pixel = Image.new("RGB", (1, 1), (200, 10, 10))
    large = make_image((1600, 1200), seed=3)
    wide = make_image((400, 20), seed=4)
    codes = encoder.encode([one_pixel, large, wide])
    assert codes.shape == (3, 64)
    # A 1x1 image is upsampled by the processor: it encodes like a uniform image of the same colour.
    assert torch.equal(codes[0], encoder.encode([Image.new("RGB", (32, 32), (200, 10, 10))])[0])


def test_to_rgb_composites_transparency_on_white():
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0))[0] == pytest.approx(127, abs=1)
    palette = Image.new("P", (2, 2), 0)
    palette.info["transparency"] = 0
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)
    deep = Image.fromarray(torch.tensor([[0, 1000], [2000, 4000]], dtype=torch.int32).numpy().astype("uint16"))
    assert to_rgb(deep).getpixel((1, 1)) == (255, 255, 255) and to_rgb(deep).getpixel((0, 0)) == (0, 0, 0)


def test_fingerprint_tracks_vq_weights(tiny_enc):
    from trl_omni.testing import tiny_chameleon

    model, processor, encoder = tiny_enc
    same = ImageEncoder(*tiny_chameleon(seed=0))
    other = ImageEncoder(*tiny_chameleon(seed=1))
    assert encoder.fingerprint() == same.fingerprint() != other.fingerprint()


def test_encodes_in_float32_whatever_the_model_dtype():
    """A checkpoint loaded in bfloat16 is encoded by a float32 copy of its VQ model (exact; on CPU bfloat16
    convolutions are also ~100x slower); the model itself is left as it is, and an explicit dtype is honoured."""
    from trl_omni.testing import tiny_chameleon

    model, processor = tiny_chameleon(seed=0)
    model.to(torch.bfloat16)
    images = [make_image((32, 32), seed=s) for s in range(2)]
    encoder = ImageEncoder(model, processor)
    assert encoder.dtype == torch.float32
    codes = encoder.encode(images)
    assert next(model.model.vqmodel.parameters()).dtype == torch.bfloat16  # not modified
    # The same weights, upcast exactly: the codes a float32 model gives.
    reference = tiny_chameleon(seed=0)[0].to(torch.bfloat16).to(torch.float32)
    assert torch.equal(codes, ImageEncoder(reference, processor).encode(images))

    bf16 = ImageEncoder(model, processor, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.encode(images).shape == codes.shape
    assert bf16.fingerprint() != encoder.fingerprint()  # the codes may differ: cached ones are not reused
    with pytest.raises(TypeError, match="dtype"):
        ImageEncoder(model, processor, dtype="float32")
