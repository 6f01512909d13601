"""The text of token ids without their images: the one way trl-omni decodes completions and prompts for rewards,
evaluation records and rendering."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .image_vocabulary import ImageVocabulary


def strip_image_tokens(
    image_vocabulary: ImageVocabulary, ids: Sequence[int] | torch.Tensor, keep_markers: bool = False
) -> list[int]:
    """`ids` without image codes and, unless `keep_markers`, without the BOI / EOI markers.

    Example:
        ```python
        >>> strip_image_tokens(vocab, [7, *vocab.image_span_ids(codes).tolist(), 8])
        [7, 8]
        ```
    """
    tensor = torch.as_tensor(list(ids) if not isinstance(ids, torch.Tensor) else ids, dtype=torch.long).reshape(-1)
    if tensor.numel() == 0:
        return []
    keep = ~image_vocabulary.is_image_token(tensor)
    if not keep_markers:
        keep &= (tensor != image_vocabulary.boi_token_id) & (tensor != image_vocabulary.eoi_token_id)
    return tensor[keep].tolist()


def decode_without_images(
    processing_class: Any,
    image_vocabulary: ImageVocabulary,
    ids: Sequence[int] | torch.Tensor,
    skip_special_tokens: bool = True,
) -> str:
    """Decodes ids with their image codes removed (image-token strings never reach text).

    BOI / EOI are removed too, unless `skip_special_tokens=False` (then they show like any other special token, as
    in a debugging view of a sequence).

    Args:
        processing_class: The tokenizer, or a processor holding one.
        image_vocabulary: The model's [`ImageVocabulary`].
        ids: Token ids (a list or a 1-D tensor).
        skip_special_tokens: Passed to `tokenizer.decode`.

    Example:
        ```python
        >>> decode_without_images(processor, vocab, completion_ids)
        'I draw the box. Final Answer: B'
        ```
    """
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    kept = strip_image_tokens(image_vocabulary, ids, keep_markers=not skip_special_tokens)
    return tokenizer.decode(kept, skip_special_tokens=skip_special_tokens) if kept else ""
