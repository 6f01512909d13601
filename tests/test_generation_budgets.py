"""Generation budgets are derived from the model's image span or checked against it, on the real-layout Anole."""

import pytest
import torch
from datasets import Dataset

from trl_omni import ImageSpanLogitsProcessor, ImageVocabulary, load_omni_model
from trl_omni.testing_data import interleaved_rows
from trl_omni.trainers import PeRPOConfig, PeRPOTrainer, PeSFTConfig, PeSFTTrainer


@pytest.fixture(scope="module")
def anole_copy(anole):
    """A copy of the real-layout Anole the trainers may modify (they register a perception head on it)."""
    return load_omni_model(anole.path)


def common(tmp_path, **overrides):
    return dict(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to="none", max_steps=1, **overrides)


def test_span_processor_requires_the_generate_budget(vocab):
    with pytest.raises(TypeError, match="max_new_tokens"):
        ImageSpanLogitsProcessor(vocab)
    for bad in (0, True, 2.5, "100"):
        with pytest.raises(ValueError, match="max_new_tokens"):
            ImageSpanLogitsProcessor(vocab, max_new_tokens=bad)
    assert ImageSpanLogitsProcessor(vocab, max_new_tokens=None).max_new_tokens is None


def test_budget_leaves_no_room_for_a_cut_image(anole, vocab):
    """With the generate call's budget, an image is opened only while a whole span fits; the last tokens are text."""
    anole_vocab = ImageVocabulary.from_model(anole.model, anole.processor)
    assert anole_vocab.generation_budget(num_images=2, text_tokens=512) == 2 * 1026 + 512
    assert vocab.generation_budget(num_images=2, text_tokens=512) == 2 * vocab.span_length + 512
    budget = anole_vocab.span_length + 3
    constraint = ImageSpanLogitsProcessor(anole_vocab, max_new_tokens=budget)
    prompt = torch.tensor([[0, 5000, 6000]])
    scores = torch.zeros(1, anole_vocab.vocab_size)
    ids = prompt
    for step in range(budget):
        biased = constraint(ids, scores.clone())
        boi_allowed = bool(torch.isfinite(biased[0, anole_vocab.boi_token_id]))
        assert boi_allowed == (budget - step >= anole_vocab.span_length), step
        ids = torch.cat([ids, torch.tensor([[17000]])], dim=1)  # stay in text


def test_pesft_rendered_answer_budget_is_derived_or_checked(anole_copy, tmp_path):
    model, processor = anole_copy
    vocab = ImageVocabulary.from_model(model, processor)
    rows = Dataset.from_list(interleaved_rows(vocab, num_rows=2, completion_images=1, text_words=(3, 5), seed=0))
    trainer = PeSFTTrainer(model, args=PeSFTConfig(**common(tmp_path)), train_dataset=rows, processing_class=processor)
    assert trainer._eval_generation_budget == 1026 + 256

    too_small = PeSFTConfig(**common(tmp_path, eval_generation_max_new_tokens=1024))
    with pytest.raises(ValueError, match=r"eval_generation_max_new_tokens=1024 .* an image takes 1026 tokens"):
        PeSFTTrainer(model, args=too_small, train_dataset=rows, processing_class=processor)
    text_only = PeSFTConfig(**common(tmp_path, eval_generation_max_new_tokens=1024, log_rendered_trajectories=0))
    assert PeSFTTrainer(model, args=text_only, train_dataset=rows, processing_class=processor)


def test_perpo_refuses_a_completion_budget_without_room_for_one_image(anole_copy, tmp_path):
    model, processor = anole_copy
    prompts = Dataset.from_dict({"prompt": ["Draw it."] * 2})
    args = PeRPOConfig(**common(tmp_path, num_generations=2, per_device_train_batch_size=2))
    assert args.max_completion_length == 512  # TRL's default: no room for an Anole image
    with pytest.raises(ValueError, match=r"max_completion_length=512 cannot hold one image: .* takes 1026 tokens"):
        PeRPOTrainer(model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                     train_dataset=prompts, processing_class=processor)  # fmt: skip


def test_eval_budget_holds_images_of_the_model_or_is_refused(anole, vocab, tmp_path):
    from trl_omni.evaluation import EvalConfig, evaluate

    anole_vocab = ImageVocabulary.from_model(anole.model, anole.processor)
    assert EvalConfig().max_new_tokens is None
    assert EvalConfig().generation_budget(anole_vocab) == 2 * 1026 + 512  # room for two Anole images + text
    assert EvalConfig().generation_budget(vocab) == 2 * vocab.span_length + 512  # the tiny model's own spans
    assert EvalConfig(max_images=3).generation_budget(anole_vocab) == 3 * 1026 + 512
    assert EvalConfig(max_images=0, max_new_tokens=100).generation_budget(anole_vocab) == 100  # text only
    # The old default (1,024) cannot hold one Anole image: refused before any row is generated.
    config = EvalConfig(output_dir=str(tmp_path), max_new_tokens=1024, progress=False)
    with pytest.raises(ValueError, match=r"max_new_tokens=1024 cannot hold one image .* 1026 tokens .* max_images=0"):
        evaluate(anole.model, anole.processor, [{"question": "Q?", "answer": "A"}], config)
    assert not (tmp_path / "predictions.jsonl").exists()
