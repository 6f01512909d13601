"""Reward outputs validated in one place, and the wrappers that name the reward and the sample on any failure."""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from ..utils.type_checks import is_real_number
from ._common import Batch, Rewards, TokenIds


_NOT_SLICED = ("trainer_state", "log_metric", "log_extra", "environments")


class RewardError(RuntimeError):
    """A reward function failed; the message names the reward and, when it can be located, the sample index."""

    def __init__(self, message: str, reward_name: str, sample_index: int | None):
        super().__init__(message)
        self.reward_name = reward_name
        self.sample_index = sample_index


def _preview(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reward_name(fn: Any) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None) or getattr(fn, "name", None)
    return name if isinstance(name, str) else type(fn).__name__


def validate_reward_output(output: Any, num_completions: int, reward_name: str) -> list[float | None]:
    """Checks what one reward call returned and gives it back as a list of floats / None.

    The output must be a list, tuple, 1-D NumPy array or 1-D tensor of exactly `num_completions` values, each a
    real number (Python, NumPy or 0-d tensor; not a bool, not a string) that is finite, or None (the sample is not
    scored by this reward). Anything else raises a [`RewardError`] naming the reward and, for a bad value, the
    sample index. Nothing is coerced: `"0.5"` and `True` are errors, NaN / inf are errors (return None instead).

    Args:
        output: The reward's return value.
        num_completions: The number of completions it was called with.
        reward_name: Used in the error message.

    Raises:
        RewardError: The output is not a sequence, has another length, or holds a bad value.

    Example:
        ```python
        >>> validate_reward_output([0.5, None], 2, "my_reward")
        [0.5, None]
        >>> validate_reward_output([float("nan")], 1, "my_reward")
        Traceback (most recent call last):
        ...
        RewardError: Reward 'my_reward' returned nan for sample 0; ...
        ```
    """
    if output is None or isinstance(output, (str, bytes, dict)) or not hasattr(output, "__len__"):
        raise RewardError(
            f"Reward {reward_name!r} returned {_preview(output)} ({type(output).__name__}) for {num_completions} "
            "completions; a reward must return a list with one float (or None) per completion.",
            reward_name,
            None,
        )
    if getattr(output, "ndim", 1) != 1:
        raise RewardError(
            f"Reward {reward_name!r} returned an array of shape {tuple(output.shape)}; it must be 1-D, one value per "
            "completion.",
            reward_name,
            None,
        )
    values = output.tolist() if hasattr(output, "tolist") and not isinstance(output, list) else list(output)
    if len(values) != num_completions:
        raise RewardError(
            f"Reward {reward_name!r} returned {len(values)} values for {num_completions} completions; it must return "
            "exactly one value (float or None) per completion.",
            reward_name,
            None,
        )
    checked: list[float | None] = []
    for index, value in enumerate(values):
        if value is None:
            checked.append(None)
            continue
        if getattr(value, "ndim", 0) == 0 and hasattr(value, "item") and not isinstance(value, numbers.Number):
            value = value.item()  # 0-d tensor / array
        if not is_real_number(value):
            raise RewardError(
                f"Reward {reward_name!r} returned {_preview(value)} ({type(value).__name__}) for sample {index}; "
                "rewards must be real numbers or None.",
                reward_name,
                index,
            )
        value = float(value)
        if not math.isfinite(value):
            raise RewardError(
                f"Reward {reward_name!r} returned {value} for sample {index}; return None to leave a sample unscored "
                "instead of NaN / inf.",
                reward_name,
                index,
            )
        checked.append(value)
    return checked


class SafeReward:
    """Wraps a reward so that failures and bad outputs name the reward and the sample.

    On an exception, the reward is re-run sample by sample (per-sample keyword columns sliced, `log_metric` /
    `log_extra` silenced) to find the first sample that raises, and a [`RewardError`] names the reward, that
    sample's index, and a preview of its prompt and completion, chained to the original exception. Every output goes
    through [`validate_reward_output`] (one value per completion, each a finite real number or None). Attribute
    access is forwarded to the wrapped reward, and `__name__` is kept, so TRL logs it under the same name. Async
    rewards get [`AsyncSafeReward`] from [`safe_reward`].

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

    def _sample_calls(self, prompts: Any, completions: list, completion_ids: Any, kwargs: dict):
        count = len(completions)
        silent = {key: (lambda *a, **k: None) for key in ("log_metric", "log_extra") if key in kwargs}
        for i in range(count):
            sample_kwargs = {
                key: (value[i : i + 1] if key not in _NOT_SLICED and isinstance(value, (list, tuple))
                      and len(value) == count else value)
                for key, value in kwargs.items()
            }  # fmt: skip
            sample_kwargs.update(silent)
            yield (
                i,
                dict(
                    prompts=None if prompts is None else prompts[i : i + 1],
                    completions=completions[i : i + 1],
                    completion_ids=None if completion_ids is None else completion_ids[i : i + 1],
                    **sample_kwargs,
                ),
            )

    def _locate(self, prompts: Any, completions: list, completion_ids: Any, kwargs: dict) -> int | None:
        for i, call in self._sample_calls(prompts, completions, completion_ids, kwargs):
            try:
                self.fn(**call)
            except Exception:
                return i
        return None

    def _error(self, error: Exception, index: int | None, prompts: Any, completions: list) -> RewardError:
        if index is None:
            return RewardError(
                f"Reward {self.__name__!r} raised {type(error).__name__}: {error} on a batch of "
                f"{len(completions)} completions (no single sample reproduces it).",
                self.__name__,
                None,
            )
        prompt = None if prompts is None else prompts[index]
        return RewardError(
            f"Reward {self.__name__!r} raised {type(error).__name__} on sample {index}: {error} "
            f"(prompt={_preview(prompt)}, completion={_preview(completions[index])}).",
            self.__name__,
            index,
        )

    def __call__(
        self, prompts: Batch = None, completions: Batch = None, completion_ids: TokenIds = None, **kwargs: Any
    ) -> Rewards:
        completions = list(completions or [])
        try:
            output = self.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        except Exception as error:
            index = self._locate(prompts, completions, completion_ids, kwargs)
            raise self._error(error, index, prompts, completions) from error
        return validate_reward_output(output, len(completions), self.__name__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fn!r})"


class AsyncSafeReward(SafeReward):
    """[`SafeReward`] for an async reward (TRL runs it concurrently with the other async rewards)."""

    async def _alocate(self, prompts: Any, completions: list, completion_ids: Any, kwargs: dict) -> int | None:
        for i, call in self._sample_calls(prompts, completions, completion_ids, kwargs):
            try:
                await self.fn(**call)
            except Exception:
                return i
        return None

    async def __call__(  # type: ignore[override]
        self, prompts: Batch = None, completions: Batch = None, completion_ids: TokenIds = None, **kwargs: Any
    ) -> Rewards:
        completions = list(completions or [])
        try:
            output = await self.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        except Exception as error:
            index = await self._alocate(prompts, completions, completion_ids, kwargs)
            raise self._error(error, index, prompts, completions) from error
        return validate_reward_output(output, len(completions), self.__name__)


def _is_async(fn: Any) -> bool:
    """Whether calling `fn` returns a coroutine (functions, partials, and instances with an async `__call__`)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def safe_reward(fn: Callable[..., Any], name: str | None = None) -> Callable[..., Any]:
    """Wraps `fn` in [`SafeReward`] ([`AsyncSafeReward`] for an async reward); idempotent. `nn.Module` reward
    models and reward-model names (strings) are returned as they are: TRL scores them itself. Anything else that
    is not callable is refused with a `TypeError`.

    Example:
        ```python
        >>> trainer = GRPOTrainer(model, reward_funcs=[safe_reward(my_reward)], ...)
        ```
    """
    if isinstance(fn, SafeReward) or isinstance(fn, str):
        return fn
    import torch

    if isinstance(fn, torch.nn.Module):
        return fn
    if not callable(fn):
        raise TypeError(
            f"{name or 'A reward'} is {type(fn).__name__} {fn!r}, not a reward: give a callable "
            "`fn(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]`, a registered reward "
            "name (trl_omni.rewards.list_rewards()) or a reward model (an nn.Module or its Hub id)."
        )
    return AsyncSafeReward(fn, name) if _is_async(fn) else SafeReward(fn, name)


def safe_reward_funcs(reward_funcs: Any) -> Any:
    """[`safe_reward`] applied to one reward or to each reward of a list (the form TRL's `reward_funcs` takes)."""
    if isinstance(reward_funcs, (list, tuple)):
        return [safe_reward(fn, None if callable(fn) else f"reward_funcs[{i}]") for i, fn in enumerate(reward_funcs)]
    return safe_reward(reward_funcs, None if callable(reward_funcs) else "reward_funcs")
