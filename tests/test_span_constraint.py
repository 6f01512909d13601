"""The framework-free image-span state machine, driven by scripted token streams (no model, no `generate`)."""

import pytest
import torch

from trl_omni import ImageSpanConstraint, ImageSpanLogitsProcessor
from trl_omni.models import SpanMode, SpanState


TEXT, NO_IMAGE, DRAWING, CLOSING = SpanMode.TEXT, SpanMode.TEXT_NO_IMAGE, SpanMode.DRAWING, SpanMode.CLOSING
WORD = 20  # an ordinary text token of the tiny vocabulary


def _image(vocab, num_codes=None):
    """Image-code ids of one image (or of its first `num_codes` codes)."""
    codes = torch.arange(vocab.tokens_per_image) % vocab.num_codes
    return vocab.codes_to_ids(codes).tolist()[:num_codes]


def _run(constraint, prompt, stream):
    """Modes before each token of `stream` and after the last one; asserts every scripted token is allowed."""
    state = constraint.start(torch.tensor([prompt]))
    bias = constraint.bias_table(constraint.vocab.vocab_size, "cpu", torch.float32)
    modes = []
    for token in stream:
        mode = int(constraint.modes(state)[0])
        modes.append(mode)
        assert bias[mode, token] == 0, f"scripted token {token} is banned in mode {SpanMode(mode).name}"
        state = constraint.advance(state, torch.tensor([token]))
    modes.append(int(constraint.modes(state)[0]))
    return modes, state


def test_every_transition_of_one_image(vocab):
    constraint = ImageSpanConstraint(vocab)
    stream = [WORD, vocab.boi_token_id, *_image(vocab), vocab.eoi_token_id, WORD]
    modes, state = _run(constraint, [WORD, WORD], stream)
    n = vocab.tokens_per_image
    assert modes == [TEXT, TEXT] + [DRAWING] * n + [CLOSING, TEXT, TEXT]
    assert state.opened.tolist() == [1] and state.generated.tolist() == [len(stream)]
    assert not state.in_image.any()


def test_bias_table_allows_exactly_each_modes_tokens(vocab):
    constraint = ImageSpanConstraint(vocab)
    allowed = constraint.bias_table(vocab.vocab_size, "cpu", torch.float32) == 0
    image = vocab.image_token_mask(vocab.vocab_size)
    boi, eoi = vocab.boi_token_id, vocab.eoi_token_id
    assert not allowed[TEXT][image].any() and not allowed[TEXT][eoi] and allowed[TEXT][boi]
    assert allowed[TEXT].sum() == vocab.vocab_size - image.sum() - 1
    assert (allowed[NO_IMAGE] == allowed[TEXT].clone().index_fill_(0, torch.tensor([boi]), False)).all()
    assert (allowed[DRAWING] == image).all()
    assert allowed[CLOSING].nonzero().flatten().tolist() == [eoi]
    # One table per vocabulary size / device / dtype, reused otherwise.
    assert constraint.bias_table(vocab.vocab_size, "cpu", torch.float32) is constraint.bias_table(
        vocab.vocab_size, "cpu", torch.float32
    )
    assert constraint.bias_table(vocab.vocab_size, "cpu", torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("max_images", [0, 1, 2])
def test_max_images_counts_generated_images_only(vocab, max_images):
    constraint = ImageSpanConstraint(vocab, max_images=max_images)
    one_image = [vocab.boi_token_id, *_image(vocab), vocab.eoi_token_id]
    prompt = [WORD, *one_image, WORD]  # an image in the prompt does not count
    first = TEXT if max_images > 0 else NO_IMAGE
    if max_images == 0:
        assert _run(constraint, prompt, [WORD])[0] == [NO_IMAGE, NO_IMAGE]
        return
    modes, _ = _run(constraint, prompt, one_image + [WORD])
    assert modes[0] == first
    assert modes[-2:] == [TEXT if max_images > 1 else NO_IMAGE] * 2
    if max_images == 2:
        modes, state = _run(constraint, prompt, one_image + one_image + [WORD])
        assert modes[-1] == NO_IMAGE and state.opened.tolist() == [2]


def test_budget_edge_allows_boi_only_while_a_whole_span_fits(vocab):
    span = vocab.span_length
    constraint = ImageSpanConstraint(vocab, max_new_tokens=span + 3)
    # Tokens generated before the next one: 0..3 leave >= span tokens, 4 and 5 do not.
    assert _run(constraint, [WORD], [WORD] * 5)[0] == [TEXT] * 4 + [NO_IMAGE] * 2
    # A BOI at the last allowed position closes exactly at the budget's last token.
    stream = [WORD] * 3 + [vocab.boi_token_id, *_image(vocab), vocab.eoi_token_id]
    modes, state = _run(constraint, [WORD], stream)
    assert len(stream) == span + 3 and modes[-2] == CLOSING and state.generated.tolist() == [span + 3]
    assert _run(ImageSpanConstraint(vocab, max_new_tokens=span), [WORD], [])[0] == [TEXT]
    assert _run(ImageSpanConstraint(vocab, max_new_tokens=span - 1), [WORD], [])[0] == [NO_IMAGE]


def test_prompt_ending_inside_an_image_continues_it(vocab):
    n = vocab.tokens_per_image
    boi, eoi = vocab.boi_token_id, vocab.eoi_token_id
    # Prompt ending with BOI (a drawing request): all codes, EOI, then text; the image was opened by the prompt.
    constraint = ImageSpanConstraint(vocab, max_images=1)
    modes, state = _run(constraint, [WORD, boi], [*_image(vocab), eoi, WORD])
    assert modes == [DRAWING] * n + [CLOSING, TEXT, TEXT] and state.opened.tolist() == [0]
    # Part of the image in the prompt: only the rest is drawn.
    modes, _ = _run(constraint, [WORD, boi, *_image(vocab, 10)], [*_image(vocab)[10:], eoi])
    assert modes == [DRAWING] * (n - 10) + [CLOSING, TEXT]
    # Every code in the prompt: EOI is forced first.
    assert _run(constraint, [boi, *_image(vocab)], [eoi])[0] == [CLOSING, TEXT]
    # Images off, or no budget for a new image: the open one is still finished.
    for closed in (ImageSpanConstraint(vocab, allow_images=False), ImageSpanConstraint(vocab, max_new_tokens=n + 1)):
        modes, _ = _run(closed, [WORD, boi], [*_image(vocab), eoi])
        assert modes == [DRAWING] * n + [CLOSING, NO_IMAGE]


def test_allow_images_false_bans_boi_everywhere(vocab):
    constraint = ImageSpanConstraint(vocab, allow_images=False)
    assert _run(constraint, [WORD], [WORD] * 3)[0] == [NO_IMAGE] * 4


def test_ragged_prompt_lists_match_left_padded_tensors(vocab):
    boi = vocab.boi_token_id
    rows = [[WORD, WORD, boi], [WORD], [boi, *_image(vocab)], [WORD, boi, *_image(vocab), vocab.eoi_token_id]]
    constraint = ImageSpanConstraint(vocab)
    state = constraint.start(rows)
    assert constraint.modes(state).tolist() == [DRAWING, TEXT, CLOSING, TEXT]
    width = max(map(len, rows))
    padded = torch.tensor([[WORD] * (width - len(r)) + r for r in rows])  # left padding with an ordinary token
    for name in ("in_image", "produced", "opened", "generated"):
        assert getattr(state, name).tolist() == getattr(constraint.start(padded), name).tolist()


def test_state_where_picks_whole_states_or_rows(vocab):
    constraint = ImageSpanConstraint(vocab)
    a = constraint.start(torch.tensor([[vocab.boi_token_id], [WORD]]))
    b = constraint.advance(a, torch.tensor([_image(vocab)[0], vocab.boi_token_id]))
    assert SpanState.where(torch.tensor(True), a, b).produced.tolist() == a.produced.tolist()
    assert SpanState.where(torch.tensor(False), a, b).generated.tolist() == [1, 1]
    mixed = SpanState.where(torch.tensor([True, False]), a, b)
    assert mixed.in_image.tolist() == [True, True] and mixed.generated.tolist() == [0, 1]


def test_sampling_under_the_constraint_always_yields_exact_spans(vocab):
    """Random logits pushed towards BOI, rows in every mode at once: every image is exact, caps and budget hold."""
    generator = torch.Generator().manual_seed(0)
    budget = 3 * vocab.span_length + 7
    constraint = ImageSpanConstraint(vocab, max_images=2, max_new_tokens=budget)
    boi = vocab.boi_token_id
    prompts = [[WORD], [WORD, boi], [boi, *_image(vocab, 30)], [WORD, WORD, WORD], [WORD, boi, *_image(vocab, 64)]]
    state = constraint.start(prompts)
    generated = []
    for _ in range(budget):
        scores = torch.randn(len(prompts), vocab.vocab_size, generator=generator)
        scores[:, boi] += 5.0
        tokens = constraint.apply(state, scores).argmax(dim=-1)
        generated.append(tokens)
        state = constraint.advance(state, tokens)
    completions = torch.stack(generated, dim=1)
    full = [p + c for p, c in zip(prompts, completions.tolist())]
    segments = vocab.parse_segments(full)
    assert len(segments) >= 10 and segments.complete.all() and (segments.stray_image_tokens == 0).all()
    assert (completions == boi).sum(dim=1).tolist() == [2] * len(prompts)  # the cap, prompt images not counted
    assert not state.in_image.any()


def test_invalid_arguments(vocab):
    with pytest.raises(ValueError, match="max_images"):
        ImageSpanConstraint(vocab, max_images=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        ImageSpanConstraint(vocab, max_new_tokens=-1)


@pytest.mark.parametrize("on_device", [False, True])
def test_hf_processor_tracks_generations_without_host_reads(vocab, monkeypatch, on_device):
    """The HF front-end: both ways of resolving "does this call continue the last one?" give the same answers.

    `on_device=True` runs the accelerator path (the check stays a tensor, both candidate states are computed and
    one is selected on the device) on the CPU.
    """
    monkeypatch.setattr(ImageSpanLogitsProcessor, "_resolve_on_device", staticmethod(lambda ids: on_device))
    processor = ImageSpanLogitsProcessor(vocab, max_images=1, max_new_tokens=None)
    boi, eoi, n = vocab.boi_token_id, vocab.eoi_token_id, vocab.tokens_per_image
    scores = torch.zeros(2, vocab.vocab_size)

    def modes(ids):
        out = processor(torch.tensor(ids), scores)
        return [int(torch.isfinite(row).sum()) for row in out]  # allowed-token count identifies the mode

    counts = {
        mode: int(torch.isfinite(processor.constraint.bias_table(vocab.vocab_size, "cpu", torch.float32)[mode]).sum())
        for mode in SpanMode
    }
    rows = [[WORD, WORD], [WORD, boi]]
    image = _image(vocab)

    def step(first, second):
        rows[0].append(first)
        rows[1].append(second)
        return modes(rows)

    assert modes(rows) == [counts[TEXT], counts[DRAWING]]
    assert step(boi, image[0]) == [counts[DRAWING], counts[DRAWING]]
    for code in image[1:]:
        last = step(code, code)
    assert last == [counts[DRAWING], counts[CLOSING]]
    # Row 1 closes the image its prompt opened: it does not count, so one image may still be opened.
    assert step(image[0], eoi) == [counts[CLOSING], counts[TEXT]]
    assert step(eoi, WORD) == [counts[NO_IMAGE], counts[TEXT]]
    # A new call of exactly the next step's shape but other content is recognised and rescanned (advancing the old
    # state would give [CLOSING, DRAWING]-like answers).
    length = len(rows[0])
    rows[:] = [[WORD] * (length + 1), [WORD] * length + [boi]]
    assert modes(rows) == [counts[TEXT], counts[DRAWING]]
    assert step(boi, image[0]) == [counts[DRAWING], counts[DRAWING]]
    for code in image[1:]:
        step(code, code)
    assert step(image[0], eoi) == [counts[CLOSING], counts[TEXT]]
    assert step(eoi, boi) == [counts[NO_IMAGE], counts[DRAWING]]
    assert processor._state.generated.tolist() == [n + 2] * 2
