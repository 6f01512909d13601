"""Exact float32 for the VQ model on GPUs, where convolutions default to TF32."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def exact_float32_convolutions(device: torch.device | str) -> Iterator[None]:
    """Runs float32 convolutions in full float32 precision on CUDA devices for the duration of the block.

    PyTorch lets cuDNN compute float32 convolutions in TF32 by default. For the VQ model that is not a rounding
    detail: on an H100 a 512-pixel Anole decode was 1.7e-2 away from a float64 run with TF32 and 5e-5 without, and
    TF32 changes encoded codes. The previous setting is restored on exit; elsewhere (CPU) this does nothing.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9: per-operator precision settings
        previous = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = previous
        return
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous
