"""The single source of truth for image tokens.

Every image-token fact (BOI / EOI / placeholder ids, which vocabulary ids are image codes, the code grid, the VQ
codebook) is read here from the model (and, when given, its processor). Collators, losses, generation, rewards and
decoding ask an [`ImageVocabulary`]; none of them computes ids, offsets or grid sizes on its own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .segments import ImageSegment, ImageSegments, check_integer_tensor, parse_segments


__all__ = ["ImageSegment", "ImageSegments", "ImageVocabulary", "unwrap_model"]


# Batches of completions whose parse `ImageVocabulary.parse_completions` keeps (a step's rewards, metrics and
# rendering read one batch; a few more cover evaluation interleaved with training).
_PARSE_CACHE_SIZE = 4


def unwrap_model(model: Any) -> Any:
    """Strips DDP / FSDP / DeepSpeed / PEFT wrappers and returns the underlying transformers model."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
    return model


def _chameleon_backbone(model: Any) -> Any:
    """Returns the `ChameleonModel` inside a (wrapped) `ChameleonForConditionalGeneration` or `ChameleonModel`."""
    model = unwrap_model(model)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type != "chameleon":
        raise ValueError(
            f"trl-omni supports unified-token models of type 'chameleon' (Chameleon / Anole); got model_type="
            f"{model_type!r} ({type(model).__name__}). Load an Anole checkpoint with "
            "`trl_omni.load_omni_model(...)` or `ChameleonForConditionalGeneration.from_pretrained(...)`."
        )
    backbone = model.model if hasattr(model, "model") and hasattr(model.model, "vocabulary_mapping") else model
    if not hasattr(backbone, "vocabulary_mapping") or not hasattr(backbone, "vqmodel"):
        raise ValueError(f"{type(model).__name__} has no `vocabulary_mapping` / `vqmodel`: not a Chameleon model.")
    return backbone


def _gathered_copy(weight: torch.Tensor) -> torch.Tensor:
    """A detached float32 CPU copy of `weight`, gathering it first when DeepSpeed ZeRO-3 has partitioned it."""
    if hasattr(weight, "ds_id"):
        import deepspeed  # only reachable when the parameter is a ZeRO-3 partition

        with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
            return weight.detach().float().cpu().clone()
    if hasattr(weight, "full_tensor"):  # FSDP2 DTensor
        weight = weight.full_tensor()
    return weight.detach().float().cpu().clone()


def check_image_vocabulary(value: Any, owner: str) -> ImageVocabulary:
    """`value` when it is an [`ImageVocabulary`], else a `TypeError` naming `owner` and saying how to build one.

    Every class that takes the vocabulary from the user calls it first, so a processor, a model or None given in its
    place is refused at once rather than failing on the first batch.

    Example:
        ```python
        >>> vocab = check_image_vocabulary(ImageVocabulary.from_model(model, processor), "MyReward")
        ```
    """
    if not isinstance(value, ImageVocabulary):
        raise TypeError(
            f"{owner} needs the model's ImageVocabulary, got {type(value).__name__}. Fix: pass "
            "ImageVocabulary.from_model(model, processor) (from trl_omni)."
        )
    return value


@dataclass
class ImageVocabulary:
    """Image-token facts of a unified-vocabulary model, read from the model itself.

    Build it with [`ImageVocabulary.from_model`]; never construct the id tables by hand.

    Attributes:
        boi_token_id: Begin-of-image token id (`<racm3:break>` in Chameleon/Anole).
        eoi_token_id: End-of-image token id (`<eoss>` in Chameleon/Anole).
        image_placeholder_id: The processor's `<image>` placeholder (replaced by codes before training).
        image_token_ids: `(K,)` LongTensor, `image_token_ids[code]` is the vocabulary id of VQ code `code`.
        grid_size: `(H, W)` code grid of one image (row-major order in the sequence).
        codebook: `(K, D)` frozen, detached float32 copy of the VQ codebook, taken before any distributed wrapping.
        vocab_size: Size of the language-model vocabulary.
        backend: Model family the facts were read from (`"chameleon"`).

    Example:
        ```python
        >>> from trl_omni import ImageVocabulary
        >>> from trl_omni.testing import tiny_chameleon
        >>> model, processor = tiny_chameleon()
        >>> vocab = ImageVocabulary.from_model(model, processor)
        >>> vocab.grid_size, vocab.tokens_per_image
        ((8, 8), 64)
        >>> codes = vocab.ids_to_codes(vocab.codes_to_ids(torch.arange(vocab.num_codes)))
        ```
    """

    boi_token_id: int
    eoi_token_id: int
    image_placeholder_id: int | None
    image_token_ids: torch.Tensor
    grid_size: tuple[int, int]
    codebook: torch.Tensor
    vocab_size: int
    backend: str = "chameleon"
    _id_to_code: torch.Tensor = field(init=False, repr=False)
    _device_cache: dict = field(init=False, repr=False, default_factory=dict)
    _parse_cache: OrderedDict = field(init=False, repr=False, default_factory=OrderedDict, compare=False)

    def __post_init__(self) -> None:
        self.image_token_ids = self.image_token_ids.long().cpu()
        if self.codebook.shape[0] != self.image_token_ids.numel():
            raise ValueError(
                f"Codebook has {self.codebook.shape[0]} entries but the vocabulary maps "
                f"{self.image_token_ids.numel()} image tokens."
            )
        lookup = torch.full((self.vocab_size,), -1, dtype=torch.long)
        lookup[self.image_token_ids] = torch.arange(self.image_token_ids.numel())
        self._id_to_code = lookup

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: Any, processor: Any | None = None) -> "ImageVocabulary":
        """Reads the image-token facts from a (possibly PEFT- or accelerate-wrapped) model.

        Args:
            model: A `ChameleonForConditionalGeneration` / `ChameleonModel` (Chameleon or Anole).
            processor: Optional `ChameleonProcessor`. When given, its BOI / EOI / placeholder ids and
                `image_seq_length` are checked against the model's and must agree.

        Returns:
            An [`ImageVocabulary`].
        """
        backbone = _chameleon_backbone(model)
        config = unwrap_model(model).config
        mapping = backbone.vocabulary_mapping
        vocab_map = config.vocabulary_map or {}
        # With image generation enabled, the mapping's mask list is empty but its tables are the stock, complete ones.
        bpe2img: dict[int, int] = mapping.bpe2img
        if not bpe2img:
            raise ValueError("The model's vocabulary_map holds no image tokens (names starting with 'IMGIMG').")
        num_codes = max(bpe2img.values()) + 1
        image_token_ids = torch.full((num_codes,), -1, dtype=torch.long)
        for token_id, code in bpe2img.items():
            image_token_ids[code] = token_id
        if (image_token_ids < 0).any():
            missing = (image_token_ids < 0).nonzero().flatten()[:5].tolist()
            raise ValueError(f"The vocabulary_map has no image token for codes {missing}...")

        boi = vocab_map.get("<racm3:break>")
        eoi = vocab_map.get("<eoss>")
        placeholder = mapping.image_token_id
        vq_config = config.vq_config
        side = vq_config.resolution // 2 ** (len(vq_config.channel_multiplier) - 1)
        grid = (side, side)
        if processor is not None:
            boi = processor.image_start_token_id
            eoi = processor.image_end_token_id
            placeholder = processor.image_token_id
            if processor.image_seq_length != grid[0] * grid[1]:
                raise ValueError(
                    f"processor.image_seq_length={processor.image_seq_length} but the VQ model produces a "
                    f"{grid[0]}x{grid[1]} grid ({grid[0] * grid[1]} tokens): processor and model do not match."
                )
        if boi is None or eoi is None:
            raise ValueError("Could not find the BOI ('<racm3:break>') / EOI ('<eoss>') ids; pass the processor.")

        embedding = backbone.vqmodel.quantize.embedding.weight
        codebook = _gathered_copy(embedding)
        if codebook.shape[0] != num_codes:
            raise ValueError(f"VQ codebook has {codebook.shape[0]} codes, the vocabulary maps {num_codes}.")
        return cls(
            boi_token_id=int(boi),
            eoi_token_id=int(eoi),
            image_placeholder_id=None if placeholder is None else int(placeholder),
            image_token_ids=image_token_ids,
            grid_size=grid,
            codebook=codebook,
            vocab_size=int(config.vocab_size),
        )

    # ------------------------------------------------------------------ basic facts
    @property
    def num_codes(self) -> int:
        return int(self.image_token_ids.numel())

    @property
    def codebook_dim(self) -> int:
        return int(self.codebook.shape[1])

    @property
    def tokens_per_image(self) -> int:
        """Number of image tokens between BOI and EOI for one image."""
        return self.grid_size[0] * self.grid_size[1]

    @property
    def span_length(self) -> int:
        """Length of one full image span in a sequence (BOI + image tokens + EOI)."""
        return self.tokens_per_image + 2

    def generation_budget(self, num_images: int, text_tokens: int) -> int:
        """Generation budget (`max_new_tokens`) with room for `num_images` complete images and `text_tokens` of text.

        Budgets in trl-omni are sized with this, never with a fixed number: one image is `span_length` tokens, 1,026
        on Anole but 66 on the tiny test model.

        Example:
            ```python
            >>> vocab.generation_budget(num_images=2, text_tokens=512)  # Anole: 2 * 1026 + 512
            2564
            ```
        """
        if num_images < 0 or text_tokens < 0:
            raise ValueError(f"num_images and text_tokens must be >= 0, got {num_images} and {text_tokens}.")
        return num_images * self.span_length + text_tokens

    def _on(self, name: str, tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        key = (name, str(torch.device(device)))
        cached = self._device_cache.get(key)
        if cached is None:
            cached = tensor.to(device)
            self._device_cache[key] = cached
        return cached

    def codebook_on(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The frozen codebook on `device` in `dtype` (cached)."""
        key = ("codebook", str(torch.device(device)), dtype)
        cached = self._device_cache.get(key)
        if cached is None:
            cached = self.codebook.to(device=device, dtype=dtype)
            self._device_cache[key] = cached
        return cached

    def codebook_distances(self, device: torch.device | str) -> torch.Tensor:
        """`(K, K)` float32 squared distances `||E[a] - E[b]||^2` between codebook entries, built once per device.

        Cached on this vocabulary, so every user of it (the perception reward, the reference-image reward, a
        trainer's metrics) shares one table per device (256 MiB for Anole's 8192 codes). Computed as
        `|a|^2 + |b|^2 - 2 a.b` (in float64 for small codebooks, float32 for Anole's 8192 x 256, where the relative
        error stays near 1e-7), clamped at 0, with an exact zero diagonal.
        """
        key = ("codebook_distances", str(torch.device(device)))
        table = self._device_cache.get(key)
        if table is None:
            codebook = self.codebook_on(device, torch.float32)
            if codebook.shape[0] ** 2 * codebook.shape[1] <= 1 << 30:
                codebook = codebook.double()  # small codebooks: exact enough to compare with hand computations
            norms = codebook.pow(2).sum(-1)
            table = (norms[:, None] + norms[None, :] - 2.0 * codebook @ codebook.T).clamp_(min=0.0)
            table.fill_diagonal_(0.0)
            table = table.float()
            self._device_cache[key] = table
        return table

    def image_token_mask(self, vocab_size: int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """`(V,)` bool mask over the vocabulary, True at image-token ids."""
        size = vocab_size or self.vocab_size
        key = ("vocab_mask", str(torch.device(device)), size)
        cached = self._device_cache.get(key)
        if cached is None:
            cached = torch.zeros(size, dtype=torch.bool)
            cached[self.image_token_ids[self.image_token_ids < size]] = True
            cached = cached.to(device)
            self._device_cache[key] = cached
        return cached

    # ------------------------------------------------------------------ ids <-> codes
    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Maps token ids to VQ codes elementwise; non-image ids map to -1. Any shape, any device."""
        ids = check_integer_tensor(torch.as_tensor(ids), "Token ids")
        lookup = self._on("id_to_code", self._id_to_code, ids.device)
        in_range = (ids >= 0) & (ids < self.vocab_size)
        return torch.where(in_range, lookup[ids.clamp(0, self.vocab_size - 1)], -1)

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Maps VQ codes to token ids elementwise. Raises on codes that are not integers in `[0, num_codes)`."""
        codes = check_integer_tensor(torch.as_tensor(codes), "Image codes")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_codes):
            raise ValueError(
                f"Image codes must lie in [0, {self.num_codes}); got values in [{int(codes.min())}, "
                f"{int(codes.max())}]. Were these token ids rather than codes? Use `ids_to_codes` first."
            )
        return self._on("code_to_id", self.image_token_ids, codes.device)[codes.long()]

    def is_image_token(self, ids: torch.Tensor) -> torch.Tensor:
        """Bool tensor, True where `ids` are image-code tokens (BOI / EOI / placeholder excluded)."""
        return self.ids_to_codes(ids) >= 0

    def image_span_ids(self, codes: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """The full in-sequence span for one image: `BOI + ids(codes) + EOI`.

        Args:
            codes: `H*W` codes in row-major order (flat or `(H, W)`).
        """
        codes = check_integer_tensor(torch.as_tensor(codes), "Image codes")
        if codes.dim() > 1 and tuple(codes.shape) != tuple(self.grid_size):
            raise ValueError(
                f"Image codes must be flat ({self.tokens_per_image}) or shaped like the grid {tuple(self.grid_size)}; "
                f"got shape {tuple(codes.shape)}."
            )
        codes = codes.long().flatten()
        if codes.numel() != self.tokens_per_image:
            raise ValueError(
                f"An image needs exactly {self.tokens_per_image} codes ({self.grid_size[0]}x{self.grid_size[1]}); "
                f"got {codes.numel()}."
            )
        ids = self.codes_to_ids(codes)
        boi = torch.tensor([self.boi_token_id], dtype=torch.long, device=ids.device)
        eoi = torch.tensor([self.eoi_token_id], dtype=torch.long, device=ids.device)
        return torch.cat([boi, ids, eoi])

    # ------------------------------------------------------------------ segments
    def parse_segments(
        self,
        ids: torch.Tensor | Sequence[Sequence[int]],
        attention_mask: torch.Tensor | None = None,
        *,
        continue_open_image: bool = False,
    ) -> ImageSegments:
        """Finds every image segment in a batch of token sequences, without a per-token Python loop.

        A segment opens at each BOI and runs to the first EOI after it. It is cut (incomplete) when another BOI,
        padding (where `attention_mask` is 0) or the end of the row comes first. A segment is complete when it is
        closed by EOI and holds exactly `tokens_per_image` tokens, all of them image tokens. Image tokens outside
        every segment are counted as stray, per row. EOI tokens outside a segment are ignored.

        Args:
            ids: `(B, L)` LongTensor (right padded when rows may begin with image codes, see below; else right or
                left padded) or a list of id lists of any lengths.
            attention_mask: Optional `(B, L)` mask; positions where it is 0 are treated as absent.
            continue_open_image: Read each row as the continuation of a sequence that ended with BOI: a row whose
                first token is an image code continues the image opened just before it, a segment with `start == -1`
                (its codes are the row's leading codes). This is how generated completions are read (see
                [`parse_completions`]); leave it off to count leading image codes as stray (e.g. to validate rows).

        Returns:
            [`ImageSegments`].
        """
        return parse_segments(self, ids, attention_mask, continue_open_image=continue_open_image)

    def parse_completions(self, completion_ids: Sequence[Sequence[int]] | torch.Tensor) -> ImageSegments:
        """The image segments of generated completions: the one parse that rewards, metrics, rendering and
        evaluation share.

        Completions are read as generated after their prompt (`parse_segments(..., continue_open_image=True)`): a
        prompt may end with BOI to ask for a drawing, and with the image-span constraint on
        ([`ImageSpanLogitsProcessor`]) a completion can only begin with image codes when it continues the image its
        prompt opened. That segment has `start == -1` and is complete when the completion closes it with EOI after
        exactly `tokens_per_image` codes, so a reward, a metric and a rendering see the same image.

        The last few results are cached by the identity of `completion_ids`: TRL hands one `completion_ids` list to
        every reward function of a step, so the step parses it once however many rewards, metrics and renderings
        read it. A change in place that alters a row's length (or a tensor's contents) is seen and parsed again; do not
        replace ids in place without changing a length.

        Args:
            completion_ids: TRL's list of completion id lists (padding removed), or a right-padded `(B, L)` tensor.

        Returns:
            [`ImageSegments`] with positions relative to each completion's first token.

        Example:
            ```python
            >>> segments = vocab.parse_completions(completion_ids)  # e.g. inside a reward function
            >>> per_completion = segments.per_row(len(completion_ids))  # lists of ImageSegment
            ```
        """
        cache = self._parse_cache
        key = id(completion_ids)
        # What an in-place change would alter: a tensor's version counter, or every row's length of a list.
        if isinstance(completion_ids, torch.Tensor):
            signature = (completion_ids._version, tuple(completion_ids.shape))
        else:
            signature = tuple(len(row) for row in completion_ids)
        hit = cache.get(key)
        if hit is not None and hit[0] is completion_ids and hit[1] == signature:
            cache.move_to_end(key)
            return hit[2]
        segments = parse_segments(self, completion_ids, continue_open_image=True)
        # The cache holds the parsed object itself, so its id cannot be reused by another object while cached.
        cache[key] = (completion_ids, signature, segments)
        while len(cache) > _PARSE_CACHE_SIZE:
            cache.popitem(last=False)
        return segments

    def __repr__(self) -> str:
        return (
            f"ImageVocabulary(backend={self.backend!r}, num_codes={self.num_codes}, grid_size={self.grid_size}, "
            f"boi={self.boi_token_id}, eoi={self.eoi_token_id}, placeholder={self.image_placeholder_id}, "
            f"codebook_dim={self.codebook_dim})"
        )
