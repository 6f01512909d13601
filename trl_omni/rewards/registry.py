"""Reward registry: the built-ins and the rewards registered under the `trl_omni.rewards` entry-point group."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from ..utils.imports import resolve_dotted_path
from ._common import logger
from .validation import RewardError, SafeReward, safe_reward


__all__ = [
    "BUILTIN_FACTORIES",
    "build_reward_funcs",
    "BUILTIN_REWARDS",
    "ENTRY_POINT_GROUP",
    "RewardError",
    "SafeReward",
    "get_reward",
    "list_rewards",
    "resolve_reward",
    "safe_reward",
]


ENTRY_POINT_GROUP = "trl_omni.rewards"

# name -> "module:attribute" of the built-ins (resolved lazily; also declared as entry points in setup.py).
BUILTIN_REWARDS: dict[str, str] = {
    "accuracy": "trl_omni.rewards.accuracy:accuracy_reward",
    "format": "trl_omni.rewards.format:format_reward",
    "format_thought": "trl_omni.rewards.format:format_thought_reward",
    "perception": "trl_omni.rewards.perception:PerceptionReward",
    "perception_calibrated": "trl_omni.rewards.calibrated:PerceptionCalibratedReward",
    "reference_image": "trl_omni.rewards.reference:ReferenceImageReward",
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
    `reference_image`, `model_reward`), an entry point of the `trl_omni.rewards` group, or a dotted path
    (`module:attr` / `module.attr`). A class (e.g. `PerceptionReward`) is instantiated with `kwargs`; the function built-ins
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


def build_reward_funcs(
    names: list[str], processor: Any, image_vocabulary: Any, options: dict[str, Any] | None = None
) -> list[Any]:
    """Resolves reward names with [`~trl_omni.rewards.resolve_reward`] and builds them for this model.

    Reward classes and the built-in factories receive the model's `image_vocabulary` and `processing_class` when
    their signature takes them (the perception rewards need the vocabulary; the accuracy and format rewards read the
    special-token answer tags through the processor), and each of `options` (the reward settings of the config, e.g.
    `format_style`, `rules`) that their signature takes. Plain reward functions are used as they are. Every reward is
    wrapped in [`~trl_omni.rewards.SafeReward`], so a failure names the reward and the sample.

    Raises:
        ValueError: For an unknown name, listing the available ones.
    """
    options = dict(options or {})
    context = {"image_vocabulary": image_vocabulary, "processing_class": processor, **options}
    rewards, taken = [], set()
    for name in names:
        target = resolve_reward(name)  # raises ValueError naming the available rewards
        if name in BUILTIN_FACTORIES:
            target = resolve_dotted_path(BUILTIN_FACTORIES[name][0])
        elif not inspect.isclass(target):
            rewards.append(get_reward(name))
            continue
        kwargs = {k: v for k, v in context.items() if k in inspect.signature(target).parameters}
        taken.update(kwargs)
        rewards.append(get_reward(name, **kwargs))
    unused = sorted(set(options) - taken)
    if unused:
        raise ValueError(
            f"{', '.join(unused)} set, but none of the rewards {names} takes it: it applies to the rewards whose "
            "constructor has that argument (e.g. perception_calibrated, or the default reward when --reward_funcs "
            "is not given)."
        )
    return rewards
