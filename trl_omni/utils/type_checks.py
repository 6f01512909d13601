"""Type checks of what users pass in Python (the command line converts its strings itself): config fields and
function arguments against their annotations. Types are checked, not coerced: an int is a float, a bool is neither,
and a string is not a sequence of strings."""

from __future__ import annotations

import functools
import inspect
import numbers
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any


def _resolve(annotation: Any, namespace: dict[str, Any]) -> Any:
    """An annotation as an object (postponed ones are text under `from __future__ import annotations`); None when it
    names something the module does not define at run time (not ours to check)."""
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, namespace)
    except Exception:
        return None


def _own_annotations(config: Any) -> dict[str, Any]:
    """Field name -> resolved annotation, for the fields that trl-omni's own classes declare (not their parents')."""
    annotations: dict[str, Any] = {}
    for cls in reversed(type(config).__mro__):
        if not cls.__module__.startswith("trl_omni"):
            continue
        namespace = vars(sys.modules[cls.__module__])
        for name, annotation in vars(cls).get("__annotations__", {}).items():
            resolved = _resolve(annotation, namespace)
            if resolved is not None:
                annotations[name] = resolved
    return annotations


def is_integer_number(value: Any) -> bool:
    """Whether `value` is an integer for an `int` setting, a code or a token id (numpy's too), never a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real_number(value: Any) -> bool:
    """Whether `value` is a real number for a `float` setting: an int or a float (numpy's too), never a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _matches(value: Any, annotation: Any) -> bool | None:
    """Whether `value` is of `annotation`; None when the annotation is not one this check understands."""
    if annotation is Any:
        return None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return is_integer_number(value)
    if annotation is float:
        return is_real_number(value)
    if annotation is str:
        return isinstance(value, str)
    if annotation is type(None):
        return value is None
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        answers = [_matches(value, member) for member in arguments]
        return True if any(answers) else (None if None in answers else False)
    if origin in (list, tuple, Sequence) and arguments:
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            return False
        if origin is tuple and Ellipsis not in arguments:
            if len(value) != len(arguments):
                return False
            answers = [_matches(item, member) for item, member in zip(value, arguments, strict=True)]
        else:
            answers = [_matches(item, arguments[0]) for item in value]
        return None if None in answers else all(answers)
    if isinstance(annotation, type) and origin is None:
        return isinstance(value, annotation)
    return None


def _describe(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    text = str(annotation).replace("NoneType", "None").replace("collections.abc.", "").replace("typing.", "")
    # A string is a sequence of strings to Python, never to these arguments.
    return text + " (not a str)" if text.startswith("Sequence[str]") else text


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

    Example:
        ```python
        >>> def __post_init__(self):
        ...     check_field_types(self)
        ```
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


def checked_arguments(checked_elsewhere: Sequence[str] = ()) -> Callable[[Callable], Callable]:
    """Decorator: every call checks its arguments against the function's annotations first, so a wrong type is
    refused naming the argument instead of being used (a string where a list of strings is expected would be read one
    character at a time). Arguments annotated with what this check cannot read (`Any`, protocols, ...) pass through.

    Args:
        checked_elsewhere: Arguments the function checks itself, with a more specific message.

    Example:
        ```python
        >>> class MyCollator:
        ...     @checked_arguments()
        ...     def __init__(self, template: str = "plain", seed: int = 0): ...
        ```
    """
    return functools.partial(_checked, checked_elsewhere=tuple(checked_elsewhere))


def _checked(function: Callable, checked_elsewhere: tuple[str, ...]) -> Callable:
    signature = inspect.signature(function)
    namespace = function.__globals__
    owner = function.__qualname__.split(".")[0] if function.__name__ == "__init__" else function.__qualname__
    annotations = {
        name: _resolve(parameter.annotation, namespace)
        for name, parameter in signature.parameters.items()
        if parameter.annotation is not inspect.Parameter.empty
        and name not in checked_elsewhere
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            annotation = annotations.get(name)
            if annotation is not None and _matches(value, annotation) is False:
                raise TypeError(
                    f"{owner}: {name} must be {_describe(annotation)}, got {type(value).__name__} {value!r}. Fix: "
                    "pass a value of that type (no conversion is made)."
                )
        return function(*args, **kwargs)

    return wrapper
