"""Offline, deterministic models for tests, examples and the demo (no hub access needed).

`tiny_chameleon()` builds a real `ChameleonForConditionalGeneration` + `ChameleonProcessor` in code: a byte-level
BPE tokenizer trained on an embedded corpus, the Chameleon special tokens (`<image>`, BOI `<racm3:break>`, EOI
`<eoss>`), the Omni-R1 reasoning/answer control tokens, and one `IMGIMG...` token per VQ code. The image-token ids
are deliberately a *shuffled, offset* block of the vocabulary, so code that assumes `id = code + constant` fails
in tests instead of in production. (transformers' `vocabulary_mapping.bpe2img_search_tensors` sorts ids and codes
independently, so it is only right for monotonic mappings such as Anole's; trl-omni never uses it.)

`tiny_anole()` builds a checkpoint with Anole-7B's exact *layout* (65,536-id vocabulary, image tokens at ids 4..8195,
BOI 8197, EOI 8196, `<image>` 8711, 512-pixel images as 32x32 = 1,024 codes of an 8,192 x 256 codebook, 16x VQ
downsampling) around a tiny language model and a narrow VQ model, so every user path can be run at the real sequence
lengths and image size on a CPU. [`anole_layout_config`] gives the same layout at any size, the full Anole-7B by default.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch


BOS, EOS, UNK, PAD, SEP = "<s>", "</s>", "<unk>", "<pad>", "<reserved08706>"
IMAGE_PLACEHOLDER, BOI, EOI = "<image>", "<racm3:break>", "<eoss>"
REASONING_OPEN, REASONING_CLOSE = "<reserved12856>", "<reserved12857>"
ANSWER_OPEN, ANSWER_CLOSE = "<reserved12866>", "<reserved12867>"
SPECIAL_TOKENS = [
    BOS, PAD, EOS, UNK, SEP, IMAGE_PLACEHOLDER, BOI, EOI,
    REASONING_OPEN, REASONING_CLOSE, ANSWER_OPEN, ANSWER_CLOSE,
]  # fmt: skip

_CORPUS = """
You are a helpful assistant.
User: What is shown in the image? Think with images first. The image reasoning process and answer are enclosed
within <reserved12856> <reserved12857> and <reserved12866> <reserved12867> XML tags, respectively.
Assistant: Let me think step by step. Let me draw it. I will zoom in on the region. I draw an auxiliary line.
I mark the object. I predict the next state. THOUGHT 0: THOUGHT 1: THOUGHT 2: THOUGHT 3: Final Answer:
The answer is A. The answer is B. The answer is C. The answer is D. (A) (B) (C) (D) option answer
zoom grounding box line mark marking predict prediction visual state grid cell row column left right up down
top bottom center corner red green blue yellow black white gray orange purple color colour count how many which
where is the of a an and or in on at to from with by for not yes no true false object square circle shape
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 20 25 50 100 1000 3.14 0.5 50% $ , . : ; ? ! ( ) [ ] { } + - * / = ^
x y z sqrt frac pi angle triangle area length chart value bar question image context choices rationale step
"""


def _image_token_name(code: int) -> str:
    # Chameleon decodes the code from the letters between "IMGIMG" and the final character (A..J = digits 0..9).
    return "IMGIMG" + "".join(chr(ord("A") + int(digit)) for digit in str(code)) + "Z"


def _wrap_tokenizer(backend: Any) -> Any:
    """A `tokenizers.Tokenizer` as the `PreTrainedTokenizerFast` of a Chameleon checkpoint (its special tokens)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        sep_token=SEP,
        extra_special_tokens=[IMAGE_PLACEHOLDER, BOI, EOI, REASONING_OPEN, REASONING_CLOSE, ANSWER_OPEN, ANSWER_CLOSE],
    )


def tiny_chameleon_tokenizer(num_codes: int = 64, seed: int = 0, bpe_vocab_size: int = 400) -> Any:
    """A `PreTrainedTokenizerFast` with Chameleon's special tokens and one IMGIMG token per VQ code."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([line for line in _CORPUS.splitlines() if line], trainer=trainer)
    order = torch.randperm(num_codes, generator=torch.Generator().manual_seed(seed + 1)).tolist()
    backend.add_tokens([AddedToken(_image_token_name(code), normalized=False) for code in order])
    return _wrap_tokenizer(backend)


def tiny_chameleon(
    seed: int = 0,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    image_size: int = 32,
    num_codes: int = 64,
    codebook_dim: int = 16,
    enable_generation: bool = True,
    save_dir: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """Builds a tiny, seeded `ChameleonForConditionalGeneration` and its `ChameleonProcessor`, offline.

    A 32x32 image becomes an 8x8 grid of codes (64 image tokens). Building takes a few milliseconds.

    Args:
        seed: Seed for the weights and the shuffled image-token ids; equal seeds give identical models.
        hidden_size: Transformer width (keep <= 256 in tests).
        num_hidden_layers: Transformer depth (keep <= 4 in tests).
        num_attention_heads: Attention heads (must divide `hidden_size`).
        image_size: Square input image side in pixels; the grid side is `image_size // 4`.
        num_codes: VQ codebook size (one IMGIMG token each).
        codebook_dim: VQ codebook embedding dimension.
        enable_generation: Apply [`trl_omni.enable_image_generation`] (as `load_omni_model` does).
        save_dir: When set, also `save_pretrained` the model and processor there, so
            `load_omni_model(save_dir)` exercises the real loading path.

    Returns:
        `(model, processor)`.

    Example:
        ```python
        >>> from trl_omni.testing import tiny_chameleon
        >>> model, processor = tiny_chameleon(seed=0)
        ```
    """
    from transformers import (
        ChameleonConfig,
        ChameleonForConditionalGeneration,
        ChameleonImageProcessorPil,
        ChameleonProcessor,
    )

    from .models.generation import enable_image_generation
    from .models.loading import freeze_vq_model

    tokenizer = tiny_chameleon_tokenizer(num_codes=num_codes, seed=seed)
    vocab_map = dict(tokenizer.get_vocab())
    vocab_size = -(-len(vocab_map) // 64) * 64  # unused ids at the top, as real vocabularies have
    grid_side = image_size // 4
    config = ChameleonConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        max_position_embeddings=4096,
        bos_token_id=vocab_map[BOS],
        eos_token_id=vocab_map[EOS],
        pad_token_id=vocab_map[PAD],
        vocabulary_map=vocab_map,
        vq_config={
            "embed_dim": codebook_dim,
            "num_embeddings": num_codes,
            "latent_channels": codebook_dim,
            "resolution": image_size,
            "base_channels": 32,
            "channel_multiplier": [1, 1, 1],
            "num_res_blocks": 1,
        },
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ChameleonForConditionalGeneration(config)
    model.eval()
    freeze_vq_model(model)
    model.generation_config.pad_token_id = vocab_map[PAD]

    image_processor = ChameleonImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = ChameleonProcessor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=grid_side * grid_side
    )
    if save_dir is not None:
        model.save_pretrained(save_dir)
        processor.save_pretrained(save_dir)
    if enable_generation:
        enable_image_generation(model)
    return model, processor


# ------------------------------------------------------------------------------------------------- real-layout Anole
# Facts of the real checkpoint, read from transformers' conversion scripts (`convert_chameleon_weights_to_hf.py`,
# `convert_anole_weights_to_hf.py`) and `configuration_chameleon.py`:
# - `vocab_size` is 65,536 and `vocabulary_map` is the text tokenizer's whole vocabulary, with `<reserved08707>`
#   renamed `<image>` (the processor's placeholder);
# - ids 0..3 are `<s>` (BOS), `<pad>`, `</s>` (EOS), `<unk>`; the image tokens `IMGIMG<code in letters>Z` follow at ids
#   4..8195 (id = code + 4, monotonic), then EOI `<eoss>` = 8196 and BOI `<racm3:break>` = 8197; every
#   `<reservedNNNNN>` sits at id NNNNN + 4, so the separator `<reserved08706>` is 8710 and `<image>` is 8711;
# - the tokenizer's pad is `<pad>` (1) and its sep `<reserved08706>`; the saved *config* keeps ChameleonConfig's
#   defaults (bos_token_id=1, eos_token_id=2, pad_token_id=None), since the scripts do not set them (`load_omni_model`
#   then takes the tokenizer's ids);
# - the VQGAN (ChameleonVQVAEConfig's defaults, from the released vqgan.yaml): 512-pixel input, channel multipliers
#   [1, 1, 2, 2, 4] (16x downsampling, so a 32x32 code grid), 128 base channels, 2 res blocks, 256 latent channels and
#   an 8,192 x 256 codebook; the LM: hidden 4,096, 32 layers and heads, intermediate 11,008.
# The scripts do not say where the reserved block ends and the text BPE starts: here it ends at `<reserved16383>`
# (id 16387), followed by this module's own byte-level BPE text tokens and then unused filler names up to id 65,535.
ANOLE_VOCAB_SIZE = 65_536
ANOLE_IMAGE_SIZE = 512
_ANOLE_NUM_CODES = 8_192
_ANOLE_LAST_RESERVED = 16_383
_ANOLE_PLACEHOLDER_RESERVED = 8_707  # renamed `<image>` by the conversion
_ANOLE_LM = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "intermediate_size": 11008}
_ANOLE_VQ = {
    "embed_dim": 256,
    "num_embeddings": _ANOLE_NUM_CODES,
    "latent_channels": 256,
    "resolution": ANOLE_IMAGE_SIZE,
    "in_channels": 3,
    "base_channels": 128,
    "channel_multiplier": [1, 1, 2, 2, 4],
    "num_res_blocks": 2,
}
_ANOLE_LM_OVERRIDES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                       "intermediate_size", "max_position_embeddings")  # fmt: skip
_ANOLE_VQ_OVERRIDES = ("base_channels", "num_res_blocks")


@functools.lru_cache(maxsize=1)
def _anole_text_bpe() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Byte-level BPE text tokens (in id order) and merges, trained on the embedded corpus (deterministic)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator([line for line in _CORPUS.splitlines() if line], trainer=trainer)
    tokens = tuple(token for token, _ in sorted(backend.get_vocab().items(), key=lambda item: item[1]))
    merges = json.loads(backend.to_str())["model"]["merges"]
    return tokens, tuple(tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges)


def _anole_layout_names() -> list[str]:
    """Names of ids 0..16387 in Anole's layout: BOS/pad/EOS/unk, the image tokens, EOI, BOI, the reserved tokens."""
    names = [BOS, PAD, EOS, UNK]
    names += [_image_token_name(code) for code in range(_ANOLE_NUM_CODES)]
    names += [EOI, BOI]
    for number in range(len(names) - 4, _ANOLE_LAST_RESERVED + 1):  # `<reservedNNNNN>` at id NNNNN + 4
        names.append(IMAGE_PLACEHOLDER if number == _ANOLE_PLACEHOLDER_RESERVED else f"<reserved{number:05d}>")
    return names


def anole_layout_vocabulary() -> dict[str, int]:
    """The full 65,536-entry `vocabulary_map` of the real-layout Anole fixture (name -> id)."""
    vocabulary = {name: index for index, name in enumerate(_anole_layout_names())}
    for token in _anole_text_bpe()[0]:
        vocabulary.setdefault(token, len(vocabulary))
    while len(vocabulary) < ANOLE_VOCAB_SIZE:
        vocabulary[f"<unused{len(vocabulary):05d}>"] = len(vocabulary)
    return vocabulary


def anole_layout_config(**overrides: Any) -> Any:
    """A `ChameleonConfig` with Anole-7B's exact layout; by default the full Anole-7B.

    Vocabulary, special ids, `vocabulary_map` and the VQ geometry (512 px, 16x downsampling, 8,192 x 256 codebook,
    32x32 = 1,024 codes per image) are always Anole's. Only sizes that keep that layout may be changed.

    Args:
        **overrides: Language-model size (`hidden_size`, `num_hidden_layers`, `num_attention_heads`,
            `num_key_value_heads`, `intermediate_size`, `max_position_embeddings`) and VQ width (`base_channels`,
            `num_res_blocks`; `base_channels` must be a multiple of 32 for the VQ model's GroupNorm).

    Returns:
        A `transformers.ChameleonConfig`.

    Example:
        ```python
        >>> from trl_omni.testing import anole_layout_config
        >>> anole_layout_config().hidden_size  # Anole-7B
        4096
        >>> anole_layout_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, base_channels=32).vocab_size
        65536
        ```
    """
    from transformers import ChameleonConfig

    unknown = sorted(set(overrides) - set(_ANOLE_LM_OVERRIDES) - set(_ANOLE_VQ_OVERRIDES))
    if unknown:
        raise TypeError(
            f"anole_layout_config() cannot change {unknown}: the layout is fixed. Sizes that may change: "
            f"{list(_ANOLE_LM_OVERRIDES) + list(_ANOLE_VQ_OVERRIDES)}."
        )
    lm = {**_ANOLE_LM, **{key: overrides[key] for key in _ANOLE_LM_OVERRIDES if key in overrides}}
    lm.setdefault("num_key_value_heads", lm["num_attention_heads"])
    vq = {**_ANOLE_VQ, **{key: overrides[key] for key in _ANOLE_VQ_OVERRIDES if key in overrides}}
    if vq["base_channels"] % 32:
        raise ValueError(f"base_channels must be a multiple of 32 (GroupNorm groups), got {vq['base_channels']}.")
    return ChameleonConfig(
        vocab_size=ANOLE_VOCAB_SIZE,
        rms_norm_eps=1e-5,
        max_position_embeddings=lm.pop("max_position_embeddings", 4096),
        vq_config=vq,
        vocabulary_map=anole_layout_vocabulary(),
        **lm,
    )


def anole_layout_tokenizer() -> Any:
    """A `PreTrainedTokenizerFast` with Anole's layout (see [`anole_layout_vocabulary`]).

    Like the real (Llama-style) tokenizer it prepends BOS when `add_special_tokens=True`, and treats `<s>`, `<pad>`,
    `</s>`, `<unk>`, BOI, EOI, `<image>` and every `<reservedNNNNN>` as special tokens (dropped by
    `skip_special_tokens=True`); the `IMGIMG` image tokens are ordinary added tokens. Pad is `<pad>`, sep
    `<reserved08706>`. Builds in about a second.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    layout = _anole_layout_names()
    backend = Tokenizer(models.BPE(vocab=anole_layout_vocabulary(), merges=list(_anole_text_bpe()[1]), unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(name, special=True, normalized=False) for name in layout if not name.startswith("IMGIMG")]
    )
    backend.add_tokens([AddedToken(name, normalized=False) for name in layout if name.startswith("IMGIMG")])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, layout.index(BOS))]
    )
    return _wrap_tokenizer(backend)


def anole_layout_processor() -> Any:
    """A `ChameleonProcessor` with Anole's layout: [`anole_layout_tokenizer`], `image_seq_length=1024`, and the
    image processor of the real checkpoint (shortest edge resized to 512 px with LANCZOS, 512 x 512 centre crop,
    pixels mapped to `p * 0.0078 - 1`).

    Example:
        ```python
        >>> from trl_omni.testing import anole_layout_processor
        >>> processor = anole_layout_processor()
        >>> processor.image_start_token_id, processor.image_end_token_id, processor.image_token_id
        (8197, 8196, 8711)
        ```
    """
    from transformers import ChameleonImageProcessorPil, ChameleonProcessor

    image_processor = ChameleonImageProcessorPil(
        size={"shortest_edge": ANOLE_IMAGE_SIZE}, crop_size={"height": ANOLE_IMAGE_SIZE, "width": ANOLE_IMAGE_SIZE}
    )
    grid_side = ANOLE_IMAGE_SIZE // 2 ** (len(_ANOLE_VQ["channel_multiplier"]) - 1)
    return ChameleonProcessor(
        image_processor=image_processor, tokenizer=anole_layout_tokenizer(), image_seq_length=grid_side**2
    )


def tiny_anole(
    seed: int = 0,
    *,
    save_dir: str | os.PathLike | None = None,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    vq_base_channels: int = 32,
    vq_num_res_blocks: int = 1,
    include_decoder: bool = True,
    enable_generation: bool = True,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[Any, Any]:
    """Builds a seeded, offline checkpoint with Anole-7B's exact layout and a tiny language model.

    Everything sequence lengths and image sizes depend on is Anole's (see [`anole_layout_config`]): a 512-pixel image
    is 32x32 = 1,024 codes, an image span is 1,026 tokens, the vocabulary has 65,536 ids. Only the language model and
    the VQ model's channel width are small, so a forward pass, a training step and a 512-pixel VQ encode run in
    seconds on a CPU. Random weights: what it generates is noise, but noise at the real layout.

    Args:
        seed: Seed of every weight; equal seeds give identical checkpoints.
        save_dir: When set, the model and processor are saved there with `save_pretrained`, so
            `load_omni_model(save_dir)` runs the real loading path.
        hidden_size: Transformer width (keep <= 256 in tests).
        num_hidden_layers: Transformer depth (keep <= 4 in tests).
        num_attention_heads: Attention heads (must divide `hidden_size`).
        vq_base_channels: Base channel width of the VQ encoder / decoder (a multiple of 32; Anole's is 128).
        vq_num_res_blocks: Residual blocks per VQ level (Anole's is 2).
        include_decoder: Also write seeded VQGAN *decoder* weights into the saved checkpoint (as Anole checkpoints
            carry them, under `model.vqmodel.decoder.*`), so [`~trl_omni.models.load_vq_decoder`] can decode codes to
            pixels. transformers' model has no decoder module, so this only concerns the files in `save_dir`.
        enable_generation: Apply [`trl_omni.enable_image_generation`] to the returned model (as `load_omni_model`
            does).
        dtype: Cast the whole model (VQ model included, like a checkpoint loaded in that dtype) before saving.
        device: Move the returned model there.

    Returns:
        `(model, processor)`.

    Example:
        ```python
        >>> from trl_omni import ImageVocabulary, load_omni_model
        >>> from trl_omni.testing import tiny_anole
        >>> _ = tiny_anole(save_dir="anole-tiny")
        >>> model, processor = load_omni_model("anole-tiny")
        >>> vocab = ImageVocabulary.from_model(model, processor)
        >>> vocab.grid_size, vocab.span_length, vocab.boi_token_id
        ((32, 32), 1026, 8197)
        ```
    """
    from transformers import ChameleonForConditionalGeneration

    from .models.generation import enable_image_generation
    from .models.loading import freeze_vq_model

    config = anole_layout_config(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=2 * hidden_size,
        base_channels=vq_base_channels,
        num_res_blocks=vq_num_res_blocks,
    )
    processor = anole_layout_processor()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ChameleonForConditionalGeneration(config)
    model.eval()
    freeze_vq_model(model)
    if dtype is not None:
        model.to(dtype)
    if save_dir is not None:
        model.save_pretrained(save_dir)
        processor.save_pretrained(save_dir)
        if include_decoder:
            _write_vq_decoder_weights(save_dir, config, seed, dtype)
    if device is not None:
        model.to(device)
    if enable_generation:
        enable_image_generation(model)
    return model, processor


def _write_vq_decoder_weights(save_dir: str | os.PathLike, config: Any, seed: int, dtype: torch.dtype | None) -> None:
    """Adds seeded VQGAN decoder weights to the saved checkpoint, under the key names Anole checkpoints use."""
    from safetensors.torch import load_file, save_file

    from .models.vq_decoder import ChameleonVQDecoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        decoder = ChameleonVQDecoder(config.vq_config)
    path = os.path.join(os.fspath(save_dir), "model.safetensors")
    state = load_file(path)
    for key, value in decoder.decoder.state_dict().items():
        state[f"model.vqmodel.decoder.{key}"] = value.to(dtype or value.dtype).contiguous()
    save_file(state, path, metadata={"format": "pt"})
