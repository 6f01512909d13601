"""The image-span state machine, free of any generation framework.

Every image a model draws must be an exact span: `BOI + H*W image codes + EOI`. [`ImageSpanConstraint`] holds the
rule and [`SpanState`] the per-row state; together they say, for each row of a batch and each decoding step, which
tokens may come next. They only use torch tensors, never a generation loop, so each generation front-end is a thin
adapter around the same machine: [`~trl_omni.ImageSpanLogitsProcessor`] for `transformers.generate` today, and a
batch-level logits processor for vLLM later.

A front-end does three things:

1. [`ImageSpanConstraint.start`] once per row, from its prompt ids;
2. [`ImageSpanConstraint.apply`] (or [`ImageSpanConstraint.modes`] + [`ImageSpanConstraint.bias_table`]) before
   each sampling step, to mask the logits;
3. [`ImageSpanConstraint.advance`] after each step, with the tokens just sampled.

Every operation is a handful of vectorised tensor ops on `(B,)` tensors, with no value read back to the host, so a
front-end on an accelerator never has to wait for the device.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum
from typing import TYPE_CHECKING

import torch

from .image_vocabulary import check_image_vocabulary


if TYPE_CHECKING:
    from collections.abc import Sequence

    from .image_vocabulary import ImageVocabulary


class SpanMode(IntEnum):
    """What a row may produce next; also the row index of the mode in [`ImageSpanConstraint.bias_table`]."""

    TEXT = 0
    """Text; BOI may open an image. Image codes and a lone EOI are banned."""
    TEXT_NO_IMAGE = 1
    """Text only: BOI is banned too (image cap reached, no budget for a whole span, or images not allowed)."""
    DRAWING = 2
    """Inside an image: only image codes."""
    CLOSING = 3
    """The image holds all its codes: only EOI."""


@dataclass
class SpanState:
    """Per-row state of the image-span machine (all tensors `(B,)` on the device of the ids).

    States are values: the constraint's methods return new tensors and never modify a state in place (so fields may
    share storage).

    Attributes:
        in_image: Whether the row is inside an open image.
        produced: Image codes since the open BOI (meaningful while `in_image`).
        opened: Images opened by generated tokens (images of the prompt are not counted).
        generated: Tokens generated so far (for the budget).
    """

    in_image: torch.Tensor
    produced: torch.Tensor
    opened: torch.Tensor
    generated: torch.Tensor

    @classmethod
    def where(cls, condition: torch.Tensor, if_true: SpanState, if_false: SpanState) -> SpanState:
        """Row-wise (or, with a 0-d `condition`, whole-state) choice between two states, without a host read."""
        return cls(*(torch.where(condition, getattr(if_true, f.name), getattr(if_false, f.name)) for f in fields(cls)))


class ImageSpanConstraint:
    """The image-span rule: which tokens each row may produce next, and how a sampled token moves its state.

    - in text, image codes and a stray EOI are banned; BOI is banned too once `max_images` images were opened by the
      generated tokens, or when fewer than `span_length` tokens of the `max_new_tokens` budget remain, so an image is
      never started that cannot be finished;
    - after BOI, only image codes are allowed until exactly `tokens_per_image` were produced;
    - then EOI is forced.

    A prompt that ends inside an open image (e.g. with BOI, to ask for a drawing) continues that image; images of
    the prompt do not count towards `max_images`.

    Args:
        image_vocabulary: The model's [`ImageVocabulary`] (BOI / EOI ids, image-code ids, grid).
        max_images: Optional cap on images opened per generated completion.
        max_new_tokens: Optional generation budget; when set, BOI is only allowed if a whole span still fits.
        allow_images: When False, no image may be opened (an image left open by the prompt is still finished).

    Example:
        ```python
        >>> constraint = ImageSpanConstraint(vocab, max_images=1, max_new_tokens=2048)
        >>> state = constraint.start(prompt_ids)             # (B, L) ids, left-padded
        >>> for _ in range(2048):
        ...     scores = constraint.apply(state, logits_fn())  # banned tokens at -inf
        ...     tokens = sample(scores)
        ...     state = constraint.advance(state, tokens)
        ```
    """

    def __init__(
        self,
        image_vocabulary: ImageVocabulary,
        max_images: int | None = None,
        max_new_tokens: int | None = None,
        allow_images: bool = True,
    ):
        check_image_vocabulary(image_vocabulary, type(self).__name__)
        if max_images is not None and max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {max_images}.")
        if max_new_tokens is not None and max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}.")
        self.vocab = image_vocabulary
        self.boi_token_id = image_vocabulary.boi_token_id
        self.eoi_token_id = image_vocabulary.eoi_token_id
        self.tokens_per_image = image_vocabulary.tokens_per_image
        self.span_length = image_vocabulary.span_length
        self.max_images = max_images
        self.max_new_tokens = max_new_tokens
        self.allow_images = allow_images
        self._bias_key: tuple | None = None
        self._bias = torch.empty(0)

    def start(self, prompt_ids: torch.Tensor | Sequence[Sequence[int]]) -> SpanState:
        """The state after the prompts, before the first generated token.

        Args:
            prompt_ids: `(B, L)` ids whose rows end at the last column (left padding, as `generate` passes them),
                or a list of id lists of any lengths.
        """
        if not isinstance(prompt_ids, torch.Tensor):
            rows = [list(row) for row in prompt_ids]
            width = max((len(row) for row in rows), default=0)
            # -1 is no token id: left padding that is neither BOI nor EOI.
            prompt_ids = torch.tensor([[-1] * (width - len(row)) + row for row in rows], dtype=torch.long)
            prompt_ids = prompt_ids.reshape(len(rows), width)
        length = prompt_ids.shape[1]
        if length == 0:
            zeros = torch.zeros(prompt_ids.shape[0], dtype=torch.long, device=prompt_ids.device)
            return SpanState(zeros.bool(), zeros, zeros, zeros)
        positions = torch.arange(length, device=prompt_ids.device)
        last_boi = torch.where(prompt_ids == self.boi_token_id, positions, -1).amax(dim=1)
        last_eoi = torch.where(prompt_ids == self.eoi_token_id, positions, -1).amax(dim=1)
        zeros = torch.zeros_like(last_boi)
        return SpanState(
            in_image=last_boi > last_eoi,
            # Every token after an open BOI is an image code (the constraint allows nothing else there).
            produced=length - 1 - last_boi,
            opened=zeros,
            generated=zeros,
        )

    def advance(self, state: SpanState, tokens: torch.Tensor) -> SpanState:
        """The state after each row produced `tokens[row]` (`(B,)` ids)."""
        is_boi = tokens == self.boi_token_id
        return SpanState(
            in_image=(state.in_image & (tokens != self.eoi_token_id)) | is_boi,
            produced=(state.produced + state.in_image).masked_fill(is_boi, 0),
            opened=state.opened + is_boi,
            generated=state.generated + 1,
        )

    def modes(self, state: SpanState) -> torch.Tensor:
        """`(B,)` [`SpanMode`] of each row: what it may produce next."""
        # Plain ints and arithmetic rather than enum scalars: this runs at every decoding step.
        image_mode = (state.produced >= self.tokens_per_image) + int(SpanMode.DRAWING)  # DRAWING or CLOSING
        if not self.allow_images:
            return torch.where(state.in_image, image_mode, int(SpanMode.TEXT_NO_IMAGE))
        no_image = None
        if self.max_new_tokens is not None:
            no_image = self.max_new_tokens - state.generated < self.span_length
        if self.max_images is not None:
            capped = state.opened >= self.max_images
            no_image = capped if no_image is None else no_image | capped
        if no_image is None:
            return image_mode * state.in_image  # TEXT is 0
        return torch.where(state.in_image, image_mode, no_image.long())  # False -> TEXT, True -> TEXT_NO_IMAGE

    def bias_table(self, vocab_size: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
        """`(4, vocab_size)` additive bias per [`SpanMode`]: 0 where a token is allowed, -inf where it is banned.

        Built once per vocabulary size, device and dtype.
        """
        key = (vocab_size, str(device), dtype)
        if self._bias_key != key:
            image = self.vocab.image_token_mask(vocab_size, device)
            eoi = torch.zeros_like(image)
            eoi[self.eoi_token_id] = True
            boi = torch.zeros_like(image)
            boi[self.boi_token_id] = True
            bans = torch.stack([image | eoi, image | eoi | boi, ~image, ~eoi])  # in SpanMode order
            self._bias = torch.zeros(bans.shape, dtype=dtype, device=device).masked_fill(bans, float("-inf"))
            self._bias_key = key
        return self._bias

    def apply(self, state: SpanState, scores: torch.Tensor) -> torch.Tensor:
        """`scores` (`(B, V)` logits) with every token the rule bans at -inf (a new tensor)."""
        bias = self.bias_table(scores.shape[-1], scores.device, scores.dtype)
        return scores + torch.index_select(bias, 0, self.modes(state))
