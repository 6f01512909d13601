"""`PeRPOTrainer(reward_funcs=None)` trains with the perception-calibrated reward ."""

import math

from datasets import Dataset

from trl_omni.models import ImageVocabulary
from trl_omni.rewards import PerceptionCalibratedReward
from trl_omni.testing import tiny_chameleon
from trl_omni.trainers import PeRPOConfig, PeRPOTrainer


def test_default_reward_is_perception_calibrated(tmp_path):
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
    assert isinstance(trainer.reward_funcs[0].__wrapped__, PerceptionCalibratedReward)  # inside its SafeReward
    trainer.train()
    log = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert math.isfinite(log["loss"])
    assert 0 < log["perception/scored_frac"] <= 1 and 0 <= log["perception/score_min"] <= 1
