"""PeSFTTrainer on rows in the interleaved schema: the InterleavedDataCollator is picked without being passed."""

import math

import torch
from datasets import Dataset

from trl_omni import ImageVocabulary, InterleavedDataCollator, PeSFTConfig, PeSFTTrainer
from trl_omni.testing import tiny_chameleon
from trl_omni.testing_data import interleaved_rows


def test_interleaved_rows_use_the_interleaved_collator_by_default(tmp_path):
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    rows = interleaved_rows(vocab, num_rows=4, prompt_images=(0, 1), completion_images=(1, 2), text_words=(3, 8))
    args = PeSFTConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-3, bf16=False,
        use_cpu=True, report_to="none", logging_steps=1, save_strategy="no", interleaved_template="templated",
    )  # fmt: skip
    trainer = PeSFTTrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)
    assert isinstance(trainer.data_collator, InterleavedDataCollator)
    assert trainer.data_collator.template == "templated"

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    completion_codes = vocab.ids_to_codes(batch["labels"])
    expected = [
        code for row in rows[:2] for part in row["completion"] if part["type"] == "image" for code in part["codes"]
    ]
    assert completion_codes[completion_codes >= 0].tolist() == expected  # completion images trained, in order

    head_before = model.perception_head.weight.detach().clone()
    trainer.train()
    assert not torch.equal(model.perception_head.weight, head_before)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and all(math.isfinite(e["perception_loss"]) and e["image_tokens"] >= 64 for e in logs)


def test_evaluation_renders_a_few_constrained_answers(tmp_path):
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    rows = interleaved_rows(vocab, num_rows=4, prompt_images=1, completion_images=1, text_words=(3, 6))
    args = PeSFTConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, per_device_eval_batch_size=2, max_steps=1,
        bf16=False, use_cpu=True, report_to="none", save_strategy="no", log_rendered_trajectories=2,
        eval_generation_max_new_tokens=2 * vocab.span_length,
    )  # fmt: skip
    dataset = Dataset.from_list(rows)
    trainer = PeSFTTrainer(model, args=args, train_dataset=dataset, eval_dataset=dataset, processing_class=processor)
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"])
    pages = sorted((tmp_path / "rendered_trajectories").glob("step_*/*.html"))
    assert len(pages) == 2
    # Each answer is shown with its question as written (no template text) and its prompt image.
    page = pages[0].read_text()
    question = " ".join(part["text"].strip() for part in rows[0]["prompt"] if part["type"] == "text")
    assert f"eval row row-0: {question}" in page and "You are a helpful assistant" not in page
    assert page.count('alt="prompt image 1"') == 1
