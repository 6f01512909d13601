"""Importing by name: the package root's lazy exports and the one resolver of dotted paths (`pkg.module:attr`).

Kept free of heavy imports: the package root and the CLI's `--help` use it before torch is loaded.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]], eager: Sequence[str] = ()
) -> tuple[list[str], Callable[[str], Any], Callable[[], list]]:
    """A package's `__all__`, and module-level `__getattr__` and `__dir__` (PEP 562) that import its public names on
    first access.

    `import trl_omni` then costs nothing beyond Python itself: `trl_omni.PeSFTTrainer` imports
    `trl_omni.trainers` (and torch, transformers, TRL) only when it is first read, like TRL's own lazy package root.

    Args:
        package: The package's `__name__`.
        exports: Submodule (relative to `package`) -> the public names it provides.
        eager: Public names defined in the package itself (e.g. `__version__`), listed in `__all__` as well.

    Returns:
        `(__all__, __getattr__, __dir__)`, to be assigned at the package's module level; `__all__` is sorted.

    Example:
        ```python
        >>> __all__, __getattr__, __dir__ = lazy_exports(__name__, {"trainers": ["PeSFTTrainer", "PeRPOTrainer"]})
        ```
    """
    owners: dict[str, str] = {}
    for submodule, names in exports.items():
        for name in names:
            if name in owners:
                raise ValueError(f"{package}: {name!r} is exported by both {owners[name]!r} and {submodule!r}.")
            owners[name] = submodule

    def __getattr__(name: str) -> Any:
        submodule = owners.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{submodule}"), name)
        # Cached on the package, so the next access is a plain attribute lookup.
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list:
        return sorted(set(vars(sys.modules[package])) | set(owners))

    return sorted([*eager, *owners]), __getattr__, __dir__


def resolve_dotted_path(path: str, *, argument: str | None = None, require_callable: bool = False) -> Any:
    """The object a dotted path names: `"package.module:attribute"` or `"package.module.attribute"`.

    The attribute part may itself be dotted (`"pkg.module:Class.method"`). Every failure is a `ValueError` that names
    the argument the path came from and what to fix.

    Args:
        path: The dotted path.
        argument: Name of the option the path was given for (used in error messages), e.g. `"quality_fn"`.
        require_callable: Also refuse an object that is not callable.

    Example:
        ```python
        >>> resolve_dotted_path("os.path:join")("a", "b")
        'a/b'
        ```
    """
    label = f"{argument}={path!r}" if argument else repr(path)
    if not isinstance(path, str):
        raise TypeError(f"{label} must be a string 'pkg.module:attribute', got {type(path).__name__}.")
    module_name, _, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"{label} is not a dotted path: write 'pkg.module:attribute' (or 'pkg.module.attribute').")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{label}: module {module_name!r} could not be imported ({error}).") from error
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as error:
            raise ValueError(f"{label}: {module_name!r} has no attribute {attribute!r}.") from error
    if require_callable and not callable(target):
        raise ValueError(f"{label} names a {type(target).__name__}, which is not callable.")
    return target
