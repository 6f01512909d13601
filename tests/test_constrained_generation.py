"""`generate_with_images` (the one constrained-generation helper) and `decode_without_images` (the one way to read the
text of ids with images in them)."""

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from trl_omni.models import (
    ImageSpanLogitsProcessor,
    decode_without_images,
    generate_with_images,
    strip_image_tokens,
)


class _Recorder(LogitsProcessor):
    """Records the scores it is handed and passes them on unchanged."""

    def __init__(self):
        self.seen = []

    def __call__(self, input_ids, scores):
        self.seen.append(scores.clone())
        return scores


class _ForceBoiFirst(LogitsProcessor):
    """Makes every row open an image at its first step (so the test sees drawings from a random tiny model)."""

    def __init__(self, boi: int):
        self.boi, self.prompt_length = boi, None

    def __call__(self, input_ids, scores):
        self.prompt_length = self.prompt_length or input_ids.shape[1]
        if input_ids.shape[1] == self.prompt_length:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, self.boi] = 0.0
        return scores


def _prompts(processor, texts):
    tokenizer = processor.tokenizer
    encoded = [tokenizer(text).input_ids for text in texts]
    length = max(map(len, encoded))
    input_ids = torch.full((len(encoded), length), tokenizer.pad_token_id)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(encoded):  # left padding
        input_ids[row, length - len(ids) :] = torch.tensor(ids)
        attention_mask[row, length - len(ids) :] = 1
    return input_ids, attention_mask


def test_completions_are_cut_at_eos_with_whole_image_spans(tiny, vocab):
    model, processor = tiny
    eos = processor.tokenizer.eos_token_id
    input_ids, attention_mask = _prompts(processor, ["a red square", "draw it please now", "b"])
    budget = vocab.span_length + 12
    model.train()
    torch.manual_seed(0)
    completions = generate_with_images(
        model,
        vocab,
        input_ids,
        attention_mask,
        max_new_tokens=budget,
        do_sample=True,
        logits_processors=[_ForceBoiFirst(vocab.boi_token_id)],
        eos_token_id=eos,
    )
    assert model.training  # the caller's mode is restored
    model.eval()
    assert len(completions) == 3 and all(isinstance(row, list) for row in completions)
    segments = vocab.parse_segments(completions).per_row(3)
    for row, row_segments in zip(completions, segments):
        assert eos not in row and len(row) <= budget
        assert row[0] == vocab.boi_token_id and row_segments[0].complete  # drawn, as an exact span

    # The same as a plain `generate` with the constraint last, cut before EOS.
    torch.manual_seed(0)
    constraint = ImageSpanLogitsProcessor(vocab, max_new_tokens=budget)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=budget,
            do_sample=True,
            logits_processor=LogitsProcessorList([_ForceBoiFirst(vocab.boi_token_id), constraint]),
            eos_token_id=eos,
            pad_token_id=processor.tokenizer.pad_token_id,
        )
    expected = [row[: row.index(eos)] if eos in row else row for row in output[:, input_ids.shape[1] :].tolist()]
    assert completions == expected


def test_prompt_ending_with_boi_gets_its_image_and_the_sampler_sees_constrained_scores(tiny, vocab):
    model, processor = tiny
    input_ids, attention_mask = _prompts(processor, ["draw", "draw a circle"])
    input_ids = torch.cat([input_ids, torch.full((2, 1), vocab.boi_token_id)], dim=1)
    attention_mask = torch.cat([attention_mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    before, after = _Recorder(), _Recorder()
    completions = generate_with_images(
        model,
        vocab,
        input_ids,
        attention_mask,
        max_new_tokens=vocab.tokens_per_image + 1,
        max_images=0,
        logits_processors=[before],
        sampler=after,
    )
    for row in completions:
        assert len(row) == vocab.tokens_per_image + 1 and row[-1] == vocab.eoi_token_id
        assert bool(vocab.is_image_token(torch.tensor(row[:-1])).all())
    # The constraint runs between the two: only the sampler sees non-image ids banned while drawing.
    text_ids = ~vocab.image_token_mask(before.seen[0].shape[-1], torch.device("cpu"))
    assert torch.isfinite(before.seen[0][:, text_ids]).all()
    assert torch.isinf(after.seen[0][:, text_ids]).all()


def test_decode_without_images(tiny, vocab):
    _, processor = tiny
    tokenizer = processor.tokenizer
    text = tokenizer("look here", add_special_tokens=False).input_ids
    span = vocab.image_span_ids(torch.arange(vocab.tokens_per_image) % vocab.num_codes).tolist()
    stray = span[1:3]  # image codes outside any span
    ids = text + span + stray + text
    assert strip_image_tokens(vocab, ids) == text + text
    assert strip_image_tokens(vocab, torch.tensor(ids), keep_markers=True) == text + [span[0], span[-1]] + text
    plain = decode_without_images(processor, vocab, ids)
    assert plain == tokenizer.decode(text + text, skip_special_tokens=True) and "IMGIMG" not in plain
    shown = decode_without_images(tokenizer, vocab, ids, skip_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(vocab.boi_token_id) in shown and "IMGIMG" not in shown
    assert decode_without_images(processor, vocab, span) == ""
