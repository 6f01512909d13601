"""Shared helpers of the rewards: output-format strings, completion text recovery, per-sample column access."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..utils.type_checks import is_real_number


logger = logging.getLogger(__name__)

# The arguments and result of TRL's reward call: `reward(prompts=, completions=, completion_ids=, **columns)` returns
# one value per completion (None: not scored).
Batch = Sequence[Any] | None
TokenIds = Sequence[Sequence[int]] | None
Rewards = list[float | None]

# The authors' defaults (Omni-R1 templated format); every reward takes them as arguments so other checkpoints and
# templates can override them.
DEFAULT_REASONING_OPEN = "<reserved12856>"
DEFAULT_REASONING_CLOSE = "<reserved12857>"
DEFAULT_ANSWER_OPEN = "<reserved12866>"
DEFAULT_ANSWER_CLOSE = "<reserved12867>"
DEFAULT_FINAL_ANSWER_MARKER = "Final Answer:"
DEFAULT_THOUGHT_MARKER = "THOUGHT"


@dataclass(frozen=True)
class OutputTags:
    """The strings that structure a completion, in both output styles.

    Attributes:
        reasoning_open: Opens the reasoning (templated style).
        reasoning_close: Closes the reasoning (templated style).
        answer_open: Opens the answer (templated style).
        answer_close: Closes the answer (templated style).
        final_answer_marker: Precedes the answer in the "thought" style (Zebra-CoT traces).
        thought_marker: Marks reasoning steps in the "thought" style.
    """

    reasoning_open: str = DEFAULT_REASONING_OPEN
    reasoning_close: str = DEFAULT_REASONING_CLOSE
    answer_open: str = DEFAULT_ANSWER_OPEN
    answer_close: str = DEFAULT_ANSWER_CLOSE
    final_answer_marker: str = DEFAULT_FINAL_ANSWER_MARKER
    thought_marker: str = DEFAULT_THOUGHT_MARKER

    @property
    def control_tags(self) -> tuple[str, str, str, str]:
        return (self.reasoning_open, self.reasoning_close, self.answer_open, self.answer_close)

    @classmethod
    def resolve(cls, tags: OutputTags | None, owner: str) -> OutputTags:
        """`tags`, or the authors' defaults when None; anything else is refused naming `owner`'s `tags=` argument."""
        if tags is None:
            return cls()
        if not isinstance(tags, cls):
            raise TypeError(
                f"{owner}(tags=...) takes an OutputTags, got {type(tags).__name__}. Fix: pass "
                "OutputTags(answer_open=..., ...) from trl_omni.rewards (fields left out keep the authors' defaults)."
            )
        return tags


def message_text(completion: Any) -> str:
    """The text of one completion, standard (a string) or conversational (a list of messages)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content", "")
        if isinstance(content, list):
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    if isinstance(completion, Sequence) and completion:
        # Conversational: the completion is the list of generated messages; the answer is in the last one.
        return message_text(completion[-1])
    return str(completion)


class _TagRestorer:
    """Re-inserts control tags that the tokenizer treats as special tokens into decoded completion text.

    TRL decodes completions with `skip_special_tokens=True`. When the control tags are special tokens (as in the
    Anole tokenizer), they are absent from `completions`. Given the tokenizer, the tags are found by id in
    `completion_ids`; the text between them is decoded exactly as TRL does, so the result is TRL's text with the
    tags put back. Image codes and BOI / EOI (when an image vocabulary is given) are dropped before decoding
    ([`~trl_omni.models.strip_image_tokens`]).
    """

    def __init__(self, tokenizer: Any, tags: Sequence[str], image_vocabulary: Any | None = None):
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # accept a processor
        self.tokenizer = tokenizer
        self.image_vocabulary = image_vocabulary
        self.tag_ids: dict[int, str] = {}
        unk = getattr(tokenizer, "unk_token_id", None)
        for tag in tags:
            ids = tokenizer.convert_tokens_to_ids([tag])
            token_id = ids[0] if ids else None
            # A tag that is not one token of the vocabulary is ordinary text: the plain decode keeps it already.
            if token_id is not None and token_id != unk and token_id >= 0:
                self.tag_ids[int(token_id)] = tag

    def __call__(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self.image_vocabulary is not None:
            from ..models.text import strip_image_tokens

            ids = strip_image_tokens(self.image_vocabulary, ids)
        pieces: list[str] = []
        run: list[int] = []
        for token_id in ids:
            tag = self.tag_ids.get(token_id)
            if tag is None:
                run.append(token_id)
                continue
            if run:
                pieces.append(self.tokenizer.decode(run, skip_special_tokens=True))
                run = []
            pieces.append(tag)
        if run:
            pieces.append(self.tokenizer.decode(run, skip_special_tokens=True))
        return "".join(pieces)


def completion_texts(
    completions: Sequence[Any],
    completion_ids: Sequence[Sequence[int]] | None,
    restorer: _TagRestorer | None,
) -> list[str]:
    """Completion texts with control tags present, from ids when a tokenizer is known, else from the text."""
    if restorer is not None and completion_ids is not None and len(completion_ids) == len(completions):
        return [restorer(ids) for ids in completion_ids]
    return [message_text(c) for c in completions]


def resolve_restorer(own: _TagRestorer | None, kwargs: dict, tags: Sequence[str], cache: dict) -> _TagRestorer | None:
    """The reward's own restorer, else one built from a `processing_class` passed at call time (cached)."""
    if own is not None:
        return own
    processing_class = kwargs.get("processing_class")
    if processing_class is None:
        return None
    key = id(processing_class)
    if key not in cache:
        cache.clear()
        cache[key] = _TagRestorer(processing_class, tags, kwargs.get("image_vocabulary"))
    return cache[key]


def text_reward(
    score_texts: Callable[[list[str], dict[str, Any]], list[float | None]],
    name: str,
    doc: str,
    tags: OutputTags,
    processing_class: Any | None = None,
    image_vocabulary: Any | None = None,
    read_tags: bool = True,
    warn_as: str | None = None,
    other_markers: Sequence[str] = (),
) -> Callable[..., list[float | None]]:
    """A TRL reward callable named `name` that scores completion texts with `score_texts(texts, kwargs)`.

    With `read_tags`, the texts hold the control tags even when they are special tokens: they are read from
    `completion_ids` through `processing_class` (given here, or as a keyword at call time). With `warn_as`, a batch
    in which no text holds any tag (nor any of `other_markers`) while the tags could not be read from ids logs one
    warning, under that reward name ([`warn_if_tags_stripped`]).
    """
    restorer = (
        _TagRestorer(processing_class, tags.control_tags, image_vocabulary) if processing_class and read_tags else None
    )
    call_cache: dict = {}

    def reward(
        prompts: Batch = None, completions: Batch = None, completion_ids: TokenIds = None, **kwargs: Any
    ) -> Rewards:
        active = resolve_restorer(restorer, kwargs, tags.control_tags, call_cache) if read_tags else None
        texts = completion_texts(list(completions or []), completion_ids, active)
        scores = score_texts(texts, kwargs)
        if warn_as is not None:
            warn_if_tags_stripped(warn_as, texts, completion_ids, active, tags, other_markers)
        return scores

    reward.__name__ = name
    reward.__qualname__ = name
    reward.__doc__ = doc
    return reward


class CompletionIdsReward(ABC):
    """Base of the reward classes that score the generated token ids.

    `__call__` is TRL's reward call: it refuses a call without `completion_ids` (naming the reward, then
    `missing_ids_hint`) and hands the batch to `_reward`, which subclasses implement.
    """

    name: str
    missing_ids_hint = ""

    def __call__(
        self,
        prompts: Batch = None,
        completions: Batch = None,
        completion_ids: TokenIds = None,
        log_metric: Any | None = None,
        **kwargs: Any,
    ) -> Rewards:
        if completion_ids is None:
            raise ValueError(
                f"{self.name} needs `completion_ids` (the generated token ids); TRL's GRPOTrainer passes them."
                + self.missing_ids_hint
            )
        return self._reward(prompts, completions, completion_ids, log_metric, kwargs)

    @abstractmethod
    def _reward(
        self, prompts: Any, completions: Any, completion_ids: Any, log_metric: Any, kwargs: dict[str, Any]
    ) -> list[float | None]:
        """One score (or None) per completion."""


def check_real(value: Any, owner: str, argument: str) -> float:
    """`value` as a float when it is a real number (an int or float; a bool is not), else a `TypeError` naming
    `owner`'s `argument`: reward settings are checked when the reward is built, not on the first batch."""
    if not is_real_number(value):
        raise TypeError(f"{owner}: {argument} must be a number, got {type(value).__name__} {value!r}.")
    return float(value)


_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


def warn_if_tags_stripped(
    reward_name: str,
    texts: Sequence[str],
    completion_ids: Any,
    restorer: Any,
    tags: OutputTags,
    other_markers: Sequence[str] = (),
) -> None:
    """Warns once when a tags-style reward sees no control tag (nor any of `other_markers`) in a whole batch while
    it cannot recover the tags from ids."""
    if restorer is not None or completion_ids is None or not texts:
        return
    if any(marker in text for text in texts for marker in (*tags.control_tags, *other_markers)):
        return
    warn_once(
        f"{reward_name}-stripped",
        f"{reward_name}: no completion of the batch contains any control tag {list(tags.control_tags)}. TRL decodes "
        "completions with skip_special_tokens=True, which removes tags that are special tokens. Pass the tokenizer "
        f"(e.g. `make_{reward_name.removesuffix('_reward')}_reward(processing_class=tokenizer)`) so the reward reads "
        "the tags from `completion_ids`.",
    )


DEFAULT_TAGS = OutputTags()
