"""A logits processor applied inside a generation loop that someone else calls: PeRPO's image-span constraint in the
`model.generate` call TRL makes for its rollouts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import LogitsProcessor


@contextlib.contextmanager
def next_token_logits_processed(model: torch.nn.Module, processor: LogitsProcessor) -> Iterator[None]:
    """While open, every forward of `model` returns next-token logits already passed through `processor`.

    TRL's rollout hook calls `model.generate(**inputs, generation_config=...)` and takes no logits processor
    (`GenerationConfig` cannot hold one, and TRL passes nothing else). A forward hook (PyTorch's public extension
    point) gives `processor` what `generate` would: the ids of the sequences so far, which the hook accumulates from
    the forwards of one `generate` call (the prompt at the first forward, then the token sampled at each step), and
    the scores of the last position, which it replaces by the processor's. `generate` then applies its own
    processors (temperature, top-k, ...) to these scores: a token the processor bans (`-inf`) stays banned.

    Nothing of `model` is replaced, and the hook is removed on exit. It must be registered on the module whose
    forward `generate` calls (the transformers model, under any PEFT / accelerate wrapper), and hold one `generate`
    call: the first forward inside the context is read as the prompt.

    Args:
        model: The transformers model that `generate` runs.
        processor: A `LogitsProcessor`; `reset()` is called on entry when it has one.

    Example:
        ```python
        >>> with next_token_logits_processed(model, ImageSpanLogitsProcessor(vocab, max_new_tokens=budget)):
        ...     out = trainer_or_library_code_that_calls_generate(model)
        ```
    """
    sequences: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        logits = getattr(output, "logits", None)
        if input_ids is None or logits is None:
            return
        ids = input_ids if not sequences else torch.cat([sequences[0], input_ids], dim=1)
        sequences[:] = [ids]
        logits[:, -1] = processor(ids, logits[:, -1])

    if callable(getattr(processor, "reset", None)):
        processor.reset()
    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
