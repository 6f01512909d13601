"""Loading the VQGAN decoder weights: [`read_vq_decoder_state_dict`] and [`load_vq_decoder`].

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
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..image_vocabulary import _chameleon_backbone, _gathered_copy, unwrap_model
from .network import ChameleonVQDecoder, _vq_config_of


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
    pixel_rounding: str = "truncate",
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
        dtype: Parameter dtype of the decoder: float32 by default, whatever the model's dtype (on CPU a bfloat16
            decoder is far slower, and GroupNorm is more faithful in float32; see docs/benchmarks.md).
        prefixes: Candidate key prefixes, see [`read_vq_decoder_state_dict`].
        pixel_rounding: `"truncate"` (the Omni-R1 authors' uint8 conversion, default) or `"round"`, see
            [`ChameleonVQDecoder`].

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
    decoder = ChameleonVQDecoder(
        _vq_config_of(model_or_config), image_processor=image_processor, pixel_rounding=pixel_rounding
    )
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
