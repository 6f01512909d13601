"""The image-span logits processor as it was before the shared state machine (commit 0426e78), kept as a baseline.

Benchmarks compare today's rollouts against it (`bench_generation.py --compare legacy`, `gpu_suite.py`): it keeps its
state incrementally too, but checks that a call continues the previous generation with two `torch.equal` calls per
step, which read values back from the device (a host-device synchronisation on a GPU). Not part of the library.
"""

import torch
from transformers import LogitsProcessor


class LegacyImageSpanLogitsProcessor(LogitsProcessor):
    """`ImageSpanLogitsProcessor` as of commit 0426e78 (see the module docstring); same constructor arguments."""

    def __init__(
        self,
        image_vocabulary,
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
