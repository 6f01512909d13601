"""Step splitting: a text-only rationale -> the reasoning steps that get one drawing each."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ...utils.imports import resolve_dotted_path


_NUMBERED = re.compile(r"(?:^|(?<=\s))(?:Step\s*(\d+)\s*[:.)]|\((\d+)\)|(\d+)[.)](?=\s))", re.IGNORECASE)
_THOUGHT = re.compile(r"THOUGHT\s*\d+\s*:")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def _split_at(text: str, pattern: re.Pattern | str) -> list[str]:
    """Splits `text` so that every match of `pattern` starts a new step (text before the first match is kept)."""
    return _split_before(text, [m.start() for m in re.finditer(pattern, text)])


def _numbered_starts(text: str) -> list[int]:
    """Positions of step markers numbered 0/1, 2, 3, ... in sequence (so "Take 1. 2. Add" splits only before 2)."""
    starts, expected = [], None
    for match in _NUMBERED.finditer(text):
        before = text[: match.start()]
        # A bare "3." / "3)" opens the text, a line or a sentence ("Add 3. 3) Done" has one marker, "3)");
        # "Step 3:" and "(3)" are markers anywhere.
        if (
            match.group(3) is not None
            and before.strip()
            and "\n" not in before[len(before.rstrip()) :]
            and before.rstrip()[-1] not in ".!?:;"
        ):
            continue
        number = int(next(group for group in match.groups() if group is not None))
        if (expected is None and number in (0, 1)) or number == expected:
            starts.append(match.start())
            expected = number + 1
    return starts


def _split_before(text: str, starts: list[int]) -> list[str]:
    if not starts:
        return [text.strip()] if text.strip() else []
    bounds = ([0] if starts[0] > 0 else []) + starts + [len(text)]
    pieces = [text[a:b].strip() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return [p for p in pieces if p]


def split_steps(text: str, splitter: str | Callable[[str], Sequence[str]] = "auto") -> list[str]:
    """Splits a rationale into reasoning steps.

    Args:
        text: The rationale.
        splitter: `"auto"` (steps numbered in sequence from 0 or 1, as `1.`, `Step 1:`, `(1)`, when there are at
            least two, else `THOUGHT k:` markers, else sentences), `"numbered"`, `"thought"`, `"sentences"`, `"lines"`,
            `"regex:<pattern>"` (every match starts a step), a dotted path `"pkg.module:function"`, or a callable.

    Returns:
        Non-empty step texts, in order, together covering the rationale.

    Example:
        ```python
        >>> split_steps("Step 1: look. Step 2: count.")
        ['Step 1: look.', 'Step 2: count.']
        ```
    """
    if callable(splitter):
        return [s for s in (str(x).strip() for x in splitter(text)) if s]
    text = text or ""
    if splitter == "auto":
        starts = _numbered_starts(text)
        if len(starts) >= 2:
            return _split_before(text, starts)
        if len(_THOUGHT.findall(text)) >= 1:
            return _split_at(text, _THOUGHT)
        return split_steps(text, "sentences")
    if splitter == "numbered":
        return _split_before(text, _numbered_starts(text))
    if splitter == "thought":
        return _split_at(text, _THOUGHT)
    if splitter == "sentences":
        return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]
    if splitter == "lines":
        return [s.strip() for s in text.splitlines() if s.strip()]
    if splitter.startswith("regex:"):
        return _split_at(text, re.compile(splitter[len("regex:") :]))
    if "." not in splitter and ":" not in splitter:
        raise ValueError(
            f"step_splitter={splitter!r} is neither a known splitter ('auto', 'numbered', 'thought', 'sentences', "
            "'lines', 'regex:<pattern>') nor a dotted path 'pkg.module:function'."
        )
    return split_steps(text, resolve_dotted_path(splitter, argument="step_splitter", require_callable=True))


def cap_steps(steps: list[str], max_steps: int) -> list[str]:
    """Keeps at most `max_steps` steps; the text of further steps is appended to the last kept one (nothing lost)."""
    if len(steps) <= max_steps:
        return steps
    return steps[: max_steps - 1] + [" ".join(steps[max_steps - 1 :])]
