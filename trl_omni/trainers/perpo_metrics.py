"""PeRPO's modality metrics, computed from what TRL already produces: the completion ids handed to the rewards, the
perception scores of the rewards, and the per-token log-probabilities and entropies of TRL's policy forward."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..models import ImageSegments, ImageVocabulary


# Loss types whose objective clips the importance ratio to [1 - epsilon, 1 + epsilon_high] (TRL's clip metrics).
CLIPPED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")


def log_image_metrics(
    metrics: dict[str, list[float]],
    accelerator: Any,
    vocab: ImageVocabulary,
    completion_ids: Sequence[Sequence[int]],
    segments: ImageSegments,
) -> None:
    """`images/token_share`, `images/per_completion`, `images/complete_rate` and `images/stray_tokens` over the
    completions of all processes, from the core's parse of this process's completions."""
    flat = torch.as_tensor([t for ids in completion_ids for t in ids], dtype=torch.long)
    local = torch.tensor(
        [
            len(completion_ids),
            flat.numel(),
            int(vocab.is_image_token(flat).sum()) if flat.numel() else 0,
            len(segments),
            int(segments.complete.sum()),
            int(segments.stray_image_tokens.sum()),
        ],
        dtype=torch.float64,
        device=accelerator.device,
    )
    completions, tokens, images, opened, complete, stray = accelerator.gather(local).view(-1, 6).sum(0)
    metrics["images/token_share"].append((images / tokens.clamp(min=1)).item())
    metrics["images/per_completion"].append((opened / completions.clamp(min=1)).item())
    metrics["images/stray_tokens"].append((stray / completions.clamp(min=1)).item())
    if opened > 0:
        metrics["images/complete_rate"].append((complete / opened).item())


def log_perception_metrics(metrics: dict[str, list[float]], accelerator: Any, scores: Sequence[float | None]) -> None:
    """`perception/scored_frac` (share of completions with a scored image), `perception/score_mean` and
    `perception/score_min` over all processes."""
    local = torch.tensor(
        [float("nan") if s is None else float(s) for s in scores], dtype=torch.float32, device=accelerator.device
    )
    gathered = accelerator.gather(local)
    scored = gathered[~torch.isnan(gathered)]
    metrics["perception/scored_frac"].append(scored.numel() / max(gathered.numel(), 1))
    if scored.numel():
        metrics["perception/score_mean"].append(scored.mean().item())
        metrics["perception/score_min"].append(scored.min().item())


@contextlib.contextmanager
def policy_token_outputs(model: torch.nn.Module) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Collects `(log_probs, entropy)` of every forward of `model` while open (detached).

    TRL's loss runs the policy with its fused LM head (`model(..., fused_lm_head=True)`, see
    `trl.trainer.utils.add_fused_lm_head`), whose output carries per-token `log_probs` and `entropy`. A forward hook
    on the module TRL calls reads them, so the modality metrics need no second forward. Forwards without these fields
    are skipped.
    """
    collected: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
        log_probs, entropy = getattr(output, "log_probs", None), getattr(output, "entropy", None)
        if log_probs is not None and entropy is not None:
            collected.append((log_probs.detach(), entropy.detach()))

    handle = model.register_forward_hook(hook)
    try:
        yield collected
    finally:
        handle.remove()


def log_modality_loss_metrics(
    metrics: dict[str, list[float]],
    trainer: Any,
    inputs: dict[str, Any],
    outputs: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """`entropy/{text,image}` and `clip_ratio/{text,image}/{low,high,region}_mean` from the loss's own forward.

    Args:
        metrics: The metric lists of the current mode.
        trainer: The `PeRPOTrainer` (for the vocabulary, loss type, clipping bounds and accelerator).
        inputs: The batch TRL's loss received.
        outputs: The `(log_probs, entropy)` of its policy forward(s), in batch order (see [`policy_token_outputs`]).
    """
    completion_ids = inputs["completion_ids"]
    length = completion_ids.size(1)
    logps = torch.cat([lp[:, -length:] for lp, _ in outputs])
    entropies = torch.cat([ent[:, -length:] for _, ent in outputs])
    if logps.shape != completion_ids.shape:
        return  # not the policy forward of this batch
    mask = inputs["completion_mask"].bool()
    if "tool_mask" in inputs:
        mask = mask & inputs["tool_mask"].bool()
    is_image = trainer.image_vocabulary.is_image_token(completion_ids)
    modalities = {"text": mask & ~is_image, "image": mask & is_image}

    clipped = trainer.loss_type in CLIPPED_LOSS_TYPES
    stats = []
    for modality_mask in modalities.values():
        weight = modality_mask.float()
        stats += [weight.sum(), (entropies * weight).sum()]
    if clipped:
        old = inputs.get("old_per_token_logps")
        log_ratio = logps - (logps if old is None else old)
        if trainer.importance_sampling_level == "sequence":
            log_ratio = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
        ratio = torch.exp(log_ratio).expand_as(logps)
        advantages = inputs["advantages"]
        advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
        low = (ratio < 1 - trainer.epsilon_low) & (advantages < 0)
        high = (ratio > 1 + trainer.epsilon_high) & (advantages > 0)
        for modality_mask in modalities.values():
            weight = modality_mask.float()
            stats += [(low * weight).sum(), (high * weight).sum(), ((low | high) * weight).sum()]
    totals = trainer.accelerator.reduce(torch.stack(stats).float(), reduction="sum").tolist()

    for k, name in enumerate(modalities):
        count, entropy = totals[2 * k], totals[2 * k + 1]
        if count == 0:
            continue
        metrics[f"entropy/{name}"].append(entropy / count)
        if clipped:
            low, high, region = totals[4 + 3 * k : 7 + 3 * k]
            metrics[f"clip_ratio/{name}/low_mean"].append(low / count)
            metrics[f"clip_ratio/{name}/high_mean"].append(high / count)
            metrics[f"clip_ratio/{name}/region_mean"].append(region / count)
