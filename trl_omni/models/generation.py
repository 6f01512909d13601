"""Image generation for Chameleon-family models: lifting the hard image-logit mask, and constrained image spans."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor

from .image_vocabulary import ImageVocabulary, _chameleon_backbone


_ORIGINAL_IMAGE_TOKENS = "_trl_omni_image_tokens"


def enable_image_generation(model: Any) -> Any:
    """Lets a Chameleon model produce image tokens.

    Stock `ChameleonForConditionalGeneration.forward` sets every image-token logit to the float minimum (reading
    the list from `model.model.vocabulary_mapping.image_tokens`), so its cross-entropy on image tokens is infinite
    and `generate` never draws. This function empties that list *on this model instance only*, after caching the
    id <-> code tables that are derived from it, so the forward keeps every logit and nothing else changes. The
    model code is untouched; [`disable_image_generation`] restores the mask. Works through PEFT and accelerate
    wrappers. Idempotent.

    Use together with [`ImageSpanLogitsProcessor`] when sampling, so images come out as exact spans.

    Args:
        model: A Chameleon / Anole model (possibly wrapped).

    Returns:
        The same `model`, for chaining.

    Example:
        ```python
        >>> from trl_omni import enable_image_generation
        >>> model = enable_image_generation(ChameleonForConditionalGeneration.from_pretrained(path))
        ```
    """
    mapping = _chameleon_backbone(model).vocabulary_mapping
    if _ORIGINAL_IMAGE_TOKENS in mapping.__dict__:
        return model
    image_tokens = list(mapping.image_tokens)
    # Materialise every table derived from `image_tokens` while it still holds the real ids.
    for name in ("bpe2img", "img2bpe", "bpe2img_search_tensors", "img2bpe_mapping_tensor"):
        getattr(mapping, name)
    mapping.__dict__[_ORIGINAL_IMAGE_TOKENS] = image_tokens
    # `image_tokens` is a cached_property (a non-data descriptor): the instance attribute takes precedence.
    mapping.__dict__["image_tokens"] = []
    return model


def disable_image_generation(model: Any) -> Any:
    """Restores Chameleon's stock image-logit mask removed by [`enable_image_generation`]."""
    mapping = _chameleon_backbone(model).vocabulary_mapping
    if _ORIGINAL_IMAGE_TOKENS in mapping.__dict__:
        mapping.__dict__["image_tokens"] = mapping.__dict__.pop(_ORIGINAL_IMAGE_TOKENS)
    return model


def is_image_generation_enabled(model: Any) -> bool:
    """Whether [`enable_image_generation`] is in effect on `model`."""
    return _ORIGINAL_IMAGE_TOKENS in _chameleon_backbone(model).vocabulary_mapping.__dict__


class ImageSpanLogitsProcessor(LogitsProcessor):
    """Constrains sampling so that every image is an exact span: `BOI + H*W image codes + EOI`.

    Per row, from the tokens generated so far:
    - in text mode, image-code tokens (and a stray EOI) are banned; BOI is banned too once `max_images` images were
      opened in the completion, or when fewer than `span_length` tokens of budget remain (`max_new_tokens`), so an
      image is never started that cannot be finished;
    - after BOI, only image-code tokens are allowed until exactly `tokens_per_image` were produced;
    - then EOI is forced.

    The state is recomputed from `input_ids` with a few vectorised tensor operations per step (no per-token Python
    loop), so it works batched, with sampling or greedy search, and with the KV cache inside `model.generate`.
    Images in the prompt are not counted towards `max_images`; a prompt that ends inside an open image segment
    (e.g. ending with BOI to ask for a drawing) continues that segment.

    The generation budget is required: a logits processor cannot see the `max_new_tokens` of the `generate` call it
    runs in, and without it an image opened near the end would be cut by the length limit. Pass the same value to
    both; `None` states that generation never stops on length (it ends on EOS or your own stopping criterion).
    To size a budget for a model, use [`ImageVocabulary.generation_budget`] (room for N images plus text).

    Args:
        image_vocabulary: The model's [`ImageVocabulary`].
        max_images: Optional cap on images opened per generated completion.
        max_new_tokens: The `max_new_tokens` of the `generate` call (or `None`, see above). BOI is only allowed while
            a whole span (`image_vocabulary.span_length` tokens) still fits.
        allow_images: When False, images are banned entirely (text-only generation from an image-enabled model).

    Example:
        ```python
        >>> vocab = ImageVocabulary.from_model(model)
        >>> budget = vocab.generation_budget(num_images=2, text_tokens=256)
        >>> processor = ImageSpanLogitsProcessor(vocab, max_images=2, max_new_tokens=budget)
        >>> out = model.generate(**inputs, max_new_tokens=budget, logits_processor=LogitsProcessorList([processor]))
        ```
    """

    def __init__(
        self,
        image_vocabulary: ImageVocabulary,
        max_images: int | None = None,
        *,
        max_new_tokens: int | None,
        allow_images: bool = True,
    ):
        if max_images is not None and max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {max_images}.")
        if max_new_tokens is not None and (
            isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1
        ):
            raise ValueError(
                f"max_new_tokens must be the generate call's budget (an int >= 1) or None; got {max_new_tokens!r}."
            )
        self.vocab = image_vocabulary
        self.max_images = max_images
        self.max_new_tokens = max_new_tokens
        self.allow_images = allow_images
        self._previous: torch.Tensor | None = None
        self._bias_key: tuple | None = None
        self._bias = torch.empty(0)

    def reset(self) -> None:
        """Forgets the current generation (done automatically when a new `generate` call starts)."""
        self._previous = None

    # Row modes, used as indices into the per-mode bias table.
    _TEXT, _TEXT_NO_IMAGE, _DRAWING, _CLOSING = 0, 1, 2, 3

    def _scan(self, input_ids: torch.LongTensor) -> None:
        """Full vectorised state scan, at the first step of a generation."""
        vocab = self.vocab
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        last_boi = torch.where(input_ids == vocab.boi_token_id, positions, -1).amax(dim=1)
        last_eoi = torch.where(input_ids == vocab.eoi_token_id, positions, -1).amax(dim=1)
        self._in_image = last_boi > last_eoi
        # Every token after an open BOI is an image token (this processor allows nothing else there).
        self._produced = length - 1 - last_boi
        self._opened = torch.zeros_like(last_boi)  # images opened by the completion, not the prompt
        self._prompt_length = length

    def _advance(self, input_ids: torch.LongTensor) -> None:
        """O(batch) state update from the token sampled at the previous step."""
        last = input_ids[:, -1]
        is_boi = last == self.vocab.boi_token_id
        self._produced = (self._produced + self._in_image).masked_fill_(is_boi, 0)
        self._in_image = (self._in_image & (last != self.vocab.eoi_token_id)) | is_boi
        self._opened += is_boi

    def _continues(self, input_ids: torch.LongTensor) -> bool:
        # `generate` appends exactly one column per step. Checking the shape and the edge columns keeps this O(batch);
        # a new `generate` call would have to reproduce both edges of every row at exactly one more column to pass.
        previous = self._previous
        return (
            previous is not None
            and previous.shape[0] == input_ids.shape[0]
            and previous.shape[1] + 1 == input_ids.shape[1]
            and torch.equal(previous[:, -1], input_ids[:, -2])
            and torch.equal(previous[:, 0], input_ids[:, 0])
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._continues(input_ids):
            self._advance(input_ids)
        else:
            self._scan(input_ids)
        self._previous = input_ids

        length = input_ids.shape[1]
        out_of_budget = self.max_new_tokens is not None and (
            self._prompt_length + self.max_new_tokens - length < self.vocab.span_length
        )
        if not self.allow_images or out_of_budget:
            text_mode = self._TEXT_NO_IMAGE
        elif self.max_images is not None:
            text_mode = self._opened >= self.max_images  # False -> _TEXT (0), True -> _TEXT_NO_IMAGE (1)
        else:
            text_mode = self._TEXT
        image_mode = (self._produced >= self.vocab.tokens_per_image) + self._DRAWING
        mode = torch.where(self._in_image, image_mode, text_mode)
        return scores + torch.index_select(self._bias_table(scores), 0, mode)

    def _bias_table(self, scores: torch.Tensor) -> torch.Tensor:
        key = (scores.shape[-1], str(scores.device), scores.dtype)
        if self._bias_key != key:
            vocab_size, device = scores.shape[-1], scores.device
            image = self.vocab.image_token_mask(vocab_size, device)
            eoi = torch.zeros_like(image)
            eoi[self.vocab.eoi_token_id] = True
            boi = torch.zeros_like(image)
            boi[self.vocab.boi_token_id] = True
            # Text: no image codes and no lone EOI. Drawing: codes only. Closing: EOI only.
            bans = torch.stack([image | eoi, image | eoi | boi, ~image, ~eoi])
            table = torch.zeros(bans.shape, dtype=scores.dtype, device=device)
            self._bias = table.masked_fill(bans, float("-inf"))
            self._bias_key = key
        return self._bias
