"""Prompts of PeRPO that are token ids (pre-tokenized rows, interleaved parts with images): carried through TRL as
text that knows its ids, and checked so that every image in them is whole (or opened by a final BOI)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..models import ImageVocabulary


class TokenizedPrompt(str):
    """A prompt's text (images removed) that carries the prompt's token ids.

    TRL hands the `prompt` of each row to its tokenizing hook and, as text, to rewards and logs. A row whose prompt
    is token ids (images inside, or a final BOI to ask for a drawing) travels as this `str`: rewards and logs read
    the text, and [`PeRPOTrainer`]'s tokenizing hook reads `ids`. Immutable, copied as itself, pickled with its ids.

    Attributes:
        ids: The prompt's token ids.
    """

    ids: tuple[int, ...]

    def __new__(cls, text: str, ids: Sequence[int]) -> TokenizedPrompt:
        prompt = super().__new__(cls, text)
        prompt.ids = tuple(int(i) for i in ids)
        return prompt

    def __reduce__(self) -> tuple:
        return (TokenizedPrompt, (str(self), self.ids))

    def __copy__(self) -> TokenizedPrompt:
        return self

    def __deepcopy__(self, memo: dict) -> TokenizedPrompt:
        return self


def is_parts(value: Any) -> bool:
    """Whether a `prompt` value is a list of interleaved-schema parts (dicts with a `type`)."""
    return isinstance(value, list) and bool(value) and all(isinstance(p, dict) and "type" in p for p in value)


def check_prompt_ids(prompt_ids: Sequence[Sequence[int]], vocab: ImageVocabulary, what: str = "the prompt") -> None:
    """Checks that every image of every prompt is a whole span, except a final BOI that asks for a drawing.

    A prompt may end with BOI: the completion then draws that image, and
    [`~trl_omni.ImageVocabulary.parse_completions`] reads the completion's leading codes as that image. An image left
    partly drawn at the end of a prompt could not be read from the completion alone, so it is refused like any cut
    image.

    Args:
        prompt_ids: One list of ids per row of the batch.
        vocab: The policy's image vocabulary.
        what: How the error messages name the ids (e.g. "`prompt_ids`").

    Raises:
        ValueError: Naming the row and what is wrong, for ids outside the vocabulary, image tokens outside any
            BOI ... EOI segment, or a cut image.
    """
    for i, ids in enumerate(prompt_ids):
        if not len(ids):
            raise ValueError(f"Row {i} of the batch: {what} is empty.")
        if min(ids) < 0 or max(ids) >= vocab.vocab_size:
            raise ValueError(
                f"Row {i} of the batch: {what} holds ids outside [0, {vocab.vocab_size}); were image codes written "
                "instead of token ids? Build images with `ImageVocabulary.image_span_ids(codes)`."
            )
    segments = vocab.parse_segments(prompt_ids)
    bad_rows = (segments.stray_image_tokens > 0).nonzero().flatten().tolist()
    if bad_rows:
        raise ValueError(
            f"Row {bad_rows[0]} of the batch: {what} holds image tokens outside any BOI ... EOI segment. Build "
            "every image with `ImageVocabulary.image_span_ids(codes)`."
        )
    for segment in segments:
        row = prompt_ids[segment.batch_index]
        if segment.complete or (segment.start == len(row) - 1 and row[-1] == vocab.boi_token_id):
            continue
        open_at_end = segment.end == len(row) and row[-1] != vocab.eoi_token_id
        fix = (
            "A prompt may open an image only with a final BOI (the model then draws all of it)."
            if open_at_end
            else "Images must be whole spans built with `ImageVocabulary.image_span_ids(codes)`; a prompt may end "
            "with BOI to ask for a drawing."
        )
        raise ValueError(
            f"Row {segment.batch_index} of the batch: the image at position {segment.start} of {what} is cut "
            f"({len(segment.codes)} of {vocab.tokens_per_image} codes). {fix}"
        )
