"""PeRPOTrainer on the tiny Chameleon: GRPO equivalence, image rollouts, reward inputs, metrics, edge cases."""

import inspect
import math
import re

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from trl_omni.models import ImageVocabulary
from trl_omni.testing import tiny_chameleon
from trl_omni.trainers import PeRPOConfig, PeRPOTrainer


PROMPTS = ["What is shown in the image?", "Let me draw it.", "The answer is A.", "I draw an auxiliary line."]
TRAINING = dict(
    num_generations=2,
    per_device_train_batch_size=4,
    max_steps=2,
    learning_rate=1e-2,
    bf16=False,
    use_cpu=True,
    report_to="none",
    logging_steps=1,
    save_strategy="no",
    gradient_checkpointing=False,
    seed=7,
)


def perpo_args(tmp_path, **overrides):
    return PeRPOConfig(output_dir=str(tmp_path), **{**TRAINING, "max_completion_length": 80, **overrides})


def draw_bias(vocab, bias=8.0):
    # Test-only nudge so that the untrained tiny model opens images: a bias on BOI through the generation config.
    return {"sequence_bias": {(vocab.boi_token_id,): bias}}


def trainable_snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def last_train_log(trainer):
    return [log for log in trainer.state.log_history if "loss" in log][-1]


class Recorder:
    """Reward that records what it receives; scores the number of complete images plus a little text length."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, completion_ids, image_segments, **kwargs):
        self.calls.append(
            {"prompts": prompts, "completions": completions, "ids": completion_ids, "segments": image_segments}
        )
        return [
            float(sum(s.complete for s in segments)) + 0.01 * len(text)
            for text, segments in zip(completions, image_segments)
        ]


def test_overridden_trl_methods_are_the_documented_ones():
    """Every GRPOTrainer method PeRPOTrainer overrides is listed, with its reason, in the class docstring: a new
    override has to be added there (and this list stays the surface to re-check on each TRL release)."""
    section = PeRPOTrainer.__doc__.split("Overridden TRL methods", 1)[1].split("\n\n    Args:", 1)[0]
    documented = set(re.findall(r"^    - `(\w+)`", section, flags=re.MULTILINE))
    overridden = {
        name
        for name, value in vars(PeRPOTrainer).items()
        if not name.startswith("__")
        and hasattr(GRPOTrainer, name)
        and (inspect.isfunction(value) or isinstance(value, (staticmethod, classmethod, property)))
    }
    expected = {
        "_generate_single_turn",
        "_tokenize_prompts",
        "_generate_and_score_completions",
        "_calculate_rewards",
        "compute_loss",
    }
    assert overridden == documented == expected


def test_constraint_through_the_forward_hook_samples_what_generate_would(tiny, vocab):
    """The hook PeRPO puts around TRL's `generate` gives the span processor exactly what `generate(logits_processor=)`
    gives it: same seed, same samples; the model is left without the hook."""
    from transformers import LogitsProcessorList

    from trl_omni.models import ImageSpanLogitsProcessor
    from trl_omni.trainers.perpo_sampling import next_token_logits_processed

    model, _ = tiny
    prompts = torch.tensor([[1, 20, 21, 22], [0, 1, 23, vocab.boi_token_id]])  # left-padded; row 1 opens an image
    inputs = {"input_ids": prompts, "attention_mask": (prompts != 0).long()}
    boi = {"sequence_bias": {(vocab.boi_token_id,): 8.0}}
    processor = ImageSpanLogitsProcessor(vocab, max_new_tokens=90)
    torch.manual_seed(3)
    expected = model.generate(
        **inputs, max_new_tokens=90, do_sample=True, logits_processor=LogitsProcessorList([processor]), **boi
    )
    torch.manual_seed(3)
    with next_token_logits_processed(model, processor):
        hooked = model.generate(**inputs, max_new_tokens=90, do_sample=True, **boi)
    assert torch.equal(hooked, expected)
    segments = vocab.parse_completions(hooked[:, prompts.shape[1] :].tolist())
    assert len(segments) >= 2 and bool(segments.complete.all()) and -1 in segments.start.tolist()
    assert not model._forward_hooks
    torch.manual_seed(3)
    free = model.generate(**inputs, max_new_tokens=90, do_sample=True, **boi)
    assert not torch.equal(free, expected)  # without the hook, sampling is unconstrained again


def test_equals_grpo_when_image_constraint_is_off(tmp_path):
    """Without the constraint and without a perception reward, PeRPO samples, scores and updates exactly as GRPO."""

    def run(trainer_cls, config_cls, **extra):
        model, processor = tiny_chameleon(seed=0)
        seen = []

        def ids_reward(completion_ids, **kwargs):
            seen.append([list(ids) for ids in completion_ids])
            return [float(sum(ids) % 13) for ids in completion_ids]

        def text_reward(completions, **kwargs):
            # Counts a lowercase letter: image-token strings (IMGIMG...Z) have none, so the stripped text scores alike.
            return [float(text.count("e")) for text in completions]

        config = dict(TRAINING, max_completion_length=24, **extra)
        args = config_cls(output_dir=str(tmp_path / trainer_cls.__name__), **config)
        dataset = Dataset.from_dict({"prompt": PROMPTS * 2})
        trainer = trainer_cls(
            model=model,
            reward_funcs=[ids_reward, text_reward],
            args=args,
            train_dataset=dataset,
            processing_class=processor.tokenizer,
        )
        trainer.train()
        rewards = [
            (log["rewards/ids_reward/mean"], log["rewards/text_reward/mean"])
            for log in trainer.state.log_history
            if "loss" in log
        ]
        return seen, rewards, {n: p.detach() for n, p in model.named_parameters()}

    grpo_seen, grpo_rewards, grpo_params = run(GRPOTrainer, GRPOConfig, epsilon_high=0.28)
    perpo_seen, perpo_rewards, perpo_params = run(PeRPOTrainer, PeRPOConfig, constrain_image_generation=False)

    assert perpo_seen == grpo_seen and len(grpo_seen) == 2
    assert perpo_rewards == grpo_rewards
    assert grpo_params.keys() == perpo_params.keys()
    for name, value in grpo_params.items():
        assert torch.equal(value, perpo_params[name]), name
    initial, _ = tiny_chameleon(seed=0)
    assert not torch.equal(initial.lm_head.weight, perpo_params["lm_head.weight"])  # the runs did update


def test_rollouts_draw_complete_images_and_rewards_see_segments(tmp_path):
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    recorder = Recorder()
    args = perpo_args(tmp_path, max_completion_length=100, generation_kwargs=draw_bias(vocab))
    trainer = PeRPOTrainer(
        model=model,
        reward_funcs=recorder,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 2}),
        processing_class=processor,
    )
    before = trainable_snapshot(model)
    trainer.train()

    num_segments = 0
    for call in recorder.calls:
        parsed = vocab.parse_segments(call["ids"])
        assert int(parsed.stray_image_tokens.sum()) == 0
        assert bool(parsed.complete.all())  # every image segment of every rollout is exactly H*W codes
        for ids, text, segments in zip(call["ids"], call["completions"], call["segments"]):
            assert "IMGIMG" not in text
            num_segments += len(segments)
            for segment in segments:
                assert segment.complete and segment.codes.numel() == vocab.tokens_per_image
                assert ids[segment.start] == vocab.boi_token_id and ids[segment.end - 1] == vocab.eoi_token_id
                assert torch.equal(
                    vocab.ids_to_codes(torch.tensor(ids[segment.start + 1 : segment.end - 1])), segment.codes
                )
    assert num_segments > 0

    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p)]
    assert "lm_head.weight" in changed and len(changed) > len(before) // 2
    assert not any("vqmodel" in n for n in before)  # the VQ tokenizer stays frozen

    log = last_train_log(trainer)
    for key in [
        "images/token_share",
        "images/per_completion",
        "images/complete_rate",
        "images/stray_tokens",
        "entropy/text",
        "entropy/image",
        "clip_ratio/text/region_mean",
        "clip_ratio/image/region_mean",
        "clip_ratio/image/low_mean",
        "clip_ratio/image/high_mean",
    ]:
        assert key in log and math.isfinite(log[key]), key
    assert 0 < log["images/token_share"] < 1
    assert log["images/complete_rate"] == 1.0
    assert log["images/per_completion"] >= 0.5
    assert math.isfinite(log["loss"])


def test_max_images_per_completion_caps_images(tmp_path):
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    recorder = Recorder()
    args = perpo_args(
        tmp_path,
        max_completion_length=140,
        max_images_per_completion=1,
        max_steps=1,
        generation_kwargs=draw_bias(vocab, bias=12.0),
    )
    PeRPOTrainer(
        model=model,
        reward_funcs=recorder,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 2}),
        processing_class=processor,
    ).train()
    counts = [len(segments) for call in recorder.calls for segments in call["segments"]]
    # 140 tokens hold two spans of 66; the strong BOI bias would open a second one without the cap.
    assert max(counts) == 1 and min(counts) == 1


class SmoothnessReward:
    """A test perception reward: share of horizontally equal neighbouring codes in the first complete image."""

    def __init__(self, vocab):
        self.vocab = vocab

    def score(self, completion_ids):
        parsed = self.vocab.parse_segments(completion_ids)
        scores = [None] * len(completion_ids)
        for row, codes in zip(parsed.complete_batch_index.tolist(), parsed.complete_codes):
            if scores[row] is None:
                scores[row] = float((codes[:, 1:] == codes[:, :-1]).float().mean())
        return scores

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        return [0.0 if s is None else s for s in self.score(completion_ids)]


def test_perception_metrics_from_a_scoring_reward(tmp_path):
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    args = perpo_args(tmp_path, max_completion_length=90, max_steps=1, generation_kwargs=draw_bias(vocab))
    trainer = PeRPOTrainer(
        model=model,
        reward_funcs=SmoothnessReward(vocab),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 2}),
        processing_class=processor,
    )
    trainer.train()
    log = last_train_log(trainer)
    assert 0 < log["perception/scored_frac"] <= 1
    assert 0 <= log["perception/score_min"] <= log["perception/score_mean"] <= 1


def test_error_when_completion_cannot_hold_an_image(tmp_path):
    model, processor = tiny_chameleon(seed=0)
    span = ImageVocabulary.from_model(model, processor).span_length
    dataset = Dataset.from_dict({"prompt": PROMPTS})
    with pytest.raises(ValueError, match=rf"cannot hold one image.*{span} tokens"):
        PeRPOTrainer(
            model=model,
            reward_funcs=Recorder(),
            args=perpo_args(tmp_path, max_completion_length=span - 1),
            train_dataset=dataset,
            processing_class=processor,
        )
    with pytest.raises(ValueError, match="vLLM"):
        PeRPOTrainer(
            model=model,
            reward_funcs=Recorder(),
            args=perpo_args(tmp_path, use_vllm=True),
            train_dataset=dataset,
            processing_class=processor,
        )
    # Text-only rollouts need no room for an image.
    PeRPOTrainer(
        model=model,
        reward_funcs=Recorder(),
        args=perpo_args(tmp_path, max_completion_length=span - 1, max_images_per_completion=0),
        train_dataset=dataset,
        processing_class=processor,
    )


def test_config_defaults_and_validation(tmp_path):
    args = PeRPOConfig(output_dir=str(tmp_path), bf16=False)
    assert (args.epsilon, args.epsilon_high, args.beta, args.loss_type) == (0.2, 0.28, 0.0, "dapo")
    assert (args.perception_tau, args.perception_mapping, args.perception_aggregation) == (3.0, "inverse", "min")
    assert args.perception_reward_weight == 0.05 and args.filter_degenerate_groups is False
    assert not hasattr(args, "tokens_per_image")
    for loss_type in ["grpo", "bnpo", "dr_grpo", "cispo", "sapo", "luspo", "vespo"]:
        assert PeRPOConfig(output_dir=str(tmp_path), bf16=False, loss_type=loss_type).loss_type == loss_type
    with pytest.raises(ValueError, match="max_images_per_completion"):
        PeRPOConfig(output_dir=str(tmp_path), bf16=False, max_images_per_completion=-1)
    with pytest.raises(ValueError, match="perception_mapping"):
        PeRPOConfig(output_dir=str(tmp_path), bf16=False, perception_mapping="linear")
    with pytest.raises(ValueError, match="perception_aggregation"):
        PeRPOConfig(output_dir=str(tmp_path), bf16=False, perception_aggregation="sum")


def test_text_only_completions_have_no_image_and_finite_loss(tmp_path):
    """A completion with no image: empty segment lists, no image metrics from nothing, finite loss."""
    model, processor = tiny_chameleon(seed=0)
    recorder = Recorder()
    args = perpo_args(tmp_path, max_completion_length=24, max_images_per_completion=0, max_steps=1, loss_type="grpo")
    trainer = PeRPOTrainer(
        model=model,
        reward_funcs=recorder,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 2}),
        processing_class=processor,
    )
    trainer.train()
    vocab = trainer.image_vocabulary
    for call in recorder.calls:
        assert all(segments == [] for segments in call["segments"])
        assert not any(bool(vocab.is_image_token(torch.tensor(ids)).any()) for ids in call["ids"])
    log = last_train_log(trainer)
    assert math.isfinite(log["loss"]) and log["images/token_share"] == 0 and log["images/per_completion"] == 0
    assert "images/complete_rate" not in log and "entropy/image" not in log
    assert math.isfinite(log["entropy/text"])


def test_reward_none_for_a_whole_group(tmp_path):
    """A reward returning None for every completion of a group: no crash, finite loss, that group filtered."""
    model, processor = tiny_chameleon(seed=0)

    def partial_reward(prompts, completion_ids, **kwargs):
        return [None if prompt == PROMPTS[0] else float(sum(ids) % 11) for prompt, ids in zip(prompts, completion_ids)]

    args = perpo_args(
        tmp_path, max_completion_length=24, max_images_per_completion=0, max_steps=1, filter_degenerate_groups=True
    )
    trainer = PeRPOTrainer(
        model=model,
        reward_funcs=partial_reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": [PROMPTS[0], PROMPTS[1]]}),
        processing_class=processor,
    )
    trainer.train()
    log = last_train_log(trainer)
    assert math.isfinite(log["loss"]) and math.isfinite(log["grad_norm"])
    assert log["filtered_groups/frac"] == 0.5  # the unscored group has no spread to learn from


class CapturingPeRPO(PeRPOTrainer):
    """Keeps the last generation batch handed to the loss (for assertions only)."""

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.captured = {"prompts": [row["prompt"] for row in inputs], **output}
        return output


def test_degenerate_groups_contribute_no_loss(tmp_path):
    model, processor = tiny_chameleon(seed=0)

    def half_constant(prompts, completion_ids, **kwargs):
        # Group of PROMPTS[0]: constant reward (zero spread); group of PROMPTS[1]: varying reward.
        return [1.0 if prompt == PROMPTS[0] else float(sum(ids) % 11) for prompt, ids in zip(prompts, completion_ids)]

    args = perpo_args(
        tmp_path,
        max_completion_length=24,
        max_images_per_completion=0,
        max_steps=1,
        filter_degenerate_groups=True,
    )
    # Two prompts, two generations each: one generation batch of 4 holds both groups.
    dataset = Dataset.from_dict({"prompt": [PROMPTS[0], PROMPTS[1]]})
    trainer = CapturingPeRPO(
        model=model, reward_funcs=half_constant, args=args, train_dataset=dataset, processing_class=processor
    )
    trainer.train()
    captured = trainer.captured
    constant = torch.tensor([p == PROMPTS[0] for p in captured["prompts"]])
    assert constant.any() and (~constant).any()
    assert captured["completion_mask"][constant].sum() == 0  # filtered rows carry no loss tokens
    assert captured["completion_mask"][~constant].sum() > 0
    assert int(captured["num_items_in_batch"]) == int(captured["completion_mask"].sum())
    assert torch.all(captured["advantages"][constant] == 0)
    log = last_train_log(trainer)
    assert log["filtered_groups/frac"] == 0.5 and math.isfinite(log["loss"])


def test_all_groups_degenerate_leaves_weights_unchanged(tmp_path):
    model, processor = tiny_chameleon(seed=0)
    args = perpo_args(
        tmp_path, max_completion_length=24, max_images_per_completion=0, max_steps=1, filter_degenerate_groups=True
    )
    trainer = PeRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kwargs: [1.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 2}),
        processing_class=processor,
    )
    before = trainable_snapshot(model)
    trainer.train()
    log = last_train_log(trainer)
    assert log["filtered_groups/frac"] == 1.0 and log["loss"] == 0.0
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


def test_prompt_ids_with_images_and_a_completion_cut_inside_an_image(tmp_path):
    """Pre-tokenized prompts with an image; a prompt that opens an image the length limit then cuts."""
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    tokenizer = processor.tokenizer
    codes = torch.arange(vocab.tokens_per_image) % vocab.num_codes
    image = vocab.image_span_ids(codes).tolist()
    with_image = tokenizer("Look:")["input_ids"] + image + tokenizer(" What is shown?")["input_ids"]
    opens_image = tokenizer("Draw it:")["input_ids"] + [vocab.boi_token_id]
    dataset = Dataset.from_dict({"prompt_ids": [with_image, opens_image] * 4})
    recorder = Recorder()
    # Text-only for new images, and 40 tokens: the open image gets 40 of its 64 codes, then the limit cuts it.
    args = perpo_args(tmp_path, max_completion_length=40, max_images_per_completion=0, max_steps=1)
    trainer = PeRPOTrainer(
        model=model, reward_funcs=recorder, args=args, train_dataset=dataset, processing_class=processor
    )
    trainer.train()

    call = recorder.calls[0]
    for prompt, ids, segments in zip(call["prompts"], call["ids"], call["segments"]):
        assert "IMGIMG" not in prompt
        if prompt.startswith("Draw"):
            assert len(ids) == 40 and bool(vocab.is_image_token(torch.tensor(ids)).all())
            (segment,) = segments
            assert segment.start == -1 and not segment.complete and segment.codes.numel() == 40
        else:
            assert prompt.startswith("Look") and segments == []
    log = last_train_log(trainer)
    assert math.isfinite(log["loss"]) and math.isfinite(log["grad_norm"])
    assert log["images/per_completion"] == 0.5 and log["images/complete_rate"] == 0.0


def test_prompt_ids_validation(tmp_path):
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    trainer = PeRPOTrainer(
        model=model,
        reward_funcs=Recorder(),
        args=perpo_args(tmp_path),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=processor,
    )
    text = processor.tokenizer("Look:")["input_ids"]
    image = vocab.image_span_ids(torch.zeros(vocab.tokens_per_image, dtype=torch.long)).tolist()
    assert trainer.encode_prompts([{"prompt": "a"}]) is None
    ids = trainer.encode_prompts([{"prompt_ids": text + image}, {"prompt_ids": None, "prompt": "Look:"}])
    assert ids == [text + image, text]
    cut = image[:10] + image[-1:]  # an image sliced in the middle
    with pytest.raises(ValueError, match=r"Row 1 .*cut \(9 of 64 codes\)"):
        trainer.encode_prompts([{"prompt_ids": text}, {"prompt_ids": text + cut + text}])
    with pytest.raises(ValueError, match="outside any BOI"):
        trainer.encode_prompts([{"prompt_ids": text + image[1:5]}])
    with pytest.raises(ValueError, match="outside"):
        trainer.encode_prompts([{"prompt_ids": [vocab.vocab_size + 3]}])


def test_full_finetune_with_kl_reference_reloaded_from_the_checkpoint(tmp_path):
    """beta > 0 without PEFT: TRL reloads the reference from the model path; its image logits must not be masked."""
    from trl_omni.models import is_image_generation_enabled, load_omni_model

    tiny_chameleon(seed=0, save_dir=tmp_path / "tiny")
    model, processor = load_omni_model(tmp_path / "tiny")
    vocab = ImageVocabulary.from_model(model, processor)
    args = perpo_args(tmp_path / "run", beta=0.04, max_steps=2, generation_kwargs=draw_bias(vocab))
    trainer = PeRPOTrainer(
        model=model,
        reward_funcs=Recorder(),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 2}),
        processing_class=processor,
    )
    assert trainer.ref_model is not None and is_image_generation_enabled(trainer.ref_model)
    trainer.train()
    log = last_train_log(trainer)
    assert log["images/token_share"] > 0  # the KL covers image tokens
    assert math.isfinite(log["kl"]) and log["kl"] > 0 and math.isfinite(log["loss"])


def test_evaluation_and_gradient_accumulation_with_filtering(tmp_path):
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    args = perpo_args(
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,  # one generation batch of 4 split over two micro-batches
        per_device_eval_batch_size=4,
        filter_degenerate_groups=True,
        generation_kwargs=draw_bias(vocab),
    )
    trainer = PeRPOTrainer(
        model=model,
        reward_funcs=Recorder(),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 2}),
        eval_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=processor,
    )
    trainer.train()
    log = last_train_log(trainer)
    assert math.isfinite(log["loss"]) and "filtered_groups/frac" in log
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"])
    assert metrics["eval_images/complete_rate"] == 1.0 and math.isfinite(metrics["eval_entropy/image"])
