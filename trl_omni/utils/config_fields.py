"""Field factories of the trl-omni configs and script arguments (dataclasses that `HfArgumentParser` reads)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import field
from typing import Any


def choice_field(default: str, choices: Sequence[str], help: str) -> Any:
    """A string field restricted to `choices`: `HfArgumentParser` offers exactly these values on the command line
    and lists them in `--help`; the config checks the value in `__post_init__` against the same tuple, so a config
    built in Python is held to the same set.

    Args:
        default: The default value (one of `choices`).
        choices: The allowed values.
        help: The option's `--help` text (`metadata={"help": ...}`).

    Example:
        ```python
        >>> @dataclass
        ... class MyConfig:
        ...     length_policy: str = choice_field("drop", ("drop", "truncate"), "What happens to a long row.")
        ```
    """
    return field(default=default, metadata={"help": help, "choices": list(choices)})
