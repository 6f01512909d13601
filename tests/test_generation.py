import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from trl_omni import (
    ImageSpanLogitsProcessor,
    ImageVocabulary,
    disable_image_generation,
    enable_image_generation,
    is_image_generation_enabled,
)
from trl_omni.testing import tiny_chameleon


class _FavourImages(LogitsProcessor):
    """Test-only bias so the untrained tiny model opens images often (the constraint must still hold)."""

    def __init__(self, vocab, boost=6.0):
        self.vocab, self.boost = vocab, boost

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.vocab.boi_token_id] += self.boost
        scores[:, self.vocab.image_token_mask(scores.shape[-1], scores.device)] += 2.0
        return scores


def _prompts(processor, texts):
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True)


PROMPTS = ["Let me draw it", "zoom in on the red square", "hello", "THOUGHT 1:", "mark the object", "x"]


def _check_completions(vocab, completions, max_images=None):
    segs = vocab.parse_segments(completions)
    assert len(segs) > 0, "the test needs images to check"
    assert segs.complete.all(), f"incomplete segments: {segs.num_image_tokens[~segs.complete].tolist()}"
    assert (segs.stray_image_tokens == 0).all()
    # Exactly H*W codes between every BOI and EOI, nothing but codes inside.
    assert (segs.end - segs.start == vocab.span_length).all()
    if max_images is not None:
        assert (completions == vocab.boi_token_id).sum(dim=1).max() <= max_images
    return segs


@pytest.mark.parametrize("max_images", [None, 1, 2])
def test_generate_sampling_batched_kv_cache(tiny, vocab, max_images):
    model, processor = tiny
    inputs = _prompts(processor, PROMPTS)
    constraint = ImageSpanLogitsProcessor(vocab, max_images=max_images, max_new_tokens=240)
    torch.manual_seed(1)
    out = model.generate(
        **inputs,
        max_new_tokens=240,
        do_sample=True,
        use_cache=True,
        logits_processor=LogitsProcessorList([_FavourImages(vocab), constraint]),
    )
    completions = out[:, inputs["input_ids"].shape[1] :]
    _check_completions(vocab, completions, max_images)
    if max_images is None:
        assert (completions == vocab.boi_token_id).sum(dim=1).max() >= 3


def test_without_constraint_images_are_broken(tiny, vocab):
    """Proves the constraint test can fail: the same biased sampling without the processor corrupts images."""
    model, processor = tiny
    inputs = _prompts(processor, PROMPTS)
    torch.manual_seed(1)
    out = model.generate(
        **inputs, max_new_tokens=240, do_sample=True, logits_processor=LogitsProcessorList([_FavourImages(vocab)])
    )
    segs = vocab.parse_segments(out[:, inputs["input_ids"].shape[1] :])
    assert not (segs.complete.all() and (segs.stray_image_tokens == 0).all())


def test_budget_never_starts_an_image_that_cannot_finish(tiny, vocab):
    model, processor = tiny
    inputs = _prompts(processor, PROMPTS)
    budget = vocab.span_length + 20
    torch.manual_seed(2)
    out = model.generate(
        **inputs,
        max_new_tokens=budget,
        do_sample=True,
        logits_processor=LogitsProcessorList(
            [_FavourImages(vocab), ImageSpanLogitsProcessor(vocab, max_new_tokens=budget)]
        ),
    )
    segs = vocab.parse_segments(out[:, inputs["input_ids"].shape[1] :])
    assert segs.complete.all() and len(segs) >= 1


def test_prompt_ending_with_boi_draws_one_exact_image_and_prompt_images_do_not_count(tiny, vocab):
    model, processor = tiny
    prompt_image = vocab.image_span_ids(torch.arange(64) % vocab.num_codes)
    text = processor.tokenizer("Draw it:", return_tensors="pt").input_ids[0]
    prompt = torch.cat([prompt_image, text, torch.tensor([vocab.boi_token_id])]).repeat(4, 1)
    constraint = ImageSpanLogitsProcessor(vocab, max_images=1, max_new_tokens=vocab.tokens_per_image + 10)
    torch.manual_seed(3)
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=vocab.tokens_per_image + 10,
        do_sample=True,
        logits_processor=LogitsProcessorList([_FavourImages(vocab), constraint]),
    )
    completions = out[:, prompt.shape[1] :]
    codes = vocab.ids_to_codes(completions[:, : vocab.tokens_per_image])
    assert (codes >= 0).all()
    assert (completions[:, vocab.tokens_per_image] == vocab.eoi_token_id).all()
    # The continued image counts as the one allowed image (it was opened by the prompt's BOI, not generated):
    # after it no new BOI may appear even though _FavourImages pushes for it.
    assert ((completions[:, vocab.tokens_per_image + 1 :] == vocab.boi_token_id).sum(dim=1) <= 1).all()


def test_processor_is_reusable_across_generate_calls(tiny, vocab):
    model, processor = tiny
    constraint = ImageSpanLogitsProcessor(vocab, max_images=1, max_new_tokens=150)
    processors = LogitsProcessorList([_FavourImages(vocab), constraint])
    for seed, texts in [(4, PROMPTS[:4]), (5, PROMPTS[2:])]:
        inputs = _prompts(processor, texts)
        torch.manual_seed(seed)
        out = model.generate(**inputs, max_new_tokens=150, do_sample=True, logits_processor=processors)
        _check_completions(vocab, out[:, inputs["input_ids"].shape[1] :], max_images=1)


def test_allow_images_false_generates_text_only(tiny, vocab):
    model, processor = tiny
    inputs = _prompts(processor, PROMPTS)
    torch.manual_seed(6)
    out = model.generate(
        **inputs,
        max_new_tokens=60,
        do_sample=True,
        logits_processor=LogitsProcessorList(
            [_FavourImages(vocab), ImageSpanLogitsProcessor(vocab, max_new_tokens=60, allow_images=False)]
        ),
    )
    completions = out[:, inputs["input_ids"].shape[1] :]
    assert not vocab.is_image_token(completions).any()
    assert not (completions == vocab.boi_token_id).any()


def test_processor_state_unit(vocab):
    """Direct check of the per-row mode logic on hand-built states."""
    constraint = ImageSpanLogitsProcessor(vocab, max_images=1, max_new_tokens=None)
    ids_img = vocab.codes_to_ids(torch.zeros(vocab.tokens_per_image, dtype=torch.long)).tolist()
    text_row = [20, 21, 22]
    rows = torch.tensor(
        [
            [20] * 67 + text_row,  # text mode
            [20] * 66 + [22, vocab.boi_token_id, *ids_img[:2]],  # drawing
            [20] * 4 + [22, vocab.boi_token_id, *ids_img],  # image full -> EOI forced
        ]
    )
    scores = torch.zeros(3, vocab.vocab_size)
    out = constraint(rows, scores)
    image = vocab.image_token_mask(vocab.vocab_size)
    assert torch.isinf(out[0, image]).all() and torch.isfinite(out[0, ~image][:5]).all()
    assert torch.isinf(out[0, vocab.eoi_token_id]) and torch.isfinite(out[0, vocab.boi_token_id])
    assert torch.isfinite(out[1, image]).all() and torch.isinf(out[1, ~image]).all()
    assert torch.isfinite(out[2, vocab.eoi_token_id]) and torch.isinf(out[2]).sum() == vocab.vocab_size - 1


def test_training_forward_finite_on_image_labels_only_after_enablement():
    model, processor = tiny_chameleon(seed=0, enable_generation=False)
    vocab = ImageVocabulary.from_model(model, processor)
    span = vocab.image_span_ids(torch.arange(64) % vocab.num_codes)
    ids = torch.cat([torch.tensor([20, 21]), span]).unsqueeze(0)
    assert not is_image_generation_enabled(model)
    stock = model(input_ids=ids, labels=ids).loss
    assert torch.isinf(stock) or torch.isnan(stock) or stock > 1e30
    enable_image_generation(model)
    enable_image_generation(model)  # idempotent
    assert is_image_generation_enabled(model)
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss) and loss < 20
    # The id <-> code tables the model derives from its image-token list are untouched.
    assert ImageVocabulary.from_model(model, processor).image_token_ids.tolist() == vocab.image_token_ids.tolist()
    loss.backward()
    assert model.lm_head.weight.grad[vocab.image_token_ids].abs().sum() > 0
    disable_image_generation(model)
    assert not torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_enablement_swaps_the_mapping_without_touching_the_stock_one():
    """The mask list is emptied on a stand-in mapping; the stock mapping (and its cached properties) stay as they
    were, the stand-in answers every table from it, and disabling puts the same stock object back."""
    import copy

    model, processor = tiny_chameleon(seed=0, enable_generation=False)
    stock = model.model.vocabulary_mapping
    image_tokens = list(stock.image_tokens)
    assert len(image_tokens) == 64
    enable_image_generation(model)
    mapping = model.model.vocabulary_mapping
    assert mapping is not stock and mapping.stock is stock
    assert mapping.image_tokens == [] and stock.image_tokens == image_tokens  # nothing shadowed on the stock object
    assert mapping.bpe2img == stock.bpe2img and len(mapping.bpe2img) == 64
    codes = torch.arange(64)
    assert torch.equal(mapping.convert_img2bpe(codes), stock.convert_img2bpe(codes))
    assert mapping.image_token_id == stock.image_token_id
    # A copied model (e.g. a reference model) keeps drawing.
    assert is_image_generation_enabled(copy.deepcopy(model))
    disable_image_generation(model)
    assert model.model.vocabulary_mapping is stock and not is_image_generation_enabled(model)


def test_enablement_through_a_peft_wrapper():
    from peft import LoraConfig, get_peft_model

    model, processor = tiny_chameleon(seed=0, enable_generation=False)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    enable_image_generation(peft_model)
    assert is_image_generation_enabled(model) and is_image_generation_enabled(peft_model)
    vocab = ImageVocabulary.from_model(peft_model, processor)
    span = vocab.image_span_ids(torch.arange(64) % vocab.num_codes)
    ids = torch.cat([torch.tensor([20, 21]), span]).unsqueeze(0)
    assert torch.isfinite(peft_model(input_ids=ids, labels=ids).loss)
    disable_image_generation(peft_model)
    assert not is_image_generation_enabled(model)
