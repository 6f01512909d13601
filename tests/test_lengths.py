"""Lengths agree across stages: the collator measures rows without encoding them, PeSFT drops over-long rows once
per dataset (so batch size 1 trains), and the bootstrap bounds its rows to the SFT budget."""

import json
import math

import pytest
from datasets import Dataset

from trl_omni import ImageVocabulary, load_omni_model
from trl_omni.collators import InterleavedDataCollator
from trl_omni.data import drop_overlong_rows, image_part, text_part
from trl_omni.data.bootstrap import BootstrapConfig, load_bootstrapped, run_bootstrap
from trl_omni.data.schema import DatasetFormatError
from trl_omni.testing import tiny_chameleon
from trl_omni.testing_data import interleaved_rows, m3cot_rows
from trl_omni.trainers import PeSFTConfig, PeSFTTrainer


def test_sequence_lengths_match_the_collated_rows_at_anole_size(anole):
    vocab = ImageVocabulary.from_model(anole.model, anole.processor)
    rows = interleaved_rows(vocab, num_rows=3, prompt_images=(0, 1), completion_images=(1, 4), seed=1)
    for template in ("plain", "templated"):
        collator = InterleavedDataCollator(anole.processor, vocab, template=template)
        state = collator.rng.getstate()
        lengths = collator.sequence_lengths(rows)
        assert collator.rng.getstate() == state  # measuring does not change the lead phrases of later batches
        actual = collator(rows)["attention_mask"].sum(dim=1).tolist()
        assert all(length >= got for length, got in zip(lengths, actual))
        assert any(length > 4 * 1026 for length in lengths)  # real-size rows: spans of 1,026 tokens
        longest_only = InterleavedDataCollator(anole.processor, vocab, template=template,
                                               lead_phrases=(collator._longest_lead_phrase(),))  # fmt: skip
        assert longest_only(rows)["attention_mask"].sum(dim=1).tolist() == lengths  # exact for a fixed layout


def test_pesft_at_batch_size_one_drops_overlong_rows_before_batching(anole, tmp_path, caplog):
    model, processor = load_omni_model(anole.path)
    vocab = ImageVocabulary.from_model(model, processor)
    fits = interleaved_rows(vocab, num_rows=2, prompt_images=0, completion_images=1, text_words=(3, 6), seed=0)
    too_long = interleaved_rows(vocab, num_rows=1, prompt_images=1, completion_images=4, seed=1)[0]
    too_long["id"] = "five-images"  # 5 x 1,026 image tokens + text > 5,100
    rows = Dataset.from_list([fits[0], too_long, fits[1]])
    args = PeSFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=1, max_steps=2, learning_rate=1e-3,
                       bf16=False, use_cpu=True, report_to="none", logging_steps=1, save_strategy="no")  # fmt: skip
    assert args.max_length == 5100 and args.length_policy == "drop"
    trainer = PeSFTTrainer(model, args=args, train_dataset=rows, processing_class=processor)
    assert len(trainer.train_dataset) == 2 and "five-images" not in trainer.train_dataset["id"]
    assert "Dropped 1 of 3 train rows longer than max_length=5100 before batching" in caplog.text
    assert "five-images" in caplog.text
    trainer.train()  # the collator would have raised on a batch holding only the 5-image row
    assert trainer.data_collator.stats["dropped"] == 0
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(math.isfinite(entry["loss"]) for entry in logs)

    pretokenized = Dataset.from_dict({"input_ids": [[5] * 10, [5] * 30], "completion_mask": [[1] * 10, [1] * 30]})
    assert len(drop_overlong_rows(pretokenized, 20, name="pre")) == 1
    with pytest.raises(ValueError, match="Every pre row"):
        drop_overlong_rows(pretokenized, 5, name="pre")


def test_bootstrap_draws_only_what_fits_the_sft_budget(tmp_path):
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    rows = Dataset.from_list(m3cot_rows(1))
    common = dict(max_steps=3, disable_tqdm=True, seed=1, template="templated")
    full = run_bootstrap(BootstrapConfig(output_dir=str(tmp_path / "full"), max_length=None, **common),
                         model, processor, rows)  # fmt: skip
    assert full["counts"]["images_kept"] == 3 and full["counts"]["rows_shortened"] == 0
    collator = InterleavedDataCollator(processor, vocab, template="templated")
    (length,) = collator.sequence_lengths(load_bootstrapped(str(tmp_path / "full")).to_list())

    budget = length - 2 * vocab.span_length  # room for one drawing of three
    out = tmp_path / "bounded"
    bounded = run_bootstrap(BootstrapConfig(output_dir=str(out), max_length=budget, **common), model, processor, rows)
    counts = bounded["counts"]
    assert (counts["rows_shortened"], counts["images_skipped_for_length"], counts["images_drawn"]) == (1, 2, 1)
    (row,) = load_bootstrapped(str(out)).to_list()
    kinds = [part["type"] for part in row["completion"]]
    assert kinds == ["text", "image", "text", "text"]  # every step's text kept, one drawing
    assert InterleavedDataCollator(processor, vocab, template="templated", max_length=budget).keeps([row]) == [True]
    assert "1 rows drew fewer images" in (out / "README.md").read_text()
    assert json.loads((out / "manifest.json").read_text())["counts"]["rows_shortened"] == 1

    # A row too long even without drawings is dropped and counted; with nothing written, the run names why.
    text_only = length - 3 * vocab.span_length
    with pytest.raises(DatasetFormatError, match=r"1 were longer than --max_length=\d+ tokens even without drawings"):
        run_bootstrap(BootstrapConfig(output_dir=str(tmp_path / "drop"), max_length=text_only - 1, **common),
                      model, processor, rows)  # fmt: skip
    dropped = json.loads((tmp_path / "drop" / "manifest.json").read_text())["counts"]
    assert (dropped["samples_too_long"], dropped["rows_written"], dropped["images_drawn"]) == (1, 0, 0)


def test_bootstrap_budget_at_anole_size_keeps_the_question_image_and_three_drawings(anole, tmp_path):
    """5,100 tokens hold the question image and three drawings of 1,026 tokens, not four."""
    from trl_omni.data.bootstrap.worker import _Bootstrapper

    vocab = ImageVocabulary.from_model(anole.model, anole.processor)
    config = BootstrapConfig(output_dir=str(tmp_path), max_steps=4)
    assert config.max_length == 5100
    worker = _Bootstrapper(config, anole.model, anole.processor, Dataset.from_list([{"id": "x"}]))
    question = {
        "id": "q0",
        "prompt": [image_part(codes=[1] * vocab.tokens_per_image), text_part("Which object is on the left?")],
        "answer": "A",
    }
    steps = [["First I look at the row.", "Then I find the leftmost shape.", "It is the square.", "So A."]]
    counts = {"rows_shortened": 0, "images_skipped_for_length": 0, "samples_too_long": 0, "samples_dropped": 0}
    assert worker._drawable_steps([question], steps, counts) == [3]
    assert counts["rows_shortened"] == 1 and counts["images_skipped_for_length"] == 1
    # The row it writes trains under the shipped SFT budget (PeSFT's length pass keeps it); with four it would not.
    drawing = image_part(codes=[2] * vocab.tokens_per_image)
    sft = InterleavedDataCollator(anole.processor, vocab, template="templated", max_length=PeSFTConfig.max_length)
    for drawn, kept in ((3, True), (4, False)):
        completion = [part for i, text in enumerate(steps[0]) for part in [text_part(text)] + [drawing] * (i < drawn)]
        assert sft.keeps([{**question, "completion": completion}]) == [kept]
