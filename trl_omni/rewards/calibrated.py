"""The perception-calibrated combination of accuracy, format and perception (the Omni-R1 PeRPO reward)."""

from __future__ import annotations

from typing import Any

from ..models.image_vocabulary import check_image_vocabulary
from ._common import CompletionIdsReward, check_real
from .accuracy import make_accuracy_reward
from .format import make_format_reward
from .perception import PerceptionReward
from .reference import REFERENCE_COLUMN, ReferenceImageReward


class PerceptionCalibratedReward(CompletionIdsReward):
    """The authors' combined PeRPO reward as one callable.

    For each completion, with `acc` the accuracy ([`make_accuracy_reward`]), `fmt` the format score
    ([`make_format_reward`]) and `pe` the perception score ([`PerceptionReward`]):

    - with a perception score (the completion holds a complete image): `(1 - w) * (a * acc + f * fmt) + w * pe`;
    - without one: `a * acc + f * fmt`;

    with `w = perception_weight` (0.05), `a = accuracy_weight` (0.9), `f = format_weight` (0.1). With the defaults
    that is `0.855 acc + 0.095 fmt + 0.05 pe`, or `0.9 acc + 0.1 fmt`. A completion whose sample has no ground
    truth gets None (TRL then excludes it), as the accuracy term is undefined.

    With `reference_weight = r > 0` a reference-image term ([`ReferenceImageReward`], `ref`) joins on rows that
    carry reference images; every term that is present takes its weight and the accuracy / format part keeps the
    rest: `(1 - w - r) * (a * acc + f * fmt) + w * pe + r * ref` (drop `w` or `r` when that term is absent). A row
    with references scores `ref = 0` when nothing was drawn, so unlike the perception term this one pays for a
    correct drawing. With `r = 0` (the default, the authors' reward) nothing changes.

    The switch is what TRL's `reward_weights` cannot express: separate callables weighted `[0.855, 0.095, 0.05]`
    give a completion without an image `0.855 acc + 0.095 fmt` (its None perception is dropped, the weights are
    not renormalised), whereas this reward gives it `0.9 acc + 0.1 fmt`. Since `pe <= 1`, drawing never earns
    more than not drawing; the perception term only penalises rough drawings.

    Components are reported through `log_metric` as `perception_calibrated/accuracy`, `.../format`,
    `.../perception` (mean over completions that have one) and `.../with_image` (fraction of completions that have
    one).

    Args:
        image_vocabulary: The policy's [`~trl_omni.ImageVocabulary`].
        perception_weight: `w`.
        accuracy_weight: `a`.
        format_weight: `f`.
        tau, mapping, aggregation: See [`PerceptionReward`].
        answer_column: Dataset column holding the reference answer.
        format_style: `"tags"` or `"thought"`.
        rules: Accuracy rules, `"default"` or `"omni_r1"` (see [`~trl_omni.rewards.answer_score`]).
        reference_weight: `r`, the weight of the reference-image term (0 disables it).
        reference_column: Dataset column holding each row's reference images.
        reference: A ready [`ReferenceImageReward`] (other metric / alignment); built from `reference_column`
            when omitted.
        processing_class: Tokenizer or processor, used to read special-token tags from `completion_ids`
            (strongly recommended for the tags style, see [`make_format_reward`]).
        device: Device the perception term is computed on (see [`PerceptionReward`]); pass the trainer's device.
        **accuracy_kwargs: Further arguments of [`make_accuracy_reward`] (e.g. `similarity_threshold`, `strict`,
            `tags`, which the format reward shares).

    Example:
        ```python
        >>> reward = PerceptionCalibratedReward(ImageVocabulary.from_model(model, processor), processing_class=processor)
        >>> trainer = GRPOTrainer(model, reward_funcs=[reward], args=args, train_dataset=dataset)
        ```
    """

    name = "perception_calibrated"

    def __init__(
        self,
        image_vocabulary: Any,
        perception_weight: float = 0.05,
        accuracy_weight: float = 0.9,
        format_weight: float = 0.1,
        tau: float = 3.0,
        mapping: str = "inverse",
        aggregation: str = "min",
        answer_column: str = "answer",
        format_style: str = "tags",
        rules: str = "default",
        reference_weight: float = 0.0,
        reference_column: str = REFERENCE_COLUMN,
        reference: ReferenceImageReward | None = None,
        processing_class: Any | None = None,
        device: Any | None = None,
        **accuracy_kwargs: Any,
    ):
        owner = type(self).__name__
        check_image_vocabulary(image_vocabulary, owner)
        for argument, value in (("perception_weight", perception_weight), ("reference_weight", reference_weight),
                                ("accuracy_weight", accuracy_weight), ("format_weight", format_weight)):  # fmt: skip
            check_real(value, owner, argument)
        if not 0.0 <= perception_weight <= 1.0:
            raise ValueError(f"perception_weight must lie in [0, 1], got {perception_weight}.")
        if not 0.0 <= reference_weight <= 1.0 - perception_weight:
            raise ValueError(
                f"reference_weight must lie in [0, 1 - perception_weight] = [0, {1.0 - perception_weight}], got "
                f"{reference_weight}."
            )
        self.perception_weight = float(perception_weight)
        self.reference_weight = float(reference_weight)
        self.reference = None
        if self.reference_weight > 0:
            self.reference = reference or ReferenceImageReward(
                image_vocabulary, reference_column=reference_column, device=device
            )
        self.accuracy_weight = float(accuracy_weight)
        self.format_weight = float(format_weight)
        self.__name__ = self.name
        self.perception = PerceptionReward(
            image_vocabulary, tau=tau, mapping=mapping, aggregation=aggregation, device=device
        )
        self.accuracy = make_accuracy_reward(
            answer_column=answer_column,
            rules=rules,
            processing_class=processing_class,
            image_vocabulary=image_vocabulary,
            **accuracy_kwargs,
        )
        self.format = make_format_reward(
            style=format_style,
            processing_class=processing_class,
            image_vocabulary=image_vocabulary,
            tags=accuracy_kwargs.get("tags"),
        )

    def combine(
        self, accuracy: float | None, fmt: float, perception: float | None, reference: float | None = None
    ) -> float | None:
        """The combination rule for one completion."""
        if accuracy is None:
            return None
        present = [(w, v) for w, v in ((self.perception_weight, perception), (self.reference_weight, reference))
                   if v is not None]  # fmt: skip
        base = self.accuracy_weight * accuracy + self.format_weight * fmt
        return (1.0 - sum(w for w, _ in present)) * base + sum(w * v for w, v in present)

    def _reward(
        self, prompts: Any, completions: Any, completion_ids: Any, log_metric: Any, kwargs: dict[str, Any]
    ) -> list[float | None]:
        accuracy = self.accuracy(prompts, completions, completion_ids, **kwargs)
        fmt = self.format(prompts, completions, completion_ids, **kwargs)
        perception = self.perception.score(
            completion_ids, log_metric=log_metric, image_segments=kwargs.get("image_segments")
        )
        references: list[float | None] = [None] * len(perception)
        if self.reference is not None:
            references = self.reference(prompts, completions, completion_ids, log_metric=log_metric, **kwargs)
        if log_metric is not None:
            scored_acc = [a for a in accuracy if a is not None]
            scored_pe = [p for p in perception if p is not None]
            if scored_acc:
                log_metric(f"{self.name}/accuracy", sum(scored_acc) / len(scored_acc))
            if fmt:
                log_metric(f"{self.name}/format", sum(fmt) / len(fmt))
            if scored_pe:
                log_metric(f"{self.name}/perception", sum(scored_pe) / len(scored_pe))
            if perception:
                log_metric(f"{self.name}/with_image", len(scored_pe) / len(perception))
            scored_ref = [r for r in references if r is not None]
            if scored_ref:
                log_metric(f"{self.name}/reference", sum(scored_ref) / len(scored_ref))
        return [self.combine(a, f, p, r) for a, f, p, r in zip(accuracy, fmt, perception, references, strict=True)]

    def __repr__(self) -> str:
        return (
            f"PerceptionCalibratedReward(w={self.perception_weight}, accuracy_weight={self.accuracy_weight}, "
            f"format_weight={self.format_weight}, reference_weight={self.reference_weight}, "
            f"perception={self.perception!r})"
        )
