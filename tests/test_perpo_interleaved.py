"""PeRPOTrainer on rows in the interleaved schema: prompts (with images) laid out by the InterleavedDataCollator."""

import math

import pytest
import torch
from datasets import Dataset

from trl_omni import ImageVocabulary, PeRPOConfig, PeRPOTrainer
from trl_omni.testing import tiny_chameleon
from trl_omni.testing_data import interleaved_rows


def test_interleaved_prompts_with_images_and_the_default_calibrated_reward(tmp_path):
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    rows = interleaved_rows(vocab, num_rows=4, prompt_images=1, completion_images=0, text_words=(3, 6), seed=1)
    for i, row in enumerate(rows):
        row["answer"] = str(i)
    args = PeRPOConfig(
        output_dir=str(tmp_path), num_generations=2, per_device_train_batch_size=4, max_steps=1,
        max_completion_length=80, learning_rate=1e-2, bf16=False, use_cpu=True, report_to="none", logging_steps=1,
        save_strategy="no", seed=3, interleaved_template="templated",
        generation_kwargs={"sequence_bias": {(vocab.boi_token_id,): 8.0}},
    )  # fmt: skip
    trainer = PeRPOTrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)
    # The default reward reads the control tags by id, and scores on the trainer's device.
    reward = trainer.reward_funcs[0]
    assert reward.name == "perception_calibrated" and reward.perception.device == trainer.accelerator.device

    prompt_ids = trainer.encode_prompts(rows)
    expected = trainer._interleaved_prompts.encode_prompts(rows)
    assert prompt_ids == expected
    segments = vocab.parse_segments(prompt_ids)
    assert segments.complete.tolist() == [True] * 4  # each prompt image spliced in whole
    torch.testing.assert_close(
        segments.complete_codes.reshape(4, -1), torch.tensor([row["prompt"][-1]["codes"] for row in rows])
    )

    seen = {}
    original = trainer._calculate_rewards

    def spy(inputs, prompts, completions, completion_ids_list):
        seen["prompts"] = prompts
        return original(inputs, prompts, completions, completion_ids_list)

    trainer._calculate_rewards = spy
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    # Rewards see text prompts, with the images removed.
    assert all(isinstance(p, str) and "IMGIMG" not in p for p in seen["prompts"])
    log = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert math.isfinite(log["loss"]) and "rewards/perception_calibrated/mean" in log
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    # The rendered rollouts show each prompt's image next to what the policy wrote.
    pages = sorted((tmp_path / "rendered_trajectories").glob("step_*/*.html"))
    assert pages and all("prompt image 1" in page.read_text() for page in pages)


def test_rollouts_are_rendered_at_each_logging_step(tmp_path):
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    rows = [{"prompt": "Let me draw it.", "answer": "1"}] * 4
    args = PeRPOConfig(
        output_dir=str(tmp_path), num_generations=2, per_device_train_batch_size=4, max_steps=2,
        max_completion_length=80, bf16=False, use_cpu=True, report_to="none", logging_steps=1, save_strategy="no",
        log_rendered_trajectories=3, generation_kwargs={"sequence_bias": {(vocab.boi_token_id,): 8.0}},
    )  # fmt: skip

    def image_count(completion_ids, image_segments, **kwargs):
        return [float(sum(s.complete for s in segs)) for segs in image_segments]

    trainer = PeRPOTrainer(
        model, reward_funcs=image_count, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor
    )
    trainer.train()
    for step in (1, 2):
        pages = sorted((tmp_path / "rendered_trajectories").glob(f"step_{step:08d}/*.html"))
        assert 1 <= len(pages) <= 3, pages  # bounded per logging step
        html = pages[0].read_text()
        assert "image_count" in html  # the reward travels with the trajectory
    with pytest.raises(ValueError, match="log_rendered_trajectories"):
        PeRPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, log_rendered_trajectories=-1)
