import logging

import pytest
import torch

from trl_omni.collators import InterleavedDataCollator
from trl_omni.data import (
    InterleavedDataError,
    convert_zebra_cot,
    image_part,
    interleaved_features,
    pretokenize_images,
    text_part,
)
from trl_omni.models import ImageVocabulary
from trl_omni.models.encoding import ImageEncoder
from trl_omni.testing_data import image_to_base64, image_to_bytes, make_image, zebra_cot_rows


@pytest.fixture(scope="module")
def tiny_pre():
    from trl_omni.testing import tiny_chameleon

    model, processor = tiny_chameleon(seed=0)
    return model, processor, ImageVocabulary.from_model(model, processor)


def _dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows, features=interleaved_features())


def test_every_source_is_encoded_to_the_same_codes(tiny_pre, tmp_path):
    model, processor, vocab = tiny_pre
    image = make_image((36, 32), seed=2)
    (tmp_path / "sub").mkdir()
    image.save(tmp_path / "sub" / "a.png")
    expected = ImageEncoder(model, processor).encode([image])[0].tolist()
    rows = [
        {
            "id": "r0",
            "prompt": [text_part("Q"), image_part(image=image), image_part(path="sub/a.png")],
            "completion": [image_part(bytes=image_to_bytes(image)), image_part(base64=image_to_base64(image))],
            "answer": "A",
        }
    ]
    out = pretokenize_images(_dataset(rows), model, processor, image_root=tmp_path)
    parts = [part for part in out[0]["prompt"] + out[0]["completion"] if part["type"] == "image"]
    assert [part["codes"] for part in parts] == [expected] * 4
    # Raw sources are cleared by default, kept on request.
    assert all(part[key] is None for part in parts for key in ("image", "bytes", "base64", "path"))
    kept = pretokenize_images(_dataset(rows), model, processor, image_root=tmp_path, keep_raw_images=True)
    assert kept[0]["prompt"][2]["path"] == "sub/a.png" and kept[0]["prompt"][2]["codes"] == expected
    # The collator then needs no encoder.
    batch = InterleavedDataCollator(processor, vocab)(list(out))
    assert vocab.parse_segments(batch["input_ids"]).complete_codes.reshape(4, -1).tolist() == [expected] * 4


def test_cached_on_disk_never_reencodes(tiny_pre, tmp_path):
    from datasets import load_from_disk

    model, processor, _ = tiny_pre
    convert_zebra_cot(zebra_cot_rows(3)).save_to_disk(str(tmp_path / "zebra"))
    dataset = load_from_disk(str(tmp_path / "zebra"))
    encoder = ImageEncoder(model, processor)
    first = pretokenize_images(dataset, model, processor, image_encoder=encoder)
    assert encoder.num_images_encoded == 9
    second = pretokenize_images(load_from_disk(str(tmp_path / "zebra")), model, processor, image_encoder=encoder)
    assert encoder.num_images_encoded == 9  # read back from the datasets cache
    assert first[:] == second[:]
    other_model, other_processor = __import__("trl_omni.testing", fromlist=["x"]).tiny_chameleon(seed=1)
    other = ImageEncoder(other_model, other_processor)
    pretokenize_images(dataset, other_model, other_processor, image_encoder=other)
    assert other.num_images_encoded == 9  # a different VQ model changes the fingerprint


@pytest.mark.parametrize("path", ["../outside.png", "/etc/passwd", "sub/../../outside.png", "link.png"])
def test_path_escaping_the_root_is_refused(tiny_pre, tmp_path, path):
    model, processor, _ = tiny_pre
    root = tmp_path / "root"
    root.mkdir()
    make_image().save(tmp_path / "outside.png")
    (root / "link.png").symlink_to(tmp_path / "outside.png")  # a symbolic link leading out of the root
    rows = [{"id": "x", "prompt": [text_part("Q"), image_part(path=path)], "completion": [], "answer": "A"}]
    with pytest.raises(
        InterleavedDataError, match=r"Row 0 \(id='x'\), field 'prompt\[1\]\.path'.*outside the image root.*Fix:"
    ):
        pretokenize_images(_dataset(rows), model, processor, image_root=root)


def test_path_without_root_is_refused(tiny_pre):
    model, processor, _ = tiny_pre
    rows = [{"id": "x", "prompt": [image_part(path="a.png")], "completion": [], "answer": "A"}]
    with pytest.raises(InterleavedDataError, match="no image root is configured"):
        pretokenize_images(_dataset(rows), model, processor)


def test_undecodable_bytes_raise_or_are_skipped(tiny_pre, caplog):
    model, processor, _ = tiny_pre
    good = {"id": "g", "prompt": [text_part("Q"), image_part(image=make_image())], "completion": [], "answer": "A"}
    bad = {"id": "b", "prompt": [text_part("Q")], "completion": [image_part(bytes=b"not an image")], "answer": "A"}
    truncated = {
        "id": "t",
        "prompt": [image_part(bytes=image_to_bytes(make_image((64, 64)), "JPEG")[:200])],
        "completion": [],
        "answer": "A",
    }
    bad_base64 = {"id": "c", "prompt": [image_part(base64="***")], "completion": [], "answer": "A"}
    with pytest.raises(
        InterleavedDataError, match=r"Row 1 \(id='b'\), field 'completion\[0\]\.bytes'.*cannot be decoded.*Fix:"
    ):
        pretokenize_images(_dataset([good, bad]), model, processor)
    with pytest.raises(InterleavedDataError, match=r"Row 0 \(id='t'\), field 'prompt\[0\]\.bytes'"):
        pretokenize_images(_dataset([truncated]), model, processor)
    with pytest.raises(InterleavedDataError, match=r"Row 0 \(id='c'\), field 'prompt\[0\]\.base64'.*invalid base64"):
        pretokenize_images(_dataset([bad_base64]), model, processor)
    with caplog.at_level(logging.WARNING):
        out = pretokenize_images(_dataset([good, bad, truncated, good]), model, processor, on_error="skip")
    assert len(out) == 2 and out["id"] == ["g", "g"]
    assert "skipped 2 of 4 rows" in caplog.text and "rows [1, 2]" in caplog.text


def test_wrong_precomputed_codes_named(tiny_pre):
    model, processor, vocab = tiny_pre
    short = {"id": "s", "prompt": [image_part(codes=[0] * 10)], "completion": [], "answer": "A"}
    out_of_range = {"id": "o", "prompt": [image_part(codes=[vocab.num_codes] * 64)], "completion": [], "answer": "A"}
    expected = [r"has 10 codes.*needs exactly 64", r"codes lie in \[64, 64\].*in \[0, 64\)"]
    for row, problem in zip((short, out_of_range), expected):
        with pytest.raises(InterleavedDataError, match=rf"Row 0 \(id='.'\), field 'prompt\[0\]\.codes'.*{problem}"):
            pretokenize_images(_dataset([row]), model, processor)
    fine = {"id": "f", "prompt": [image_part(codes=list(range(64)))], "completion": [], "answer": "A"}
    assert pretokenize_images(_dataset([fine]), model, processor)[0]["prompt"][0]["codes"] == list(range(64))


def test_odd_images_are_encoded(tiny_pre):
    model, processor, _ = tiny_pre
    images = [make_image((32, 32), mode=mode, seed=i) for i, mode in enumerate(["L", "RGBA", "P", "I;16"])]
    images += [make_image((1, 1), seed=5), make_image((1500, 1100), seed=6)]
    rows = [{"id": str(i), "prompt": [image_part(bytes=image_to_bytes(im))], "completion": [], "answer": "A"}
            for i, im in enumerate(images)]  # fmt: skip
    out = pretokenize_images(_dataset(rows), model, processor, batch_size=4)
    codes = torch.tensor([row["prompt"][0]["codes"] for row in out])
    assert codes.shape == (6, 64)


def test_decompression_bomb_is_a_clear_error(tiny_pre, monkeypatch):
    from PIL import Image

    model, processor, _ = tiny_pre
    data = image_to_bytes(make_image((100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels > 2x the limit: refused by PIL
    rows = [{"id": "big", "prompt": [image_part(bytes=data)], "completion": [], "answer": "A"}]
    with pytest.raises(
        InterleavedDataError, match=r"Row 0 \(id='big'\), field 'prompt\[0\]\.bytes'.*too large.*MAX_IMAGE_PIXELS"
    ):
        pretokenize_images(_dataset(rows), model, processor)


def test_reserved_top_level_column_refused(tiny_pre):
    from datasets import Dataset

    model, processor, _ = tiny_pre
    dataset = Dataset.from_list([{"prompt": [text_part("Q")], "completion": [], "image": "x"}])
    with pytest.raises(ValueError, match="vision collator"):
        pretokenize_images(dataset, model, processor)
