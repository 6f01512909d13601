"""Turning image codes back into pixels: a VQGAN decoder for Chameleon / Anole, and an exact palette decoder.

transformers' `ChameleonVQVAE` holds only the encoder half of Chameleon's VQGAN (`encoder`, `quant_conv`,
`quantize`, `post_quant_conv`); it cannot decode. [`ChameleonVQDecoder`] is trl-omni's own implementation of the
decoder half, built from the model's `vq_config` as the mirror of `ChameleonVQVAEEncoder`:
`conv_in -> mid (resnet, attention, resnet) -> up levels (num_res_blocks + 1 resnets each, x2 nearest upsample +
conv between levels) -> GroupNorm -> swish -> conv_out`, preceded by `post_quant_conv` (codebook dim -> latent
channels). A `(H, W)` code grid decodes to `(H * 2**(L-1), W * 2**(L-1))` pixels for `L = len(channel_multiplier)`.

Checkpoint key names (evidence, checked 2026-11):
- Original Chameleon / Anole release (`GAIR/Anole-7b-v0.1`, `tokenizer/vqgan.ckpt` + `tokenizer/vqgan.yaml`): the
  taming-transformers `VQModel` layout, read from `chameleon/inference/vqgan.py` in github.com/GAIR-NLP/anole:
  `decoder.conv_in`, `decoder.mid.block_1|attn_1|block_2`, `decoder.up.{level}.block.{i}` (`norm1`, `conv1`,
  `norm2`, `conv2`, `nin_shortcut` when the width changes), `decoder.up.{level}.attn.{i}`,
  `decoder.up.{level}.upsample.conv`, `decoder.norm_out`, `decoder.conv_out`, plus `post_quant_conv` and
  `quantize.embedding`. GroupNorm parameters are `weight` / `bias`.
- HF format (`leloy/Anole-7b-v0.1-hf`, produced by transformers PR #32013 "Improve support for image generation
  with Chameleon & Anole", whose description says the conversion step now includes the VQVAE decoder): the stock
  conversion script stores every VQGAN key `k` as `model.vqmodel.{k}` (it skips only the decoder keys), and the
  Anole modelling from that PR (kept in PR #36047, `AnoleVQVAE.decoder = AnoleVQVAEDecoder`) uses the same submodule
  names as taming's `Decoder`, so the decoder keys are `model.vqmodel.decoder.*` and
  `model.vqmodel.post_quant_conv.*`.
Cross-check: with the reference `VQModel` from that file, the decoder's `decoder.*` / `post_quant_conv.*` key sets are
identical (with and without attention resolutions and width changes) and `VQModel.decode` outputs match to 1e-5;
`tests/test_vq_decoder.py` pins golden outputs computed with the reference.
[`load_vq_decoder`] accepts the prefixes `model.vqmodel.`, `vqmodel.` and none (bare taming layout), from
`*.safetensors` files (sharded with `model.safetensors.index.json` or not; only the shards holding decoder keys are
opened) or from the original `tokenizer/vqgan.ckpt` (`{"state_dict": ...}`, read with `weights_only=True`). Missing
keys raise [`MissingVQDecoderWeightsError`] naming them.

Pixels: Chameleon's image processor maps a pixel `p` to `(p * rescale_factor - mean) / std` (rescale 0.0078, mean and
std 1.0, i.e. `[-1, 1]`); decoding inverts exactly that, reading the three numbers from the processor when one is
given, and clamps to `uint8`.

[`PaletteDecoder`] decodes palette codebooks exactly (each code is one flat colour patch) and encodes such images
back to codes; [`palette_codebook`] builds a codebook whose embedding distances are colour distances, so the
perception (2D total-variation) reward is meaningful on drawings made of palette codes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .image_vocabulary import ImageVocabulary, _chameleon_backbone, _gathered_copy, unwrap_model


KEY_PREFIXES = ("model.vqmodel.", "vqmodel.", "")
"""Prefixes under which VQGAN decoder keys are looked up, in order (HF Anole, bare VQ model, taming layout)."""


class MissingVQDecoderWeightsError(KeyError):
    """Raised when a checkpoint lacks some VQGAN decoder weights; `missing_keys` lists them."""

    def __init__(self, message: str, missing_keys: Sequence[str]):
        super().__init__(message)
        self.message = message
        self.missing_keys = list(missing_keys)

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.message


# ---------------------------------------------------------------------------------------------------------- modules
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

    def __init__(self, vq_config: Any, image_processor: Any | None = None):
        super().__init__()
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
        # channels_last makes the full-resolution 3x3 convolutions (most of the ~1 TFLOP of a 512 px image) about
        # 1.5x faster on CPU and suits tensor cores on GPU; `load_state_dict` and `.to()` keep the layout.
        self.to(memory_format=torch.channels_last)
        self.eval()
        self.requires_grad_(False)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """`(N, embed_dim, H, W)` codebook embeddings -> `(N, C, H * f, W * f)` pixels in the model's normalised space."""
        return self.decoder(self.post_quant_conv(latents.contiguous(memory_format=torch.channels_last)))

    def to_pil(self, pixels: torch.Tensor) -> list[Image.Image]:
        """Inverts the image processor's normalisation and returns one RGB `PIL.Image` per batch entry."""
        pixels = pixels.detach().float().cpu()
        channels = pixels.shape[1]
        std = torch.tensor(self.image_std, dtype=torch.float32).reshape(-1, 1, 1)[:channels]
        mean = torch.tensor(self.image_mean, dtype=torch.float32).reshape(-1, 1, 1)[:channels]
        values = (pixels * std + mean) / self.rescale_factor
        array = values.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        mode = "RGB" if channels == 3 else "L"
        return [Image.fromarray(a if channels == 3 else a[..., 0], mode=mode) for a in array]


# ---------------------------------------------------------------------------------------------------------- loading
def _checkpoint_tensor_sources(checkpoint_dir: str) -> list[tuple[str, list[str] | None]]:
    """`(file, keys or None)` for every weight file of a checkpoint directory (None: keys read from the file)."""
    index_files = sorted(f for f in os.listdir(checkpoint_dir) if f.endswith(".safetensors.index.json"))
    if index_files:
        sources: dict[str, list[str]] = {}
        for index_file in index_files:
            with open(os.path.join(checkpoint_dir, index_file), encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map", {})
            for key, shard in weight_map.items():
                sources.setdefault(os.path.join(checkpoint_dir, shard), []).append(key)
        return list(sources.items())
    files = sorted(f for f in os.listdir(checkpoint_dir) if f.endswith(".safetensors"))
    found: list[tuple[str, list[str] | None]] = [(os.path.join(checkpoint_dir, f), None) for f in files]
    vqgan_ckpt = os.path.join(checkpoint_dir, "tokenizer", "vqgan.ckpt")
    if os.path.isfile(vqgan_ckpt):
        found.append((vqgan_ckpt, None))
    return found


def _read_tensors(path: str, wanted: set[str]) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys() if key in wanted}
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    return {key: value for key, value in state.items() if key in wanted}


def _file_keys(path: str) -> list[str]:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    state = torch.load(path, map_location="cpu", weights_only=True)
    return list(state.get("state_dict", state).keys())


def read_vq_decoder_state_dict(
    checkpoint_dir: str | os.PathLike, expected_keys: Iterable[str], prefixes: Sequence[str] = KEY_PREFIXES
) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Reads the VQGAN decoder tensors of a checkpoint directory, opening only the files that hold them.

    Args:
        checkpoint_dir: Local checkpoint directory (HF format with `*.safetensors` / index json, or the original
            release with `tokenizer/vqgan.ckpt`).
        expected_keys: Keys relative to the VQ model (`decoder.conv_in.weight`, `post_quant_conv.weight`, ...).
        prefixes: Candidate prefixes; the one matching the most expected keys wins.

    Returns:
        `(state_dict with prefix-free keys, prefix used, files read)`.
    """
    checkpoint_dir = os.fspath(checkpoint_dir)
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"VQ decoder checkpoint directory {checkpoint_dir!r} does not exist.")
    expected = list(expected_keys)
    sources = _checkpoint_tensor_sources(checkpoint_dir)
    if not sources:
        raise FileNotFoundError(
            f"No weights in {checkpoint_dir!r}: expected `*.safetensors` (optionally with "
            "`model.safetensors.index.json`) or `tokenizer/vqgan.ckpt`."
        )
    key_to_file: dict[str, str] = {}
    for path, keys in sources:
        for key in keys if keys is not None else _file_keys(path):
            key_to_file.setdefault(key, path)
    best_prefix = max(prefixes, key=lambda p: sum(p + k in key_to_file for k in expected))
    wanted_by_file: dict[str, set[str]] = {}
    for key in expected:
        path = key_to_file.get(best_prefix + key)
        if path is not None:
            wanted_by_file.setdefault(path, set()).add(best_prefix + key)
    state: dict[str, torch.Tensor] = {}
    for path, wanted in wanted_by_file.items():
        for key, value in _read_tensors(path, wanted).items():
            state[key[len(best_prefix) :]] = value
    return state, best_prefix, sorted(wanted_by_file)


def _download_decoder_files(repo_id: str) -> str:
    """Resolves a Hub repo id to a local snapshot holding its decoder weights, fetching only the shards that hold
    decoder keys (a no-op when the model was loaded from the Hub: the shards are already in the cache)."""
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(repo_id, allow_patterns=["*.safetensors.index.json"])
    except Exception as error:  # offline, unknown repo, gated repo, ...
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local directory nor a reachable Hub repository ({type(error).__name__}: "
            f"{error}). Pass `checkpoint_dir=` pointing to a local Anole checkpoint."
        ) from error
    shards: set[str] = set()
    for index_file in (f for f in os.listdir(local) if f.endswith(".safetensors.index.json")):
        with open(os.path.join(local, index_file), encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map", {})
        shards.update(
            shard
            for key, shard in weight_map.items()
            if any(key.startswith(p + "decoder.") or key.startswith(p + "post_quant_conv.") for p in KEY_PREFIXES)
        )
    patterns = sorted(shards) if shards else ["*.safetensors", "tokenizer/vqgan.ckpt"]
    return snapshot_download(repo_id, allow_patterns=patterns + ["*.safetensors.index.json"])


def load_vq_decoder(
    model_or_config: Any,
    checkpoint_dir: str | os.PathLike | None = None,
    *,
    image_processor: Any | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    prefixes: Sequence[str] = KEY_PREFIXES,
) -> ChameleonVQDecoder:
    """Builds a [`ChameleonVQDecoder`] from a model's `vq_config` and loads its weights from an Anole checkpoint.

    `post_quant_conv` is taken from the checkpoint when it has it, else from the model's `vqmodel` (transformers
    loads it with the encoder). Every `decoder.*` weight must come from the checkpoint: stock transformers drops them
    on load, and checkpoints converted with transformers' own Chameleon script do not contain them at all.

    Args:
        model_or_config: A Chameleon / Anole model (wrappers allowed), its `ChameleonConfig`, its `vq_config`, or a
            dict of `ChameleonVQVAEConfig` fields.
        checkpoint_dir: Directory of an Anole-format checkpoint (see the module docstring for the accepted layouts),
            or a Hub repo id (only the shards holding decoder weights are fetched; from the cache when the model was
            loaded from the Hub). Defaults to the model's `config._name_or_path`.
        image_processor: Chameleon image processor defining the pixel normalisation to invert (optional).
        device: Device for the decoder; defaults to the model's device (CPU for a config).
        dtype: Parameter dtype of the decoder (float32 by default: decoding is a small share of the cost and
            GroupNorm is more faithful in float32).
        prefixes: Candidate key prefixes, see [`read_vq_decoder_state_dict`].

    Returns:
        The decoder in eval mode, parameters frozen.

    Raises:
        MissingVQDecoderWeightsError: when decoder weights are missing from the checkpoint (lists them).

    Example:
        ```python
        >>> from trl_omni import load_omni_model
        >>> from trl_omni.models.vq_decoder import load_vq_decoder, decode_images
        >>> model, processor = load_omni_model("leloy/Anole-7b-v0.1-hf")
        >>> decoder = load_vq_decoder(model, "/path/to/Anole-7b-v0.1-hf", image_processor=processor.image_processor)
        ```
    """
    is_model = isinstance(model_or_config, nn.Module)
    decoder = ChameleonVQDecoder(_vq_config_of(model_or_config), image_processor=image_processor)
    if checkpoint_dir is None and is_model:
        checkpoint_dir = getattr(unwrap_model(model_or_config).config, "_name_or_path", None) or None
    if checkpoint_dir is not None and not os.path.isdir(checkpoint_dir):
        checkpoint_dir = _download_decoder_files(os.fspath(checkpoint_dir))
    if checkpoint_dir is None:
        raise ValueError(
            "No checkpoint to load the VQGAN decoder from: pass `checkpoint_dir=` pointing to an Anole checkpoint "
            "(e.g. a local copy of leloy/Anole-7b-v0.1-hf or GAIR/Anole-7b-v0.1). transformers' Chameleon does not "
            "keep decoder weights; without them use `trl_omni.visualization.FalseColorDecoder` to view codes."
        )
    expected = list(decoder.state_dict().keys())
    state, prefix, files = read_vq_decoder_state_dict(checkpoint_dir, expected, prefixes)
    if "post_quant_conv.weight" not in state and is_model:
        post_quant_conv = _chameleon_backbone(model_or_config).vqmodel.post_quant_conv
        state["post_quant_conv.weight"] = _gathered_copy(post_quant_conv.weight)
        state["post_quant_conv.bias"] = _gathered_copy(post_quant_conv.bias)
    missing = [key for key in expected if key not in state]
    if missing:
        shown = ", ".join(prefix + key for key in missing[:12]) + (
            f", ... ({len(missing)} in all)" if len(missing) > 12 else ""
        )
        raise MissingVQDecoderWeightsError(
            f"The checkpoint {os.fspath(checkpoint_dir)!r} lacks {len(missing)} of the {len(expected)} VQGAN decoder "
            f"weights (looked under prefix {prefix!r}; files read: {[os.path.basename(f) for f in files] or 'none'}). "
            f"Missing: {shown}. Use an Anole checkpoint that ships the decoder (leloy/Anole-7b-v0.1-hf or "
            "GAIR/Anole-7b-v0.1's tokenizer/vqgan.ckpt), or check that `vq_config` matches it.",
            missing_keys=[prefix + key for key in missing],
        )
    for key, value in state.items():
        target = decoder.state_dict()[key]
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(
                f"VQGAN decoder weight {prefix + key!r} has shape {tuple(value.shape)} in the checkpoint but "
                f"{tuple(target.shape)} from the model's vq_config: the config and the checkpoint do not match."
            )
    decoder.load_state_dict(state, strict=True)
    if device is None and is_model:
        device = next(unwrap_model(model_or_config).parameters()).device
    return decoder.to(device=device or "cpu", dtype=dtype)


# ---------------------------------------------------------------------------------------------------------- decoding
def _as_code_grids(codes: Any, grid_size: tuple[int, int] | None, num_codes: int | None) -> torch.Tensor:
    """Normalises `codes` ((H, W), (N, H, W), (N, H*W) or a list of grids) to a `(N, H, W)` LongTensor."""
    if isinstance(codes, torch.Tensor | np.ndarray):
        grids = torch.as_tensor(codes)
        if grids.dim() == 2 and (grid_size is None or tuple(grids.shape) == tuple(grid_size)):
            grids = grids.unsqueeze(0)  # one (H, W) grid
        elif grids.dim() == 1:
            grids = grids.unsqueeze(0)  # one flat image
    else:
        items = [torch.as_tensor(getattr(c, "codes", c)) for c in codes]
        if not items:
            return torch.zeros(0, *(grid_size or (0, 0)), dtype=torch.long)
        shapes = {tuple(item.shape) for item in items}
        if len(shapes) != 1:
            raise ValueError(f"All code grids in one call must have the same shape; got {sorted(shapes)}.")
        grids = torch.stack([item.cpu() for item in items])
    grids = grids.long()
    if grids.dim() == 2:  # (N, H*W)
        if grid_size is None:
            raise ValueError(f"Flat codes of shape {tuple(grids.shape)} need a grid size; pass (N, H, W) codes.")
        if grids.shape[1] != grid_size[0] * grid_size[1]:
            raise ValueError(
                f"An image needs {grid_size[0] * grid_size[1]} codes ({grid_size[0]}x{grid_size[1]}); got "
                f"{grids.shape[1]}. Only complete images can be decoded (see `ImageSegments.complete_codes`)."
            )
        grids = grids.reshape(-1, *grid_size)
    if grids.dim() != 3:
        raise ValueError(f"Expected codes shaped (H, W), (N, H, W) or (N, H*W); got {tuple(grids.shape)}.")
    if grid_size is not None and tuple(grids.shape[1:]) != tuple(grid_size):
        raise ValueError(f"Code grids are {tuple(grids.shape[1:])} but the image grid is {tuple(grid_size)}.")
    if num_codes is not None and grids.numel() and (int(grids.min()) < 0 or int(grids.max()) >= num_codes):
        raise ValueError(
            f"Image codes must lie in [0, {num_codes}); got values in [{int(grids.min())}, {int(grids.max())}]. "
            "Were these token ids? Map them with `ImageVocabulary.ids_to_codes` first."
        )
    return grids


def decode_images(
    codes: Any,
    decoder: ChameleonVQDecoder,
    image_vocabulary: ImageVocabulary,
    batch_size: int = 8,
) -> list[Image.Image]:
    """Decodes VQ code grids to PIL images: codebook embeddings -> `post_quant_conv` -> decoder -> pixels.

    The embeddings come from `image_vocabulary.codebook` (the core's frozen copy), so the decoder needs no copy of
    the codebook. Runs without gradients, in chunks of `batch_size`, on the decoder's device and dtype.

    Args:
        codes: `(H, W)`, `(N, H, W)` or `(N, H*W)` codes (tensor or array), or a list of grids / `ImageSegment`s.
        decoder: A [`ChameleonVQDecoder`] (see [`load_vq_decoder`]).
        image_vocabulary: The model's [`ImageVocabulary`].
        batch_size: Images decoded per forward pass (bounds peak memory).

    Returns:
        One RGB `PIL.Image` per grid, `(W * f, H * f)` pixels with `f = decoder.upsampling_factor`.

    Example:
        ```python
        >>> segments = vocab.parse_segments(completion_ids)
        >>> images = decode_images(segments.complete_codes, decoder, vocab)
        ```
    """
    grids = _as_code_grids(codes, image_vocabulary.grid_size, image_vocabulary.num_codes)
    if image_vocabulary.codebook_dim != decoder.embed_dim:
        raise ValueError(
            f"The codebook has dimension {image_vocabulary.codebook_dim} but the decoder expects {decoder.embed_dim}: "
            "the decoder was built for another model."
        )
    parameter = next(decoder.parameters())
    codebook = image_vocabulary.codebook_on(parameter.device, parameter.dtype)
    images: list[Image.Image] = []
    with torch.no_grad():
        for chunk in grids.split(max(1, batch_size)):
            latents = codebook[chunk.to(parameter.device)].permute(0, 3, 1, 2)  # (n, D, H, W)
            images.extend(decoder.to_pil(decoder(latents)))
    return images


class VQImageDecoder:
    """Binds a [`ChameleonVQDecoder`] to an [`ImageVocabulary`]: `decode(codes) -> list[PIL.Image]`.

    This is the decoder interface [`trl_omni.visualization.render_trajectory`] accepts.

    Args:
        decoder: The VQGAN decoder.
        image_vocabulary: The model's image vocabulary (codebook and grid).
        batch_size: Images per forward pass.
    """

    def __init__(self, decoder: ChameleonVQDecoder, image_vocabulary: ImageVocabulary, batch_size: int = 8):
        self.decoder = decoder
        self.image_vocabulary = image_vocabulary
        self.batch_size = batch_size

    def decode(self, codes: Any) -> list[Image.Image]:
        return decode_images(codes, self.decoder, self.image_vocabulary, batch_size=self.batch_size)


# ---------------------------------------------------------------------------------------------------------- palettes
def uniform_palette(num_colors: int) -> np.ndarray:
    """`num_colors` distinct RGB colours spread over the RGB cube (a regular grid, row-major), as `(K, 3)` uint8.

    Example:
        ```python
        >>> uniform_palette(8).tolist()[:3]
        [[0, 0, 0], [0, 0, 255], [0, 255, 0]]
        ```
    """
    if num_colors < 1:
        raise ValueError(f"num_colors must be >= 1, got {num_colors}.")
    levels = max(2, math.ceil(round(num_colors ** (1 / 3), 9)))
    if levels**3 < num_colors:
        levels += 1
    values = np.round(np.linspace(0, 255, levels)).astype(np.uint8)
    grid = np.stack(np.meshgrid(values, values, values, indexing="ij"), axis=-1).reshape(-1, 3)
    return np.ascontiguousarray(grid[:num_colors])


def palette_codebook(palette: Any, dim: int, scale: float = 1.0) -> torch.Tensor:
    """A `(K, dim)` float32 codebook whose entry `k` encodes colour `palette[k]`.

    The first three dimensions hold the colour in `[0, scale]` (`rgb / 255 * scale`), the rest are zero, so the
    Euclidean distance between two entries is the colour distance (scaled): the perception reward's 2D total
    variation over codebook embeddings then measures colour changes between neighbouring patches of a drawing.

    Args:
        palette: `(K, 3)` uint8 colours.
        dim: Codebook dimension of the model (`ImageVocabulary.codebook_dim`, >= 3).
        scale: Length of the colour cube's edge in embedding space.

    Example:
        ```python
        >>> codebook = palette_codebook(uniform_palette(64), dim=16)
        >>> model.model.vqmodel.quantize.embedding.weight.data.copy_(codebook)  # a model that draws in colours
        ```
    """
    colors = _check_palette(palette)
    if dim < 3:
        raise ValueError(f"A palette codebook needs dim >= 3 (one dimension per colour channel); got {dim}.")
    codebook = torch.zeros(colors.shape[0], dim, dtype=torch.float32)
    codebook[:, :3] = torch.from_numpy(colors.astype(np.float32)) / 255.0 * scale
    return codebook


def _check_palette(palette: Any) -> np.ndarray:
    colors = np.asarray(palette.cpu() if isinstance(palette, torch.Tensor) else palette)
    if colors.ndim != 2 or colors.shape[1] != 3 or colors.shape[0] < 1:
        raise ValueError(f"A palette is a (K, 3) array of RGB colours; got shape {colors.shape}.")
    if colors.min() < 0 or colors.max() > 255:
        raise ValueError("Palette colours must lie in [0, 255].")
    return colors.astype(np.uint8)


class PaletteDecoder:
    """Exact decoder for palette codebooks: code `k` is a flat `patch_size` patch of colour `palette[k]`.

    `encode` is its inverse on images made of palette patches (nearest palette colour to each patch's mean), so
    `decode(encode(image)) == image` pixel for pixel.

    Args:
        palette: `(K, 3)` uint8 RGB colours, one per code.
        patch_size: Pixels per code, `int` or `(height, width)`.
        grid_size: Optional `(H, W)` code grid, needed only to decode flat `(N, H*W)` codes.

    Example:
        ```python
        >>> decoder = PaletteDecoder(uniform_palette(64), patch_size=4, grid_size=vocab.grid_size)
        >>> images = decoder.decode(segments.complete_codes)
        >>> codes = decoder.encode(images)  # the same codes back
        ```
    """

    def __init__(self, palette: Any, patch_size: int | tuple[int, int], grid_size: tuple[int, int] | None = None):
        self.palette = _check_palette(palette)
        self.patch_size = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        if min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}.")
        self.grid_size = None if grid_size is None else tuple(grid_size)

    @property
    def num_codes(self) -> int:
        return int(self.palette.shape[0])

    def decode(self, codes: Any) -> list[Image.Image]:
        """Code grids -> RGB images of `(W * patch_w, H * patch_h)` pixels."""
        grids = _as_code_grids(codes, self.grid_size, self.num_codes).cpu().numpy()
        ph, pw = self.patch_size
        pixels = self.palette[grids]  # (N, H, W, 3)
        pixels = pixels.repeat(ph, axis=1).repeat(pw, axis=2)
        return [Image.fromarray(np.ascontiguousarray(p), mode="RGB") for p in pixels]

    def encode(self, images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """Images -> `(N, H, W)` codes, the nearest palette colour to each patch's mean colour."""
        if len({tuple(c) for c in self.palette.tolist()}) != self.num_codes:
            raise ValueError("The palette has duplicate colours, so encoding is ambiguous; use distinct colours.")
        if isinstance(images, Image.Image):
            images = [images]
        ph, pw = self.patch_size
        palette = torch.from_numpy(self.palette.astype(np.float32))
        out = []
        for index, image in enumerate(images):
            array = np.asarray(image.convert("RGB"), dtype=np.float32)
            height, width = array.shape[:2]
            if height % ph or width % pw:
                raise ValueError(
                    f"Image {index} is {width}x{height} pixels, not a multiple of the {pw}x{ph} patch size."
                )
            patches = array.reshape(height // ph, ph, width // pw, pw, 3).mean(axis=(1, 3))
            distances = torch.cdist(torch.from_numpy(patches).reshape(-1, 3), palette)
            out.append(distances.argmin(dim=1).reshape(height // ph, width // pw))
        return torch.stack(out) if out else torch.zeros(0, 0, 0, dtype=torch.long)
