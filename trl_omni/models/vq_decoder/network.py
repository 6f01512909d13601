"""[`ChameleonVQDecoder`]: the decoder network of Chameleon / Anole's VQGAN.

transformers' `ChameleonVQVAE` holds only the encoder half of Chameleon's VQGAN (`encoder`, `quant_conv`,
`quantize`, `post_quant_conv`); it cannot decode. [`ChameleonVQDecoder`] is trl-omni's own implementation of the
decoder half, built from the model's `vq_config` as the mirror of `ChameleonVQVAEEncoder`:
`conv_in -> mid (resnet, attention, resnet) -> up levels (num_res_blocks + 1 resnets each, x2 nearest upsample +
conv between levels) -> GroupNorm -> swish -> conv_out`, preceded by `post_quant_conv` (codebook dim -> latent
channels). A `(H, W)` code grid decodes to `(H * 2**(L-1), W * 2**(L-1))` pixels for `L = len(channel_multiplier)`.

Pixels: Chameleon's image processor maps a pixel `p` to `(p * rescale_factor - mean) / std` (rescale 0.0078, mean and
std 1.0, i.e. `[-1, 1]`); decoding inverts exactly that, reading the three numbers from the processor when one is
given. The float -> `uint8` step is the Omni-R1 authors' by default (their `postprocess`, facts from their release:
`(x * std + mean) * (1 / rescale_factor)` in float32, clamped to [0, 255], then *truncated* by the cast), so decoded
images match theirs value for value; `pixel_rounding="round"` rounds to the nearest level instead.

Layout: the network runs in the default (contiguous) memory format. On CPU, GroupNorm on channels_last tensors loses
about two orders of magnitude of float32 accuracy (max abs error ~3e-4 against a float64 run at 512 px with the test
decoder, ~2e-3 with Anole's, vs ~2e-5 contiguous); `tests/test_vq_decoder_accuracy.py` holds the float32 decoder
within 1e-4 of float64.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..image_vocabulary import unwrap_model


PIXEL_ROUNDINGS = ("truncate", "round")


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class _ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        # The released VQGAN uses the 1x1 "network-in-network" shortcut when the width changes.
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class _AttnBlock(nn.Module):
    """Single-head spatial self-attention over all `H*W` positions (1x1 convs for q, k, v and the output)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        # (B, 1, HW, C): one head; SDPA scales by C**-0.5 like the reference block.
        q, k, v = (proj(h).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(out)


class _Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _VQGANDecoder(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        multipliers = list(config.channel_multiplier)
        base = int(config.base_channels)
        num_res_blocks = int(config.num_res_blocks)
        dropout = float(getattr(config, "dropout", 0.0) or 0.0)
        vanilla_attention = getattr(config, "attn_type", "vanilla") == "vanilla"
        attn_resolutions = set(getattr(config, "attn_resolutions", None) or [])
        self.num_resolutions = len(multipliers)
        self.num_res_blocks = num_res_blocks

        block_in = base * multipliers[-1]
        resolution = int(config.resolution) // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(int(config.latent_channels), block_in, kernel_size=3, padding=1)

        self.mid = nn.Module()
        self.mid.block_1 = _ResnetBlock(block_in, block_in, dropout)
        self.mid.attn_1 = _AttnBlock(block_in) if vanilla_attention else nn.Identity()
        self.mid.block_2 = _ResnetBlock(block_in, block_in, dropout)

        # Levels are built from the lowest resolution up but stored by level index (`up.0` = full resolution), which
        # is the order the checkpoints use.
        levels: list[nn.Module] = []
        for level in reversed(range(self.num_resolutions)):
            up = nn.Module()
            up.block = nn.ModuleList()
            up.attn = nn.ModuleList()
            block_out = base * multipliers[level]
            for _ in range(num_res_blocks + 1):
                up.block.append(_ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if vanilla_attention and resolution in attn_resolutions:
                    up.attn.append(_AttnBlock(block_in))
            if level != 0:
                up.upsample = _Upsample(block_in)
                resolution *= 2
            levels.insert(0, up)
        self.up = nn.ModuleList(levels)

        self.norm_out = _group_norm(block_in)
        out_channels = getattr(config, "out_channels", None) or int(getattr(config, "in_channels", 3))
        self.conv_out = nn.Conv2d(block_in, int(out_channels), kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(range(self.num_resolutions)):
            up = self.up[level]
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn) > 0:
                    h = up.attn[i](h)
            if level != 0:
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _vq_config_of(model_or_config: Any) -> Any:
    """The `ChameleonVQVAEConfig` of a model, a `ChameleonConfig`, a VQ config, or a dict."""
    from transformers import ChameleonVQVAEConfig

    if isinstance(model_or_config, Mapping):
        return ChameleonVQVAEConfig(**model_or_config)
    if isinstance(model_or_config, nn.Module):
        model_or_config = unwrap_model(model_or_config).config
    if isinstance(model_or_config, str | os.PathLike):
        raise TypeError(
            f"The VQ decoder is built from a model or its config, not from a path ({os.fspath(model_or_config)!r}). "
            "Fix: load_vq_decoder(model, checkpoint_dir) (the checkpoint directory is the second argument), or "
            "load_vq_decoder(ChameleonConfig.from_pretrained(path), path)."
        )
    vq_config = getattr(model_or_config, "vq_config", model_or_config)
    if isinstance(vq_config, Mapping):
        vq_config = ChameleonVQVAEConfig(**vq_config)
    for name in ("embed_dim", "latent_channels", "base_channels", "channel_multiplier", "num_res_blocks"):
        if not hasattr(vq_config, name):
            raise TypeError(
                f"Cannot read a VQ config from {type(model_or_config).__name__}: it has no `{name}`. Pass a Chameleon "
                "/ Anole model, its `ChameleonConfig`, its `vq_config`, or a dict of `ChameleonVQVAEConfig` fields."
            )
    return vq_config


def _default_pixel_normalization() -> tuple[float, list[float], list[float]]:
    from transformers import ChameleonImageProcessorPil

    cls = ChameleonImageProcessorPil
    return float(cls.rescale_factor), list(cls.image_mean), list(cls.image_std)


class ChameleonVQDecoder(nn.Module):
    """The decoder half of Chameleon's VQGAN: codebook embeddings -> `post_quant_conv` -> decoder -> pixels.

    Parameter names follow the released checkpoints (`post_quant_conv.*`, `decoder.*`), so a state dict with the
    checkpoint prefix stripped loads with `load_state_dict`. Build it with [`load_vq_decoder`] to get real weights;
    constructed directly it has random weights (useful for shapes and tests only).

    Args:
        vq_config: A `ChameleonVQVAEConfig` (or `ChameleonConfig` / model / dict, see [`load_vq_decoder`]).
        image_processor: Optional Chameleon image processor whose `rescale_factor`, `image_mean` and `image_std`
            define the pixel normalisation to invert. Defaults to `ChameleonImageProcessorPil`'s class values.
        pixel_rounding: How [`to_pil`] turns values into `uint8` levels: `"truncate"` (default, the Omni-R1 authors'
            post-processing: clamp to [0, 255], then the cast drops the fraction) or `"round"` (nearest level).

    Example:
        ```python
        >>> from trl_omni.models.vq_decoder import ChameleonVQDecoder
        >>> from trl_omni.testing import tiny_chameleon
        >>> model, processor = tiny_chameleon()
        >>> decoder = ChameleonVQDecoder(model.config.vq_config, processor.image_processor)
        >>> decoder.upsampling_factor
        4
        ```
    """

    def __init__(self, vq_config: Any, image_processor: Any | None = None, pixel_rounding: str = "truncate"):
        super().__init__()
        if pixel_rounding not in PIXEL_ROUNDINGS:
            raise ValueError(f"pixel_rounding must be one of {PIXEL_ROUNDINGS}, got {pixel_rounding!r}.")
        self.pixel_rounding = pixel_rounding
        config = _vq_config_of(vq_config)
        self.embed_dim = int(config.embed_dim)
        self.upsampling_factor = 2 ** (len(config.channel_multiplier) - 1)
        self.post_quant_conv = nn.Conv2d(self.embed_dim, int(config.latent_channels), kernel_size=1)
        self.decoder = _VQGANDecoder(config)
        rescale, mean, std = _default_pixel_normalization()
        if image_processor is not None:
            rescale = float(getattr(image_processor, "rescale_factor", rescale))
            mean = list(getattr(image_processor, "image_mean", mean))
            std = list(getattr(image_processor, "image_std", std))
        self.rescale_factor, self.image_mean, self.image_std = rescale, mean, std
        self.eval()
        self.requires_grad_(False)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """`(N, embed_dim, H, W)` codebook embeddings -> `(N, C, H * f, W * f)` pixels, in the normalised space."""
        # Contiguous on purpose: see the module docstring (GroupNorm accuracy on channels_last).
        return self.decoder(self.post_quant_conv(latents.contiguous()))

    def to_uint8(self, pixels: torch.Tensor) -> torch.Tensor:
        """`(N, C, H, W)` decoder output -> `(N, C, H, W)` uint8 levels on CPU (see `pixel_rounding`)."""
        pixels = pixels.detach().float().cpu()
        channels = pixels.shape[1]
        std = torch.tensor(self.image_std, dtype=torch.float32)[:channels].view(1, -1, 1, 1)
        mean = torch.tensor(self.image_mean, dtype=torch.float32)[:channels].view(1, -1, 1, 1)
        # The same float32 operations, in the same order, as the authors' post-processing.
        values = (pixels * std + mean) * (1.0 / self.rescale_factor)
        if self.pixel_rounding == "round":
            values = values.round()
        return values.clamp(0, 255).to(torch.uint8)

    def to_pil(self, pixels: torch.Tensor) -> list[Image.Image]:
        """Inverts the image processor's normalisation and returns one RGB `PIL.Image` per batch entry."""
        channels = pixels.shape[1]
        array = self.to_uint8(pixels).permute(0, 2, 3, 1).numpy()
        mode = "RGB" if channels == 3 else "L"
        return [Image.fromarray(a if channels == 3 else a[..., 0], mode=mode) for a in array]
