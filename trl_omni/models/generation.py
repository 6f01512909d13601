"""Image generation for Chameleon-family models: lifting the hard image-logit mask, and constrained image spans."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor

from .image_vocabulary import ImageVocabulary, _chameleon_backbone
from .span_constraint import ImageSpanConstraint, SpanState


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

    This is the `transformers.generate` front-end of [`ImageSpanConstraint`] (the framework-free state machine):
    the state is scanned from `input_ids` at the first step of a generation and then advanced by the one token
    each step appends, so it works batched, with sampling or greedy search, and with the KV cache. On an
    accelerator no step reads a value back to the host (the check that a call continues the previous generation
    is resolved on the device), so the processor never stalls the decoding loop. Images in the prompt are not
    counted towards `max_images`; a prompt that ends inside an open image segment (e.g. ending with BOI to ask for
    a drawing) continues that segment. One instance may serve successive `generate` calls.

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
        if max_new_tokens is not None and (
            isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1
        ):
            raise ValueError(
                f"max_new_tokens must be the generate call's budget (an int >= 1) or None; got {max_new_tokens!r}."
            )
        self.constraint = ImageSpanConstraint(
            image_vocabulary, max_images=max_images, max_new_tokens=max_new_tokens, allow_images=allow_images
        )
        self._state: SpanState | None = None
        self._previous: torch.Tensor | None = None  # the previous call's `input_ids`

    @property
    def max_new_tokens(self) -> int | None:
        """The `generate` budget this processor was built for."""
        return self.constraint.max_new_tokens

    @property
    def max_images(self) -> int | None:
        """The cap on images opened per completion (`None`: no cap)."""
        return self.constraint.max_images

    def reset(self) -> None:
        """Forgets the current generation (done automatically when a new `generate` call starts)."""
        self._state = None
        self._previous = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._state = self._next_state(input_ids)
        self._previous = input_ids
        return self.constraint.apply(self._state, scores)

    def _next_state(self, input_ids: torch.LongTensor) -> SpanState:
        constraint, state, previous = self.constraint, self._state, self._previous
        # `generate` appends exactly one column per step: a call of any other shape starts a new generation.
        if (
            state is None
            or previous.shape[0] != input_ids.shape[0]
            or previous.shape[1] + 1 != input_ids.shape[1]
            or previous.device != input_ids.device
        ):
            return constraint.start(input_ids)
        # A call of the next step's shape continues the generation when both edge columns match (a new `generate`
        # call would have to reproduce both edges of every row at exactly one more column to pass).
        if not self._resolve_on_device(input_ids):
            continues = torch.equal(previous[:, -1], input_ids[:, -2]) and torch.equal(previous[:, 0], input_ids[:, 0])
            return constraint.advance(state, input_ids[:, -1]) if continues else constraint.start(input_ids)
        # Reading a device value here would make the host wait for the device at every token: the check stays a
        # tensor, and the state is chosen on the device.
        continues = (previous[:, -1] == input_ids[:, -2]).all() & (previous[:, 0] == input_ids[:, 0]).all()
        return SpanState.where(continues, constraint.advance(state, input_ids[:, -1]), constraint.start(input_ids))

    @staticmethod
    def _resolve_on_device(input_ids: torch.Tensor) -> bool:
        """Whether to keep the continuation check on the device (no host read) rather than branch on it.

        On the CPU a host read is free and branching skips the rescan; elsewhere it would be a synchronisation.
        """
        return input_ids.device.type != "cpu"
