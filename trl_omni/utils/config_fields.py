"""Field factories of the trl-omni configs and script arguments (dataclasses that `HfArgumentParser` reads)."""

from __future__ import annotations

import numbers
import sys
import types
import typing
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


def _own_annotations(config: Any) -> dict[str, Any]:
    """Field name -> resolved annotation, for the fields that trl-omni's own classes declare (not their parents')."""
    annotations: dict[str, Any] = {}
    for cls in reversed(type(config).__mro__):
        if not cls.__module__.startswith("trl_omni"):
            continue
        namespace = vars(sys.modules[cls.__module__])
        for name, annotation in vars(cls).get("__annotations__", {}).items():
            if isinstance(annotation, str):  # postponed by `from __future__ import annotations`
                try:
                    annotation = eval(annotation, namespace)
                except Exception:  # an annotation naming what the module does not define is not ours to check
                    continue
            annotations[name] = annotation
    return annotations


def _matches(value: Any, annotation: Any) -> bool | None:
    """Whether `value` is of `annotation`; None when the annotation is not one this check understands."""
    if annotation is Any:
        return None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        answers = [_matches(value, member) for member in arguments]
        return True if any(answers) else (None if None in answers else False)
    if annotation is type(None):
        return value is None
    if origin is list and len(arguments) == 1:
        if not isinstance(value, list | tuple):
            return False
        answers = [_matches(item, arguments[0]) for item in value]
        return None if None in answers else all(answers)
    return None


def _describe(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("NoneType", "None")


def check_field_types(config: Any, checked_elsewhere: Sequence[str] = ()) -> None:
    """Checks the type of every field trl-omni's own classes declare on `config` against its annotation, so a config
    built in Python is refused with the field's name instead of failing later, deep inside a library (the command
    line already converts its strings). Types are checked, not coerced: an int is a float, a bool is neither.

    Args:
        config: The dataclass instance (call it first in `__post_init__`).
        checked_elsewhere: Fields the config checks itself (e.g. one that also takes a form its annotation cannot
            say, such as a mapping given in Python for a JSON-string option).

    Raises:
        TypeError: Naming the first field whose value is of another type, the value and the expected type.
    """
    annotations = _own_annotations(config)
    for config_field in fields(config):
        annotation = None if config_field.name in checked_elsewhere else annotations.get(config_field.name)
        value = getattr(config, config_field.name)
        if annotation is not None and _matches(value, annotation) is False:
            raise TypeError(
                f"{type(config).__name__}.{config_field.name} must be {_describe(annotation)}, got "
                f"{type(value).__name__} {value!r}. Fix: pass a value of that type (no conversion is made)."
            )
