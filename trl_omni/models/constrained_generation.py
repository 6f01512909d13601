"""[`generate_with_images`]: the one constrained-generation helper of trl-omni (evaluation, PeSFT's rendered
evaluation answers, bootstrapping and the demo generate through it): `model.generate` with exact image spans, returning
each row's completion ids with the prompt, EOS and padding removed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from .generation import ImageSpanLogitsProcessor, is_image_generation_enabled
from .image_vocabulary import ImageVocabulary


def generate_with_images(
    model: Any,
    image_vocabulary: ImageVocabulary,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    max_images: int | None = None,
    do_sample: bool = False,
    logits_processors: Sequence[LogitsProcessor] = (),
    sampler: LogitsProcessor | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    **generate_kwargs: Any,
) -> list[list[int]]:
    """Generates from a batch of (left-padded) prompts with every image an exact span; returns the completions.

    `model.generate` runs under `torch.no_grad()` with the model in eval mode (its mode is restored afterwards), on
    the device of its parameters, through an [`ImageSpanLogitsProcessor`] built for `max_new_tokens` and
    `max_images`. A prompt that ends with BOI is continued by its image.

    Args:
        model: A Chameleon / Anole model with image generation enabled (e.g. from [`load_omni_model`]); a PEFT model
            or the unwrapped model of a trainer (`unwrap_model_for_generation`).
        image_vocabulary: The model's [`ImageVocabulary`].
        input_ids: `(batch, length)` prompt ids, left-padded.
        attention_mask: Its mask (0 on padding); all ones when omitted.
        max_new_tokens: Generation budget per row; also the constraint's (an image is never opened that cannot be
            finished within it).
        max_images: Cap on images opened per completion (`None`: no cap, `0`: text only, or only the image a prompt
            ending with BOI opened).
        do_sample: Sample instead of greedy decoding (seed with `torch.manual_seed` before the call to reproduce).
        logits_processors: Processors applied *before* the image-span constraint, which so has the last word.
        sampler: A processor applied *after* the constraint, choosing among what it allows (e.g. the bootstrap's
            seeded Gumbel-max sampler with `do_sample=False`).
        eos_token_id: Where a completion ends (an id or several); defaults to the model's generation config.
        pad_token_id: Padding of finished rows; defaults to the model's generation config, else the EOS.
        **generate_kwargs: Forwarded to `model.generate` (`temperature`, `top_p`, `min_new_tokens`, ...).

    Returns:
        Per row, the generated ids: the prompt removed, cut before the first EOS (and so before any padding).

    Example:
        ```python
        >>> from trl_omni import ImageVocabulary, generate_with_images
        >>> vocab = ImageVocabulary.from_model(model, processor)
        >>> inputs = collator.encode_prompt_batch(rows)  # left padded
        >>> completions = generate_with_images(model, vocab, **inputs, max_new_tokens=vocab.generation_budget(1, 256))
        ```
    """
    draws = max_images != 0 or bool((input_ids[:, -1] == image_vocabulary.boi_token_id).any())
    if draws and not is_image_generation_enabled(model):
        # Stock Chameleon gives every image code the same (lowest) logit: greedy drawings would be one flat colour,
        # sampled ones uniform noise, whatever the model learnt.
        raise ValueError(
            f"{type(model).__name__} has image generation disabled (stock Chameleon masks the image-token logits), so "
            "every image it drew would be flat (greedy) or noise (sampled). Fix: load it with "
            "trl_omni.load_omni_model, or call trl_omni.enable_image_generation(model) first; or pass max_images=0 "
            "for text-only answers."
        )
    generation_config = getattr(model, "generation_config", None)
    if eos_token_id is None:
        eos_token_id = getattr(generation_config, "eos_token_id", None)
    if pad_token_id is None:
        pad_token_id = getattr(generation_config, "pad_token_id", None)
    eos_ids = {int(i) for i in ([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id or [])}
    if pad_token_id is None and eos_ids:
        pad_token_id = min(eos_ids)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    device = next(model.parameters()).device
    constraint = ImageSpanLogitsProcessor(image_vocabulary, max_images=max_images, max_new_tokens=max_new_tokens)
    processors = LogitsProcessorList([*logits_processors, constraint, *([sampler] if sampler is not None else [])])
    special = {"eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    # Only ids that are set: an explicit None would override the model's generation config.
    generate_kwargs.update({key: value for key, value in special.items() if value is not None})
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                logits_processor=processors,
                **generate_kwargs,
            )
    finally:
        model.train(was_training)
    return [_strip(row, eos_ids) for row in output[:, input_ids.shape[1] :].cpu().tolist()]


def _strip(ids: list[int], eos_ids: set[int]) -> list[int]:
    """A completion cut before its first EOS: `generate` pads a row only after it ended, so this drops the padding too.

    A row that never produced EOS (it ran out of budget) is returned whole: every id of it was generated.
    """
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[:position]
    return ids
