"""Image generation for Chameleon-family models: lifting the hard image-logit mask, and constrained image spans."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor

from .image_vocabulary import ImageVocabulary, _chameleon_backbone


class ImageGenerationVocabularyMapping:
    """Chameleon's image-vocabulary mapping with an empty image-logit mask.

    `ChameleonForConditionalGeneration.forward` sets the logits of every id in `vocabulary_mapping.image_tokens` to
    the float minimum. This stand-in answers `image_tokens` with an empty list, so the forward keeps every logit, and
    hands every other attribute (`bpe2img`, `img2bpe`, `convert_img2bpe`, `image_token_id`, ...) to the model's own
    mapping, kept as `stock`: the id <-> code tables stay the stock ones, built from the full image-token list
    (`stock.image_tokens`). No model code is copied or patched and no cached property is shadowed: only the model's
    mapping object is swapped, and [`disable_image_generation`] puts the stock one back.

    Args:
        stock: The model's own `ChameleonImageVocabularyMapping`.
    """

    def __init__(self, stock: Any):
        self.stock = stock

    @property
    def image_tokens(self) -> list[int]:
        """Empty: the ids whose logits the forward masks (the image-token ids are `stock.image_tokens`)."""
        return []

    def __getattr__(self, name: str) -> Any:
        stock = self.__dict__.get("stock")  # absent while copy / pickle rebuild the object
        if stock is None:
            raise AttributeError(name)
        return getattr(stock, name)


def enable_image_generation(model: Any) -> Any:
    """Lets a Chameleon model produce image tokens.

    Stock `ChameleonForConditionalGeneration.forward` sets every image-token logit to the float minimum (reading
    the list from `model.model.vocabulary_mapping.image_tokens`), so its cross-entropy on image tokens is infinite
    and `generate` never draws. This function swaps the model's mapping for an
    [`ImageGenerationVocabularyMapping`]: its mask list is empty and its id <-> code tables are the stock mapping's,
    so the forward keeps every logit and nothing else changes. The model code is untouched; [`disable_image_generation`]
    restores the stock mapping. Works through PEFT and accelerate wrappers (the mapping lives on the Chameleon
    backbone they wrap). Idempotent.

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
    backbone = _chameleon_backbone(model)
    if not isinstance(backbone.vocabulary_mapping, ImageGenerationVocabularyMapping):
        backbone.vocabulary_mapping = ImageGenerationVocabularyMapping(backbone.vocabulary_mapping)
    return model


def disable_image_generation(model: Any) -> Any:
    """Restores Chameleon's stock image-logit mask removed by [`enable_image_generation`]."""
    backbone = _chameleon_backbone(model)
    if isinstance(backbone.vocabulary_mapping, ImageGenerationVocabularyMapping):
        backbone.vocabulary_mapping = backbone.vocabulary_mapping.stock
    return model


def is_image_generation_enabled(model: Any) -> bool:
    """Whether [`enable_image_generation`] is in effect on `model`."""
    return isinstance(_chameleon_backbone(model).vocabulary_mapping, ImageGenerationVocabularyMapping)


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

    Args:
        image_vocabulary: The model's [`ImageVocabulary`].
        max_images: Optional cap on images opened per generated completion.
        max_new_tokens: Optional generation budget; when set, BOI is only allowed if a whole span still fits.
        allow_images: When False, images are banned entirely (text-only generation from an image-enabled model).

    Example:
        ```python
        >>> processor = ImageSpanLogitsProcessor(ImageVocabulary.from_model(model), max_images=2)
        >>> out = model.generate(**inputs, logits_processor=LogitsProcessorList([processor]), do_sample=True)
        ```
    """

    def __init__(
        self,
        image_vocabulary: ImageVocabulary,
        max_images: int | None = None,
        max_new_tokens: int | None = None,
        allow_images: bool = True,
    ):
        if max_images is not None and max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {max_images}.")
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
