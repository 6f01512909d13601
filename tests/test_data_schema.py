import pytest

from trl_omni.data import (
    InterleavedDataError,
    check_column_names,
    image_part,
    interleaved_features,
    load_image,
    normalize_parts,
    text_part,
)
from trl_omni.testing_data import make_image


def test_parts_have_every_key():
    assert text_part("hi") == {
        "type": "text", "text": "hi", "image": None, "path": None, "bytes": None, "base64": None, "codes": None
    }  # fmt: skip
    assert image_part(codes=(1, 2))["codes"] == [1, 2]
    with pytest.raises(ValueError, match="exactly one image source"):
        image_part(path="a.png", codes=[1])
    with pytest.raises(ValueError, match="exactly one image source"):
        image_part()


def test_normalize_parts_accepts_strings_and_partial_dicts():
    parts = normalize_parts(["Hello", {"type": "image", "codes": [3]}, {"text": "bye"}], 4, "prompt")
    assert [part["type"] for part in parts] == ["text", "image", "text"]
    assert parts[1]["codes"] == [3] and parts[2]["text"] == "bye"
    assert normalize_parts("only text", 0, "prompt") == [text_part("only text")]
    assert normalize_parts(None, 0, "completion") == []
    with pytest.raises(InterleavedDataError, match=r"Row 4, field 'prompt\[0\]'.*no image.*Fix:"):
        normalize_parts([{"type": "image"}], 4, "prompt")
    with pytest.raises(InterleavedDataError, match=r"field 'prompt\[0\]\.type'"):
        normalize_parts([{"type": "video", "text": "x"}], 4, "prompt")


def test_arrow_round_trip_with_and_without_features(tmp_path):
    from datasets import Dataset, load_from_disk

    image = make_image((8, 8), seed=1)
    rows = [
        {
            "id": "a",
            "prompt": [text_part("Q"), image_part(image=image)],
            "completion": [text_part("R")],
            "answer": "A",
        },
        {"id": "b", "prompt": [image_part(codes=[1, 2, 3])], "completion": [], "answer": None},
    ]
    typed = Dataset.from_list(rows, features=interleaved_features())
    typed = typed.map(lambda row: {"answer": (row["answer"] or "") + "!"})
    typed.save_to_disk(str(tmp_path / "typed"))
    loaded = load_from_disk(str(tmp_path / "typed"))
    assert loaded.features == typed.features
    assert loaded[0]["prompt"][0]["text"] == "Q" and loaded[1]["prompt"][0]["codes"] == [1, 2, 3]
    assert list(load_image(loaded[0]["prompt"][1], None, 0, "prompt[1]").getdata()) == list(image.getdata())
    # Plain from_list (no features) stores the PIL image as {"bytes", "path"}; it still loads.
    untyped = Dataset.from_list(rows)
    part = normalize_parts(untyped[0]["prompt"], 0, "prompt")[1]
    assert list(load_image(part, None, 0, "prompt[1]").getdata()) == list(image.getdata())


def test_reserved_columns():
    check_column_names(["prompt", "completion", "answer"])
    with pytest.raises(ValueError, match=r"\['images'\]"):
        check_column_names(["prompt", "images"])
