"""Field factories of the trl-omni configs and script arguments (dataclasses that `HfArgumentParser` reads)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import field, fields
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


def check_choices(config: Any) -> None:
    """Checks every field of `config` declared with [`choice_field`] against its choices (the same list the
    command line offers), so that a config built in Python is held to the same values.

    Args:
        config: The dataclass instance (call it in `__post_init__`).

    Raises:
        ValueError: Naming the first field whose value is not allowed, the value and the allowed values.
    """
    # Only trl-omni's own fields: the parents' (TRL's, transformers') are theirs to check.
    own = {
        name
        for cls in type(config).__mro__
        if cls.__module__.startswith("trl_omni")
        for name in vars(cls).get("__annotations__", {})
    }
    for config_field in fields(config):
        choices = config_field.metadata.get("choices") if config_field.name in own else None
        value = getattr(config, config_field.name)
        if choices is not None and value not in choices:
            raise ValueError(f"{config_field.name} must be one of {list(choices)}, got {value!r}.")
