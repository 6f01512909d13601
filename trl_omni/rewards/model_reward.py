"""Rewards computed by a frozen helper model (the two-system idea of arXiv 2505.20256)."""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ._common import Batch, Rewards, TokenIds, check_real, message_text
from ._images import completion_images, segment_reduce


_TRL_KWARGS = ("trainer_state", "log_metric", "log_extra", "environments")


@dataclass
class RewardBatch:
    """What the user functions of a [`ModelReward`] receive: the whole batch of one reward call.

    Attributes:
        prompts: TRL's `prompts`.
        completions: TRL's `completions`.
        completion_ids: TRL's `completion_ids` (may be None outside a trainer).
        columns: The per-sample dataset columns (and any other per-sample keyword, e.g. `image_segments`).
        inputs: What `build_inputs` returned (already on the helper's device); set before `scores` run.
    """

    prompts: list
    completions: list
    completion_ids: list | None
    columns: dict[str, list] = field(default_factory=dict)
    inputs: Any = None

    def __len__(self) -> int:
        return len(self.completions)

    @property
    def completion_texts(self) -> list[str]:
        """Completion texts (the last message's content for conversational completions)."""
        return [message_text(c) for c in self.completions]

    @property
    def prompt_texts(self) -> list[str]:
        return [message_text(p) if not isinstance(p, str) else p for p in self.prompts]

    def drawn_images(self, image_vocabulary: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Every complete image the completions drew: `((M, H, W) codes, (M,) completion index)`, in order.

        From the core's parse of `completion_ids` ([`~trl_omni.ImageVocabulary.parse_completions`], cached per batch).
        Decode the codes to pixels (e.g. [`~trl_omni.decode_images`]) to show them to a vision helper model, and
        map the helper's per-image scores back to completions with [`RewardBatch.per_completion`].
        """
        if self.completion_ids is None:
            raise ValueError("drawn_images needs `completion_ids` (TRL's GRPOTrainer passes them).")
        images = completion_images(image_vocabulary, self.completion_ids, "cpu", self.columns.get("image_segments"))
        return images.codes, images.rows

    def per_completion(self, values: Any, rows: torch.Tensor, aggregation: str = "mean") -> list[float | None]:
        """Per-image `values` (`(M,)`, one per drawn image) reduced per completion with `"mean"`, `"min"`,
        `"max"` or `"median"`; None for a completion that drew no complete image."""
        values = torch.as_tensor(values, dtype=torch.float32).detach().cpu().flatten()
        reduced = segment_reduce(values, torch.as_tensor(rows).cpu(), len(self), aggregation).tolist()
        return [None if v != v else float(v) for v in reduced]


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        if not isinstance(value, dict) and hasattr(value, "to"):  # transformers BatchEncoding / BatchFeature
            return value.to(device)
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(item, device) for item in value)
    return value


def _fingerprint(prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any, columns: dict) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in (prompts, completions, completion_ids, sorted(columns.items())):
        digest.update(repr(part).encode("utf-8", "replace"))
        digest.update(b"\x00")
    return digest.hexdigest()


class ModelReward:
    """A reward computed by a frozen helper model, with one batched helper call per reward call.

    The user supplies two kinds of functions:
    - `build_inputs(batch) -> inputs`: maps the whole [`RewardBatch`] (prompts, completions, completion_ids, dataset
      columns) to the helper's inputs: a dict of tensors (passed as `model(**inputs)`), a tensor (`model(inputs)`),
      or anything `forward` accepts. Tensors are moved to the helper's device.
    - `scores`: a mapping `name -> fn(outputs, batch) -> sequence of B floats (or None)` reading the helper's
      outputs. Several scores can read the same outputs (hierarchical rewards: e.g. keyframe quality, alignment,
      consistency from one helper pass); each is weighted by `weights[name]` (default 1.0).

    The reward of a completion is `sum_k weights[k] * score_k`, skipping None scores; None when every score is
    None. Each score is also reported through `log_metric` as `<name>/<score>`.

    One call of the reward runs the helper once, under `torch.inference_mode()`, for all completions. Its outputs
    are cached for the current training step (keyed by `trainer_state.global_step` and a fingerprint of the
    batch), so [`ModelReward.head`] callables (one TRL reward per score, to log them separately or weight them
    with TRL's `reward_weights`) share a single helper pass. The helper is put in eval mode and its parameters are
    frozen. This class is not an `nn.Module` (TRL would treat a module as a sequence-classification reward model),
    and the helper is only held as an attribute.

    Args:
        model: The frozen helper (any `nn.Module` or callable).
        build_inputs: `fn(batch: RewardBatch) -> inputs`.
        scores: `{name: fn(outputs, batch) -> list[float | None] | Tensor}`, or one function (named `"score"`).
        weights: `{name: weight}`; missing names weigh 1.0.
        forward: Optional `fn(model, inputs) -> outputs` replacing the default call (e.g. to run `generate`).
        device: Device of the helper's inputs; None uses the device of the model's first parameter (CPU if none).
        name: Reward name (TRL logs `rewards/<name>/mean`).
        cache_size: Batches kept in the per-step cache.

    Example:
        ```python
        >>> judge = ModelReward(
        ...     helper_model,
        ...     build_inputs=lambda b: tokenizer([p + c for p, c in zip(b.prompt_texts, b.completion_texts)],
        ...                                      return_tensors="pt", padding=True),
        ...     scores={"fluency": fluency_from_logits, "answer_likelihood": answer_likelihood_from_logits},
        ...     weights={"fluency": 0.2, "answer_likelihood": 0.8},
        ... )
        >>> trainer = GRPOTrainer(model, reward_funcs=[judge], ...)  # or reward_funcs=[judge.head("fluency"), ...]
        ```
    """

    def __init__(
        self,
        model: Any,
        build_inputs: Callable[[RewardBatch], Any],
        scores: Mapping[str, Callable[[Any, RewardBatch], Any]] | Callable[[Any, RewardBatch], Any],
        weights: Mapping[str, float] | None = None,
        forward: Callable[[Any, Any], Any] | None = None,
        device: torch.device | str | None = None,
        name: str = "model_reward",
        cache_size: int = 4,
    ):
        if callable(scores) and not isinstance(scores, Mapping):
            scores = {"score": scores}
        if not isinstance(scores, Mapping):
            raise TypeError(
                f"ModelReward: scores must be a function `score(outputs, batch)` or a mapping of names to such "
                f"functions, got {type(scores).__name__}."
            )
        if not scores:
            raise ValueError("ModelReward needs at least one score function.")
        if model is None:
            raise TypeError("ModelReward needs the frozen helper model it scores with, got None.")
        optional = {} if forward is None else {"forward": forward}
        named = {"build_inputs": build_inputs, **optional, **{f"scores[{k!r}]": fn for k, fn in scores.items()}}
        for what, function in named.items():
            if not callable(function):
                raise TypeError(f"ModelReward: {what} must be callable, got {type(function).__name__}.")
        unknown = set(weights or {}) - set(scores)
        if unknown:
            raise ValueError(f"weights name unknown scores {sorted(unknown)}; scores are {sorted(scores)}.")
        self.model = model
        self.build_inputs = build_inputs
        self.scores = dict(scores)
        self.weights = {
            key: check_real((weights or {}).get(key, 1.0), "ModelReward", f"weights[{key!r}]") for key in self.scores
        }
        self.forward = forward
        self.name = name
        self.__name__ = name
        self.cache_size = int(cache_size)
        self.helper_calls = 0  # number of helper passes run (cache misses)
        self._cache: OrderedDict[tuple, tuple[RewardBatch, dict[str, list[float | None]]]] = OrderedDict()
        self._cache_step: Any = object()
        if isinstance(model, torch.nn.Module):
            model.eval()
            model.requires_grad_(False)
        if device is None:
            parameter = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
            device = parameter.device if parameter is not None else "cpu"
        self.device = torch.device(device)

    # ------------------------------------------------------------------------------------------------ core
    def _batch(self, prompts: Any, completions: Any, completion_ids: Any, kwargs: dict) -> RewardBatch:
        completions = list(completions or [])
        columns = {
            key: list(value)
            for key, value in kwargs.items()
            if key not in _TRL_KWARGS and isinstance(value, (list, tuple)) and len(value) == len(completions)
        }
        ids = None if completion_ids is None else [list(map(int, r)) for r in completion_ids]
        return RewardBatch(list(prompts or [""] * len(completions)), completions, ids, columns)

    def _run(self, batch: RewardBatch) -> Any:
        inputs = _to_device(self.build_inputs(batch), self.device)
        batch.inputs = inputs
        with torch.inference_mode():
            if self.forward is not None:
                return self.forward(self.model, inputs)
            if isinstance(inputs, Mapping):
                return self.model(**inputs)
            return self.model(inputs)

    def compute_scores(
        self,
        prompts: Sequence[Any] | None,
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> dict[str, list[float | None]]:
        """All named scores for the batch, `{name: [B values]}`, from one (cached) helper pass."""
        batch = self._batch(prompts, completions, completion_ids, kwargs)
        state = kwargs.get("trainer_state")
        step = getattr(state, "global_step", None)
        if step != self._cache_step:
            self._cache.clear()
            self._cache_step = step
        # image_segments are derived from completion_ids (already in the key) and are costly to repr.
        plain_columns = {k: v for k, v in batch.columns.items() if k != "image_segments"}
        key = (step, _fingerprint(batch.prompts, batch.completions, batch.completion_ids, plain_columns))
        if key in self._cache:
            return self._cache[key][1]
        outputs = self._run(batch)
        self.helper_calls += 1
        values: dict[str, list[float | None]] = {}
        for score_name, fn in self.scores.items():
            raw = fn(outputs, batch)
            if isinstance(raw, torch.Tensor):
                raw = raw.detach().float().cpu().flatten().tolist()
            raw = list(raw)
            if len(raw) != len(batch):
                raise ValueError(
                    f"{self.name}: score {score_name!r} returned {len(raw)} values for {len(batch)} completions."
                )
            values[score_name] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
                                  for v in raw]  # fmt: skip
        self._cache[key] = (batch, values)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return values

    def __call__(
        self, prompts: Batch = None, completions: Batch = None, completion_ids: TokenIds = None, **kwargs: Any
    ) -> Rewards:
        values = self.compute_scores(prompts, completions, completion_ids, **kwargs)
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            for score_name, column in values.items():
                present = [v for v in column if v is not None]
                if present:
                    log_metric(f"{self.name}/{score_name}", sum(present) / len(present))
        rewards: list[float | None] = []
        for i in range(len(completions or [])):
            parts = [(self.weights[k], column[i]) for k, column in values.items() if column[i] is not None]
            rewards.append(sum(w * v for w, v in parts) if parts else None)
        return rewards

    def head(self, score_name: str) -> Callable[..., list[float | None]]:
        """A TRL reward callable returning one named score (unweighted), sharing this reward's helper pass.

        Use it to give each score its own `rewards/<name>/mean` log and its own entry in TRL's `reward_weights`.
        """
        if score_name not in self.scores:
            raise KeyError(f"{self.name} has no score {score_name!r}; scores are {sorted(self.scores)}.")

        def reward(prompts=None, completions=None, completion_ids=None, **kwargs):
            return self.compute_scores(prompts, completions, completion_ids, **kwargs)[score_name]

        reward.__name__ = f"{self.name}_{score_name}"
        reward.__qualname__ = reward.__name__
        return reward

    def __repr__(self) -> str:
        return (
            f"ModelReward(name={self.name!r}, helper={type(self.model).__name__}, device={self.device}, "
            f"weights={self.weights})"
        )
