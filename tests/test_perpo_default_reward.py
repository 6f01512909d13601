"""`PeRPOTrainer(reward_funcs=None)` trains with the perception-calibrated reward (runs once the rewards exist)."""

import math
import os

import pytest
import torch
from datasets import Dataset


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from trl_omni.models import ImageVocabulary  # noqa: E402
from trl_omni.testing import tiny_chameleon  # noqa: E402
from trl_omni.trainers import PeRPOConfig, PeRPOTrainer  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models: one intra-op thread avoids oversubscribing the few shared CPU cores (several times faster here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_default_reward_is_perception_calibrated(tmp_path):
    rewards = pytest.importorskip("trl_omni.rewards")
    if not hasattr(rewards, "PerceptionCalibratedReward"):
        pytest.skip("trl_omni.rewards.PerceptionCalibratedReward is not available yet")

    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    args = PeRPOConfig(
        output_dir=str(tmp_path),
        num_generations=2,
        per_device_train_batch_size=4,
        max_completion_length=80,
        max_steps=1,
        bf16=False,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        perception_reward_weight=0.2,
        perception_aggregation="mean",
        generation_kwargs={"sequence_bias": {(vocab.boi_token_id,): 8.0}},
    )
    dataset = Dataset.from_dict(
        {"prompt": ["What is shown in the image?", "Let me draw it."] * 2, "answer": ["A", "B"] * 2}
    )
    trainer = PeRPOTrainer(
        model=model, reward_funcs=None, args=args, train_dataset=dataset, processing_class=processor
    )
    assert len(trainer.reward_funcs) == 1
    assert isinstance(trainer.reward_funcs[0], rewards.PerceptionCalibratedReward)
    trainer.train()
    log = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert math.isfinite(log["loss"])
    assert 0 < log["perception/scored_frac"] <= 1 and 0 <= log["perception/score_min"] <= 1
