"""`PeRPOTrainer(reward_funcs=None)` trains with the perception-calibrated reward ."""

import math

import pytest
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


def test_format_style_and_one_perception_scorer_shared_with_the_metrics(tmp_path):
    """`format_style` reaches the default reward; its perception term is the trainer's scorer, and a step scores
    its images once (the metrics reuse the reward's scores)."""
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    args = PeRPOConfig(
        output_dir=str(tmp_path), num_generations=2, per_device_train_batch_size=4, max_completion_length=80,
        max_steps=1, bf16=False, use_cpu=True, report_to="none", logging_steps=1, save_strategy="no",
        format_style="thought", log_rendered_trajectories=0,
        generation_kwargs={"sequence_bias": {(vocab.boi_token_id,): 8.0}},
    )  # fmt: skip
    dataset = Dataset.from_dict({"prompt": ["Let me draw it."] * 4, "answer": ["B"] * 4})
    trainer = PeRPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    reward = trainer.reward_funcs[0]
    assert reward.format.__name__ == "format_thought_reward"
    assert reward.format(completions=["THOUGHT 0: look. Final Answer: B", "B"]) == [1.0, 0.0]
    assert trainer.perception_scorer is reward.perception

    scored = []
    image_scores = reward.perception.image_scores
    reward.perception.image_scores = lambda codes: scored.append(codes.shape[0]) or image_scores(codes)
    trainer.train()
    log = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert len(scored) == 1 and scored[0] > 0  # one scoring pass of the step's images, for reward and metrics
    assert (
        log["perception/scored_frac"] > 0 and log["perception_calibrated/with_image"] == log["perception/scored_frac"]
    )


def test_reward_settings_are_config_fields_and_cli_flags(tmp_path):
    from trl_omni.rewards.registry import build_reward_funcs
    from trl_omni.scripts.rl import make_parser
    from trl_omni.trainers.perpo_config import reward_options

    parser = make_parser()
    _, args, _ = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--bf16", "false", "--format_style", "thought", "--accuracy_rules", "omni_r1"]
    )
    assert (args.format_style, args.accuracy_rules) == ("thought", "omni_r1")
    assert reward_options(args) == {"format_style": "thought", "rules": "omni_r1"}
    help_text = parser.format_help()
    assert "--format_style {tags,thought}" in help_text and "--accuracy_rules {default,omni_r1}" in help_text
    with pytest.raises(ValueError, match="format_style"):
        PeRPOConfig(output_dir=str(tmp_path), bf16=False, format_style="xml")
    with pytest.raises(ValueError, match="accuracy_rules"):
        PeRPOConfig(output_dir=str(tmp_path), bf16=False, accuracy_rules="strict")

    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    (calibrated,) = build_reward_funcs(["perception_calibrated"], processor, vocab, {"format_style": "thought"})
    assert calibrated.format.__name__ == "format_thought_reward"
    # A setting that none of the named rewards takes is an error, not silently ignored.
    with pytest.raises(ValueError, match=r"format_style set, but none of the rewards \['accuracy'\]"):
        build_reward_funcs(["accuracy"], processor, vocab, {"format_style": "thought"})


def test_accuracy_rules_reach_the_default_reward(tmp_path):
    """`accuracy_rules="omni_r1"` gives the default reward the authors' cascade: equal number lists score 1 whatever
    the words there ("12 cats" for "12 birds"), while `default` refuses the answer."""
    model, processor = tiny_chameleon(seed=0)
    scores = {}
    for rules in ("default", "omni_r1"):
        args = PeRPOConfig(
            output_dir=str(tmp_path / rules), bf16=False, use_cpu=True, report_to="none", max_completion_length=80,
            num_generations=2, per_device_train_batch_size=2, accuracy_rules=rules,
        )  # fmt: skip
        trainer = PeRPOTrainer(
            model, args=args, train_dataset=Dataset.from_dict({"prompt": ["Q"] * 2}), processing_class=processor
        )
        accuracy = trainer.reward_funcs[0].accuracy
        scores[rules] = accuracy(
            prompts=["Q"], completions=["THOUGHT 0: count. Final Answer: 12 cats"], answer=["12 birds"]
        )
    assert scores == {"default": [0.0], "omni_r1": [1.0]}
