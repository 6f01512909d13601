"""PeRPO at Anole's real layout (32x32-code images, 1,026-token spans, 65,536 ids): prompts that end with BOI ask for
a drawing, and the reward, the metrics and the rendered rollouts all see the image the completion finishes."""

import math

import pytest
from datasets import Dataset

from trl_omni import ImageVocabulary, PeRPOConfig, PeRPOTrainer
from trl_omni.rewards import PerceptionReward


# About a minute of CPU: a 1,030-token rollout and its loss over 65,536-wide logits.
pytestmark = pytest.mark.slow

PROMPT = "Draw the answer:<racm3:break>"


def test_boi_ending_prompts_are_scored_measured_and_rendered_as_one_image(anole, tmp_path):
    from trl_omni import load_omni_model

    model, processor = load_omni_model(anole.path)  # its own copy: training must not change the session's model
    vocab = ImageVocabulary.from_model(model, processor)
    # A text prompt whose last token is BOI (`<racm3:break>`) asks for a drawing (prompts given as `prompt_ids` that
    # end with BOI take the same path from tokenization on; see test_perpo_trainer.py for them).
    assert processor.tokenizer(PROMPT).input_ids[-1] == vocab.boi_token_id
    seen = []

    class Scorer(PerceptionReward):
        def __call__(self, prompts, completions, completion_ids, image_segments, **kwargs):
            seen.append([(s.start, s.complete, s.codes.numel()) for segs in image_segments for s in segs])
            return super().__call__(prompts, completions, completion_ids, **kwargs)

    args = PeRPOConfig(
        output_dir=str(tmp_path), num_generations=2, per_device_train_batch_size=2, max_steps=1,
        max_completion_length=vocab.span_length + 4,  # room for the one image the prompt opened, not a second
        bf16=False, use_cpu=True, report_to="none", logging_steps=1, save_strategy="no", seed=0,
        log_rendered_trajectories=2,
    )  # fmt: skip
    # The gather method skips building the 8,192 x 8,192 distance table: same formula, less work for 2 images.
    reward = Scorer(vocab, method="gather")
    trainer = PeRPOTrainer(
        model,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": [PROMPT]}),
        processing_class=processor,
    )
    assert trainer.perception_scorer is reward
    trainer.train()

    # The reward saw each rollout finish the image its prompt opened: one complete 1,024-code segment at start -1.
    assert seen == [[(-1, True, vocab.tokens_per_image)] * 2]
    log = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert math.isfinite(log["loss"])
    assert log["perception/scored_frac"] == 1.0 and 0 < log["perception/score_min"] <= 1
    assert log["images/per_completion"] == 1.0 and log["images/complete_rate"] == 1.0
    assert log["images/stray_tokens"] == 0.0

    pages = sorted((tmp_path / "rendered_trajectories").glob("step_*/*.html"))
    assert pages
    for page in pages:
        html = page.read_text()
        assert html.count("<img") >= 1 and "stray image token" not in html  # the drawn image, not dropped tokens
