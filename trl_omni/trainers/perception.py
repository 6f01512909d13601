"""The perception head of PeSFT: a trainable projection from the final hidden state to the VQ codebook space.

The head lives *on the model* (as `model.perception_head`), so whatever trains, saves, shards or reloads the model
(TRL, accelerate, FSDP/DeepSpeed, PEFT `modules_to_save`) handles it too. The Omni-R1 authors kept it outside the
model, where it was never optimised nor saved.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from typing import Any

import torch
from torch import nn

from ..models import ImageVocabulary, unwrap_model
from ..models.loading import PERCEPTION_HEAD_NAME


logger = logging.getLogger(__name__)


class PerceptionHead(nn.Module):
    """Linear projection `hidden_size -> codebook_dim` without bias (the paper's `W`).

    It deliberately is not an `nn.Linear`: PEFT's `target_modules="all-linear"` would otherwise put a LoRA adapter on
    it, while it must be trained in full through `modules_to_save`.

    Args:
        hidden_size: Width of the language model's final hidden state.
        codebook_dim: Dimension of the VQ codebook embeddings.
        seed: Seed of the initialisation (uniform in `+-1/sqrt(hidden_size)`, like `nn.Linear`).
        device: Device of the weight.
        dtype: Dtype of the weight.

    Example:
        ```python
        >>> import torch
        >>> from trl_omni.trainers import PerceptionHead
        >>> head = PerceptionHead(hidden_size=64, codebook_dim=16, seed=0)
        >>> head(torch.randn(3, 64)).shape
        torch.Size([3, 16])
        ```
    """

    def __init__(
        self,
        hidden_size: int,
        codebook_dim: int,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.codebook_dim = codebook_dim
        weight = torch.empty(codebook_dim, hidden_size, dtype=torch.float32)
        bound = 1.0 / math.sqrt(hidden_size)
        # A private generator: the init is reproducible and leaves the global RNG (data order, dropout) untouched.
        weight.uniform_(-bound, bound, generator=torch.Generator().manual_seed(seed))
        self.weight = nn.Parameter(weight.to(device=device, dtype=dtype or torch.float32))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # QLoRA keeps trainable weights in bf16 while the backbone computes in another dtype.
        return nn.functional.linear(hidden_states.to(self.weight.dtype), self.weight)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, codebook_dim={self.codebook_dim}, bias=False"


def get_perception_head(model: Any) -> nn.Module | None:
    """Returns the perception head registered on a (possibly PEFT- or accelerate-wrapped) model, or None.

    Under PEFT this is the `ModulesToSaveWrapper`, whose forward runs the trainable copy.
    """
    return getattr(unwrap_model(model), PERCEPTION_HEAD_NAME, None)


def add_perception_head(
    model: Any,
    image_vocabulary: ImageVocabulary | int,
    seed: int = 0,
    load_saved: bool = True,
) -> nn.Module:
    """Registers a [`PerceptionHead`] on `model` as `model.perception_head`, unless it already has one.

    Call it on the base model *before* PEFT or accelerate wrap it. When the model was loaded from a local directory
    whose safetensors hold `perception_head.weight` (a full fine-tune saved by [`PeSFTTrainer`]), those weights are
    loaded instead of a fresh initialisation. To reload a PEFT adapter trained with PeSFT, call this on the base model
    first and then `PeftModel.from_pretrained(model, adapter_dir)`: the adapter restores the trained head.

    Args:
        model: A Chameleon / Anole model (`ChameleonForConditionalGeneration`).
        image_vocabulary: The model's [`~trl_omni.ImageVocabulary`] (for the codebook dimension), or that dimension.
        seed: Seed of a fresh initialisation.
        load_saved: Look for saved head weights next to the model's `name_or_path`.

    Returns:
        The head registered on the model (the existing one when present).

    Example:
        ```python
        >>> from trl_omni import ImageVocabulary
        >>> from trl_omni.testing import tiny_chameleon
        >>> from trl_omni.trainers import add_perception_head
        >>> model, processor = tiny_chameleon()
        >>> head = add_perception_head(model, ImageVocabulary.from_model(model, processor), seed=0)
        >>> model.perception_head is head
        True
        ```
    """
    base = unwrap_model(model)
    existing = getattr(base, PERCEPTION_HEAD_NAME, None)
    if existing is not None:
        return existing
    codebook_dim = image_vocabulary if isinstance(image_vocabulary, int) else image_vocabulary.codebook_dim
    norm = base.get_decoder().norm
    reference = norm.weight
    dtype = reference.dtype if reference.dtype.is_floating_point else torch.float32
    head = PerceptionHead(
        base.config.get_text_config().hidden_size, codebook_dim, seed=seed, device=reference.device, dtype=dtype
    )
    if load_saved:
        saved = _find_saved_head_weight(getattr(base, "name_or_path", None))
        if saved is not None:
            if saved.shape != head.weight.shape:
                raise ValueError(
                    f"The checkpoint at {base.name_or_path!r} holds a perception head of shape {tuple(saved.shape)}, "
                    f"expected {tuple(head.weight.shape)} (codebook_dim x hidden_size)."
                )
            with torch.no_grad():
                head.weight.copy_(saved.to(head.weight.dtype))
            logger.info("Loaded the trained perception head from %s.", base.name_or_path)
    base.add_module(PERCEPTION_HEAD_NAME, head)
    return head


def _find_saved_head_weight(path: str | os.PathLike | None) -> torch.Tensor | None:
    """`perception_head.weight` from the safetensors of a local model directory, or None."""
    if not path or not os.path.isdir(path):
        return None
    from safetensors import safe_open

    key = f"{PERCEPTION_HEAD_NAME}.weight"
    for file in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        with safe_open(file, framework="pt") as handle:
            if key in handle.keys():  # noqa: SIM118 (safe_open has no __contains__)
                return handle.get_tensor(key)
    return None
