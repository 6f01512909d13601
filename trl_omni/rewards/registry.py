"""Reward registry (built-ins + the `trl_omni.rewards` entry-point group) and the error-locating wrapper."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from ..utils.imports import resolve_dotted_path
from ._common import logger


ENTRY_POINT_GROUP = "trl_omni.rewards"

# name -> "module:attribute" of the built-ins (resolved lazily; also declared as entry points in setup.py).
BUILTIN_REWARDS: dict[str, str] = {
    "accuracy": "trl_omni.rewards.accuracy:accuracy_reward",
    "format": "trl_omni.rewards.format:format_reward",
    "format_thought": "trl_omni.rewards.format:format_thought_reward",
    "perception": "trl_omni.rewards.perception:PerceptionReward",
    "perception_calibrated": "trl_omni.rewards.calibrated:PerceptionCalibratedReward",
    "model_reward": "trl_omni.rewards.model_reward:ModelReward",
}

# Built-ins that are ready-made functions take options (e.g. `processing_class`) through their factory.
BUILTIN_FACTORIES: dict[str, tuple[str, dict[str, Any]]] = {
    "accuracy": ("trl_omni.rewards.accuracy:make_accuracy_reward", {}),
    "format": ("trl_omni.rewards.format:make_format_reward", {"style": "tags", "name": "format_reward"}),
    "format_thought": (
        "trl_omni.rewards.format:make_format_reward",
        {"style": "thought", "name": "format_thought_reward"},
    ),
}

_NOT_SLICED = ("trainer_state", "log_metric", "log_extra", "environments")


class RewardError(RuntimeError):
    """A reward function failed; the message names the reward and, when it can be located, the sample index."""

    def __init__(self, message: str, reward_name: str, sample_index: int | None):
        super().__init__(message)
        self.reward_name = reward_name
        self.sample_index = sample_index


def _reward_name(fn: Any) -> str:
    while hasattr(fn, "func") and not hasattr(fn, "__name__"):  # functools.partial
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def _preview(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SafeReward:
    """Wraps a reward so that failures name the reward and the sample that triggered them.

    On an exception, the reward is re-run sample by sample (per-sample keyword columns sliced, `log_metric` /
    `log_extra` silenced) to find the first sample that raises, and a [`RewardError`] names the reward, that
    sample's index, and a preview of its prompt and completion, chained to the original exception. The wrapper
    also checks the output: one value per completion, each a finite number or None (a NaN or a string is reported
    with its sample index). Attribute access is forwarded to the wrapped reward, and `__name__` is kept, so TRL logs
    it under the same name. Async rewards are not wrapped (they are returned as they are by [`safe_reward`]).

    Args:
        fn: The reward callable.
        name: Name used in errors (default: the reward's `__name__`).
    """

    def __init__(self, fn: Callable[..., Sequence[float | None]], name: str | None = None):
        self.fn = fn
        self.__name__ = name or _reward_name(fn)
        self.__wrapped__ = fn

    def __getattr__(self, item: str) -> Any:
        if item == "fn":
            raise AttributeError(item)
        return getattr(self.fn, item)

    def _locate(self, prompts: Any, completions: Any, completion_ids: Any, kwargs: dict) -> int | None:
        count = len(completions)
        silent = {key: (lambda *a, **k: None) for key in ("log_metric", "log_extra") if key in kwargs}
        for i in range(count):
            sample_kwargs = {
                key: (value[i : i + 1] if key not in _NOT_SLICED and isinstance(value, (list, tuple))
                      and len(value) == count else value)
                for key, value in kwargs.items()
            }  # fmt: skip
            sample_kwargs.update(silent)
            try:
                self.fn(
                    prompts=None if prompts is None else prompts[i : i + 1],
                    completions=completions[i : i + 1],
                    completion_ids=None if completion_ids is None else completion_ids[i : i + 1],
                    **sample_kwargs,
                )
            except Exception:
                return i
        return None

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] | None = None,
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        completions = list(completions or [])
        try:
            output = self.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        except Exception as error:
            index = self._locate(prompts, completions, completion_ids, kwargs)
            if index is None:
                raise RewardError(
                    f"Reward {self.__name__!r} raised {type(error).__name__}: {error} on a batch of "
                    f"{len(completions)} completions (no single sample reproduces it).",
                    self.__name__,
                    None,
                ) from error
            prompt = None if prompts is None else prompts[index]
            raise RewardError(
                f"Reward {self.__name__!r} raised {type(error).__name__} on sample {index}: {error} "
                f"(prompt={_preview(prompt)}, completion={_preview(completions[index])}).",
                self.__name__,
                index,
            ) from error
        output = list(output)
        if len(output) != len(completions):
            raise RewardError(
                f"Reward {self.__name__!r} returned {len(output)} values for {len(completions)} completions; it "
                "must return exactly one value (float or None) per completion.",
                self.__name__,
                None,
            )
        for i, value in enumerate(output):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
                raise RewardError(
                    f"Reward {self.__name__!r} returned {_preview(value)} for sample {i}; rewards must be floats "
                    "or None.",
                    self.__name__,
                    i,
                )
            if not math.isfinite(float(value)):
                raise RewardError(
                    f"Reward {self.__name__!r} returned {float(value)} for sample {i}; return None to skip a "
                    "sample instead of NaN / inf.",
                    self.__name__,
                    i,
                )
        return [None if v is None else float(v) for v in output]

    def __repr__(self) -> str:
        return f"SafeReward({self.fn!r})"


def safe_reward(fn: Callable[..., Any], name: str | None = None) -> Callable[..., Any]:
    """Wraps `fn` in [`SafeReward`] (idempotent; async rewards and `nn.Module` reward models are returned as is).

    Example:
        ```python
        >>> trainer = GRPOTrainer(model, reward_funcs=[safe_reward(my_reward)], ...)
        ```
    """
    if isinstance(fn, SafeReward):
        return fn
    import torch

    # TRL runs reward models and async rewards on their own paths: leave them untouched.
    if isinstance(fn, torch.nn.Module) or inspect.iscoroutinefunction(fn):
        return fn
    if inspect.iscoroutinefunction(type(fn).__call__):
        return fn
    return SafeReward(fn, name)


def _entry_point_rewards() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_rewards() -> list[str]:
    """Names accepted by [`get_reward`]: built-ins and rewards registered under the `trl_omni.rewards` group."""
    return sorted(set(BUILTIN_REWARDS) | set(_entry_point_rewards()))


def resolve_reward(name: str) -> Any:
    """The object a reward name points at (a reward callable, a reward class or a factory), not instantiated.

    Lookup order: built-in names, entry points of the `trl_omni.rewards` group, then a dotted path
    (`module:attr` or `module.attr`).
    """
    if name in BUILTIN_REWARDS:
        return resolve_dotted_path(BUILTIN_REWARDS[name])
    points = _entry_point_rewards()
    if name in points:
        try:
            return points[name].load()
        except Exception as error:
            raise ImportError(
                f"Reward {name!r} is registered by entry point {points[name].value!r} (group {ENTRY_POINT_GROUP!r}) "
                f"but failed to load: {error}"
            ) from error
    if "." in name or ":" in name:
        try:
            return resolve_dotted_path(name)
        except ValueError as error:
            raise ValueError(
                f"Could not import reward {name!r}: {error}. Available names: {', '.join(list_rewards())}."
            ) from error
    raise ValueError(
        f"Unknown reward {name!r}. Available names: {', '.join(list_rewards())}. A reward can also be given as a "
        f"dotted path ('my_package.rewards:my_reward') or registered under the {ENTRY_POINT_GROUP!r} entry-point "
        "group (see docs/contributing-rewards.md)."
    )


def get_reward(name: str, safe: bool = True, **kwargs: Any) -> Callable[..., list[float | None]]:
    """Returns a ready-to-use reward callable by name.

    The name is a built-in (`accuracy`, `format`, `format_thought`, `perception`, `perception_calibrated`,
    `model_reward`), an entry point of the `trl_omni.rewards` group, or a dotted path (`module:attr` /
    `module.attr`). A class (e.g. `PerceptionReward`) is instantiated with `kwargs`; the function built-ins
    (`accuracy`, `format`, `format_thought`) are rebuilt from their factories (`make_accuracy_reward`,
    `make_format_reward`) when `kwargs` are given; any other plain reward function is returned as is, unless `kwargs`
    are given, in which case it is treated as a factory and called with them.

    Args:
        name: Reward name or dotted path.
        safe: Wrap the reward in [`SafeReward`] so a failure names the reward and the sample index.
        **kwargs: Constructor / factory arguments (e.g. `image_vocabulary=vocab`).

    Example:
        ```python
        >>> reward_funcs = [get_reward("accuracy"), get_reward("perception", image_vocabulary=vocab)]
        >>> get_reward("my_package.rewards:length_penalty")
        ```
    """
    target = resolve_reward(name)
    if kwargs and name in BUILTIN_FACTORIES:
        factory_path, defaults = BUILTIN_FACTORIES[name]
        reward = resolve_dotted_path(factory_path)(**{**defaults, **kwargs})
    elif inspect.isclass(target):
        try:
            reward = target(**kwargs)
        except TypeError as error:
            raise TypeError(f"Reward {name!r} ({target.__name__}) could not be built: {error}") from error
    elif kwargs:
        reward = target(**kwargs)
    else:
        reward = target
    if not callable(reward):
        raise TypeError(f"Reward {name!r} resolved to {type(reward).__name__}, which is not callable.")
    if safe:
        reward = safe_reward(reward)
    logger.debug("Resolved reward %r to %r", name, reward)
    return reward
