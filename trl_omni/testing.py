"""Offline, deterministic tiny models for tests, examples and the demo (no hub access needed).

`tiny_chameleon()` builds a real `ChameleonForConditionalGeneration` + `ChameleonProcessor` in code: a byte-level
BPE tokenizer trained on an embedded corpus, the Chameleon special tokens (`<image>`, BOI `<racm3:break>`, EOI
`<eoss>`), the Omni-R1 reasoning/answer control tokens, and one `IMGIMG...` token per VQ code. The image-token ids
are deliberately a *shuffled, offset* block of the vocabulary, so code that assumes `id = code + constant` fails
in tests instead of in production. (transformers' `vocabulary_mapping.bpe2img_search_tensors` sorts ids and codes
independently, so it is only right for monotonic mappings such as Anole's; trl-omni never uses it.)
"""

from __future__ import annotations

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


def tiny_chameleon_tokenizer(num_codes: int = 64, seed: int = 0, bpe_vocab_size: int = 400) -> Any:
    """A `PreTrainedTokenizerFast` with Chameleon's special tokens and one IMGIMG token per VQ code."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

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
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        sep_token=SEP,
        extra_special_tokens=[IMAGE_PLACEHOLDER, BOI, EOI, REASONING_OPEN, REASONING_CLOSE, ANSWER_OPEN, ANSWER_CLOSE],
    )
    return tokenizer


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
