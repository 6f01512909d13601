import logging

import pytest
from PIL import Image

from trl_omni.data import (
    InterleavedDataError,
    convert_m3cot,
    convert_omni_bench,
    convert_zebra_cot,
    m3cot_row_to_interleaved,
    zebra_cot_row_to_interleaved,
)
from trl_omni.data.images import load_image
from trl_omni.testing_data import m3cot_rows, omni_bench_rows, zebra_cot_rows


def _pixels(image):
    return list(image.convert("RGB").getdata())


def test_zebra_cot_row_places_images_in_order():
    row = zebra_cot_rows(1, num_problem_images=2, num_reasoning_images=2)[0]
    out = zebra_cot_row_to_interleaved(row, 5)
    assert out["id"] == "zebra-cot-5" and out["answer"] == row["Final Answer"]
    kinds = [part["type"] for part in out["prompt"]]
    assert kinds == ["text", "image", "text", "image"]
    assert out["prompt"][0]["text"].startswith("Which cell")
    assert _pixels(out["prompt"][1]["image"]) == _pixels(row["problem_image_1"])
    assert _pixels(out["prompt"][3]["image"]) == _pixels(row["problem_image_2"])
    completion = out["completion"]
    assert [part["type"] for part in completion] == ["text", "image", "text", "image", "text"]
    assert completion[0]["text"].startswith("THOUGHT 0:") and "THOUGHT 2:" in completion[4]["text"]
    assert _pixels(completion[1]["image"]) == _pixels(row["reasoning_image_1"])
    assert _pixels(completion[3]["image"]) == _pixels(row["reasoning_image_2"])
    assert not any("<image_start>" in (part["text"] or "") for part in out["prompt"] + completion)


def test_zebra_cot_unreferenced_problem_image_goes_first():
    row = zebra_cot_rows(1, num_problem_images=1)[0]
    row["Question"] = "Which cell is red?"
    out = zebra_cot_row_to_interleaved(row, 0)
    assert [part["type"] for part in out["prompt"]] == ["image", "text"]


def test_convert_zebra_cot_dataset_keeps_image_bytes():
    from datasets import Dataset

    rows = zebra_cot_rows(3)
    dataset = convert_zebra_cot(Dataset.from_list(rows))
    assert dataset.column_names == ["prompt", "completion", "answer", "id", "source"]
    first = dataset[0]
    image = first["completion"][1]
    decoded = load_image(image, None, 0, "completion[1]")
    assert _pixels(decoded) == _pixels(rows[0]["reasoning_image_1"])
    assert [row["answer"] for row in dataset] == [row["Final Answer"] for row in rows]


def test_zebra_cot_missing_image_key():
    row = zebra_cot_rows(1, num_reasoning_images=2)[0]
    row["reasoning_image_2"] = None
    with pytest.raises(InterleavedDataError, match=r"Row 3, field 'Text Reasoning Trace'.*'reasoning_image_2'.*Fix:"):
        zebra_cot_row_to_interleaved(row, 3)
    row["Text Reasoning Trace"] += " <image_start>[reasoning_image_9]<image_end>"
    with pytest.raises(InterleavedDataError, match="reasoning_image_2|reasoning_image_9"):
        zebra_cot_row_to_interleaved(row, 3)


def test_zebra_cot_image_referenced_twice():
    row = zebra_cot_rows(1)[0]
    row["Text Reasoning Trace"] += " Again: <image_start>[problem_image_1]<image_end>"
    with pytest.raises(InterleavedDataError, match=r"Row 1, field 'Text Reasoning Trace'.*referenced twice"):
        zebra_cot_row_to_interleaved(row, 1)


@pytest.mark.parametrize("column", ["Question", "Final Answer"])
def test_zebra_cot_empty_question_or_answer(column):
    row = zebra_cot_rows(1)[0]
    row[column] = "   "
    with pytest.raises(InterleavedDataError, match=rf"Row 0, field '{column}'.*empty"):
        zebra_cot_row_to_interleaved(row, 0)


def test_convert_skip_counts_bad_rows(caplog):
    rows = zebra_cot_rows(4)
    rows[1]["Final Answer"] = ""
    rows[2]["reasoning_image_1"] = None
    with pytest.raises(InterleavedDataError, match="Row 1"):
        convert_zebra_cot(rows)
    with caplog.at_level(logging.WARNING):
        dataset = convert_zebra_cot(rows, on_error="skip")
    assert dataset["id"] == ["zebra-cot-0", "zebra-cot-3"]
    assert "skipped 2 of 4 rows" in caplog.text


def test_m3cot_row_layout():
    row = m3cot_rows(1)[0]
    out = m3cot_row_to_interleaved(row, 0)
    assert out["id"] == row["id"] and out["answer"] == row["answer"]
    assert [part["type"] for part in out["prompt"]] == ["image", "text"]
    assert out["prompt"][1]["text"] == (
        "The image shows three shapes in a row.\nQuestion: Which object is on the left?\nOptions:\n"
        "(A) the square\n(B) the circle\n(C) the triangle"
    )
    assert out["completion"][0]["text"] == row["rationale"]
    row["question"] = "Look: <image> Which object is on the left?"
    assert [part["type"] for part in m3cot_row_to_interleaved(row, 0)["prompt"]] == ["text", "image", "text"]


def test_convert_m3cot_dataset_keeps_metadata():
    dataset = convert_m3cot(m3cot_rows(3))
    assert {"category", "domain", "topic", "split", "image_id"} <= set(dataset.column_names)
    assert "image" not in dataset.column_names
    assert dataset[1]["prompt"][1]["text"].startswith("Question:")  # empty context is left out
    with pytest.raises(InterleavedDataError, match=r"Row 0 \(id='physical-commonsense-1000'\), field 'question'"):
        m3cot_row_to_interleaved({**m3cot_rows(1)[0], "question": ""}, 0)


def test_convert_omni_bench_keeps_base64_and_source_fields():
    rows = omni_bench_rows(3)
    dataset = convert_omni_bench(rows)
    assert dataset["source"] == [row["source"] for row in rows]
    assert dataset["dataset"] == [row["dataset"] for row in rows]
    prompt = dataset[0]["prompt"]
    assert [part["type"] for part in prompt] == ["image", "text"] and prompt[0]["base64"] == rows[0]["image"]
    assert dataset[0]["completion"] == [] and dataset[0]["answer"] == "10"
    assert isinstance(load_image(prompt[0], None, 0, "prompt[0]"), Image.Image)
    with pytest.raises(InterleavedDataError, match=r"Row 0, field 'image'"):
        convert_omni_bench([{**rows[0], "image": ""}])
