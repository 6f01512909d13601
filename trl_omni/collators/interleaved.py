"""`InterleavedDataCollator`: interleaved text/image rows -> `input_ids`, `attention_mask`, `labels`.

Stable interface (consumed by the trainers):

- `collator(rows) -> {"input_ids", "attention_mask", "labels"}`: `(B, L)` LongTensors, right padded. `labels` is -100
  on the prompt (its text *and* its images), on padding, and wherever nothing is trained; it equals `input_ids` on the
  completion: text, images (BOI, codes, EOI) and the final EOS. Completion image-token positions are exactly
  `image_vocabulary.is_image_token(labels)` (PeSFT relies on that; prompt images never appear in `labels`).
- `collator.encode_prompt(row) -> list[int]` / `collator.encode_prompts(rows)`: the prompt of a row with its images
  spliced in, laid out by the same template, ending where the model should start writing (for RL trainers);
  `collator.encode_prompt_batch(rows, padding_side="left")`: the same, padded, ready for `model.generate`.
- `collator.sequence_lengths(rows)` / `collator.keeps(rows)`: each row's training length and whether the length
  policy keeps it, computed without encoding images (the dataset-level length pass).
- `collator.stats`: counters (`rows`, `batches`, `dropped`, `truncated`, `images_encoded`).

Text pieces are tokenized separately (one batched tokenizer call per batch) and image spans are spliced between
them with [`ImageVocabulary.image_span_ids`]; image-token strings are never tokenized. Text that tokenizes to an
image token, BOI, EOI or the image placeholder is refused, naming the row and field.

The templates live in `templates.py` and the chunk -> ids encoding in `row_encoding.py` (mixins of the collator).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..models.image_vocabulary import ImageVocabulary, check_image_vocabulary
from ..utils.type_checks import checked_arguments
from .row_encoding import _RowEncoder
from .templates import DEFAULT_INSTRUCTION, DEFAULT_LEAD_PHRASES, DEFAULT_SYSTEM_PROMPT, TEMPLATES, _TemplateLayout


logger = logging.getLogger(__name__)

LENGTH_POLICIES = ("drop", "truncate")


class InterleavedDataCollator(_TemplateLayout, _RowEncoder):
    """Collates interleaved text/image rows (see `docs/data-formats.md`) into causal-LM training batches.

    Templates:
    - `"plain"`: `BOS + prompt + prompt_separator` | `completion + answer_prefix + answer + EOS`.
    - `"templated"` (the Omni-R1 authors' format): `BOS + system_prompt + "\\nUser: " + prompt + instruction +
      "\\nAssistant:"` | `" " + lead phrase + " " + reasoning_open + completion + reasoning_close + answer_open +
      answer + answer_close + EOS`; the lead phrase is drawn from `lead_phrases` with a `seed`ed RNG.
    - `"chat"`: the tokenizer's chat template (`system_prompt` as system turn when set, the prompt as user turn, the
      completion + `answer_prefix + answer` as assistant turn); EOS is appended when the template does not end with
      it. Raises when the tokenizer has no chat template.
    (`|` separates the masked prompt from the trained completion.)

    Args:
        processing_class: The model's processor or tokenizer.
        image_vocabulary: The model's [`ImageVocabulary`].
        template: `"plain"`, `"templated"` or `"chat"`.
        max_length: Longest sequence kept (None: no limit). An image span is never cut.
        length_policy: `"drop"` (default, as the authors did): an over-long row is left out of the batch, counted in
            `stats["dropped"]` and logged. `"truncate"`: the row is cut at `max_length`, or before the image span
            that would straddle it; a row left with nothing to train is dropped.
        image_encoder: Optional [`ImageEncoder`] to encode images that are not pre-tokenized, at every step. Prefer
            [`pretokenize_images`] once; without an encoder such images raise.
        image_root: Directory that confines image `path` reads (used with `image_encoder`).
        system_prompt: System line for `"templated"` (default "You are a helpful assistant.") and `"chat"`
            (default none).
        instruction: Instruction appended to the question in `"templated"`; `{reasoning_open}` etc. are filled in.
        lead_phrases: Phrases opening a `"templated"` completion.
        reasoning_tokens: `(open, close)` strings around the reasoning (authors: `<reserved12856>`, `<reserved12857>`).
        answer_tokens: `(open, close)` strings around the answer (authors: `<reserved12866>`, `<reserved12867>`).
        answer_prefix: Text before the answer in `"plain"` and `"chat"` (the authors' format reward looks for
            "Final Answer:").
        prompt_separator: Text closing the prompt in `"plain"`.
        add_bos: Start `"plain"` / `"templated"` sequences with the tokenizer's BOS token.
        seed: Seed of the lead-phrase RNG.
        pad_to_multiple_of: Pad the batch length to a multiple of this.
        prompt_column: Column holding the prompt parts.
        completion_column: Column holding the completion parts.
        answer_column: Column holding the final answer (may be absent / None for `"plain"` and `"chat"`).
        id_column: Column naming a row in errors and warnings (the batch position is used when absent).

    Example:
        ```python
        >>> from trl_omni import ImageVocabulary
        >>> from trl_omni.collators import InterleavedDataCollator
        >>> from trl_omni.data import image_part, text_part
        >>> from trl_omni.testing import tiny_chameleon
        >>> model, processor = tiny_chameleon()
        >>> vocab = ImageVocabulary.from_model(model, processor)
        >>> collator = InterleavedDataCollator(processor, vocab, template="templated")
        >>> row = {"prompt": [text_part("What is shown?"), image_part(codes=[0] * vocab.tokens_per_image)],
        ...        "completion": [text_part("A square.")], "answer": "A"}
        >>> batch = collator([row])
        >>> sorted(batch)
        ['attention_mask', 'input_ids', 'labels']
        ```
    """

    @checked_arguments(checked_elsewhere=("image_vocabulary",))
    def __init__(
        self,
        processing_class: Any,
        image_vocabulary: ImageVocabulary,
        template: str = "plain",
        max_length: int | None = None,
        length_policy: str = "drop",
        image_encoder: Any | None = None,
        image_root: str | os.PathLike | None = None,
        system_prompt: str | None = None,
        instruction: str = DEFAULT_INSTRUCTION,
        lead_phrases: Sequence[str] = DEFAULT_LEAD_PHRASES,
        reasoning_tokens: tuple[str, str] = ("<reserved12856>", "<reserved12857>"),
        answer_tokens: tuple[str, str] = ("<reserved12866>", "<reserved12867>"),
        answer_prefix: str = "\nFinal Answer: ",
        prompt_separator: str = "\n",
        add_bos: bool = True,
        seed: int = 0,
        pad_to_multiple_of: int | None = None,
        prompt_column: str = "prompt",
        completion_column: str = "completion",
        answer_column: str = "answer",
        id_column: str = "id",
    ):
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}.")
        if length_policy not in LENGTH_POLICIES:
            raise ValueError(f"length_policy must be one of {LENGTH_POLICIES}, got {length_policy!r}.")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1 or None, got {pad_to_multiple_of}.")
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}.")
        if template == "templated" and not lead_phrases:
            raise ValueError("lead_phrases must not be empty for the 'templated' template.")
        self.tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if template == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"template='chat' needs a tokenizer with a chat template, but {type(self.tokenizer).__name__} has "
                "none. Fix: set `tokenizer.chat_template`, or use template='plain' or 'templated'."
            )
        self.vocab = check_image_vocabulary(image_vocabulary, type(self).__name__)
        self.template = template
        self.max_length = max_length
        self.length_policy = length_policy
        self.image_encoder = image_encoder
        self.image_root = image_root
        if system_prompt is None and template == "templated":
            system_prompt = DEFAULT_SYSTEM_PROMPT
        self.system_prompt = system_prompt
        self.reasoning_tokens = tuple(reasoning_tokens)
        self.answer_tokens = tuple(answer_tokens)
        self.instruction = instruction.format(
            reasoning_open=self.reasoning_tokens[0],
            reasoning_close=self.reasoning_tokens[1],
            answer_open=self.answer_tokens[0],
            answer_close=self.answer_tokens[1],
        )
        self.lead_phrases = tuple(lead_phrases)
        self.answer_prefix = answer_prefix
        self.prompt_separator = prompt_separator
        self.add_bos = add_bos
        self.seed = seed
        self.rng = random.Random(seed)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.prompt_column = prompt_column
        self.completion_column = completion_column
        self.answer_column = answer_column
        self.id_column = id_column
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id
        if self.tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no EOS token; the completion must end with one.")
        self.bos_ids = [self.tokenizer.bos_token_id] if add_bos and self.tokenizer.bos_token_id is not None else []
        self.eos_ids = [self.tokenizer.eos_token_id]
        for token in (*self.reasoning_tokens, *self.answer_tokens):
            if template == "templated" and self.tokenizer.convert_tokens_to_ids(token) == self.tokenizer.unk_token_id:
                logger.warning("Control token %r is not a single token of this tokenizer.", token)
        # Ids that text may never produce: image codes, BOI, EOI, the placeholder.
        forbidden = image_vocabulary.image_token_mask().clone()
        size = forbidden.numel()
        for token_id in (image_vocabulary.boi_token_id, image_vocabulary.eoi_token_id):
            forbidden[token_id] = True
        if image_vocabulary.image_placeholder_id is not None:
            forbidden[image_vocabulary.image_placeholder_id] = True
        self._forbidden = torch.cat([forbidden, torch.zeros(max(len(self.tokenizer) - size, 0), dtype=torch.bool)])
        self._text_cache: dict[str, torch.Tensor] = {}
        self._bad_texts: set[str] = set()
        self.stats = {"rows": 0, "batches": 0, "dropped": 0, "truncated": 0, "images_encoded": 0}

    # ------------------------------------------------------------------ public API
    def __call__(self, rows: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return self.torch_call(rows)

    def torch_call(self, rows: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Builds the batch. See the class docstring for the layout."""
        encoded = self._encode_rows(rows, with_completion=True)
        kept_ids, kept_prompt_lengths = [], []
        for position, (row, (ids, prompt_length, image_starts, image_ends)) in enumerate(zip(rows, encoded)):
            ids = self._apply_length_policy(row, position, ids, prompt_length, image_starts, image_ends)
            if ids is not None:
                kept_ids.append(ids)
                kept_prompt_lengths.append(prompt_length)
        self.stats["rows"] += len(rows)
        self.stats["batches"] += 1
        if not kept_ids:
            raise ValueError(
                f"Every row of this batch ({len(rows)} rows) is longer than max_length={self.max_length} and was "
                f"dropped (length_policy={self.length_policy!r}). Fix: raise max_length, use "
                "length_policy='truncate', or filter the dataset with `collator.keeps(rows)` first (PeSFTTrainer "
                "does)."
            )
        return self._pad(kept_ids, kept_prompt_lengths)

    def encode_prompt(self, row: Mapping[str, Any]) -> list[int]:
        """Token ids of a row's prompt, images spliced in, laid out by the template up to where the model writes.

        Example:
            ```python
            >>> prompt_ids = collator.encode_prompt({"prompt": [text_part("What is 2+2?")]})
            ```
        """
        return self.encode_prompts([row])[0]

    def encode_prompts(self, rows: Sequence[Mapping[str, Any]]) -> list[list[int]]:
        """Batched [`encode_prompt`] (one tokenizer call, one image-encoder call)."""
        return [ids.tolist() for ids, _, _, _ in self._encode_rows(rows, with_completion=False)]

    def encode_prompt_batch(
        self, rows: Sequence[Mapping[str, Any]], padding_side: str = "left"
    ) -> dict[str, torch.Tensor]:
        """Padded prompt batch for generation: `{"input_ids", "attention_mask"}`, left padded by default.

        Example:
            ```python
            >>> inputs = collator.encode_prompt_batch(rows)
            >>> budget = vocab.generation_budget(num_images=1, text_tokens=256)
            >>> model.generate(**inputs, max_new_tokens=budget,
            ...                logits_processor=[ImageSpanLogitsProcessor(vocab, max_new_tokens=budget)])
            ```
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
        prompts = [ids for ids, _, _, _ in self._encode_rows(rows, with_completion=False)]
        length = max(ids.numel() for ids in prompts)
        input_ids = torch.full((len(prompts), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for row, ids in enumerate(prompts):
            span = slice(length - ids.numel(), length) if padding_side == "left" else slice(0, ids.numel())
            input_ids[row, span] = ids
            attention_mask[row, span] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def sequence_lengths(self, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Length of each row's training sequence (images counted as whole spans), without encoding any image.

        With the `"templated"` template the lead phrase is drawn per batch; the longest one is counted, so no batch
        gives a row more tokens than this.

        Example:
            ```python
            >>> collator.sequence_lengths(rows)  # e.g. [1187, 2251] on Anole: 1 and 2 images of 1,026 tokens
            ```
        """
        return [length for length, _, _, _ in self._layout_lengths(rows)]

    def keeps(self, rows: Sequence[Mapping[str, Any]]) -> list[bool]:
        """Whether each row survives `max_length` under `length_policy` in every batch (the decision the collator
        makes per batch, taken once per dataset: `PeSFTTrainer` filters its datasets with it before batching, so a
        batch never holds only dropped rows, whatever the batch size)."""
        return [
            self._kept_length(length, prompt_length, starts, ends) is not None
            for length, prompt_length, starts, ends in self._layout_lengths(rows)
        ]

    # ------------------------------------------------------------------ length policy and padding
    def _kept_length(
        self, length: int, prompt_length: int, image_starts: list[int], image_ends: list[int]
    ) -> int | None:
        """How many tokens of a row the length policy keeps, or None when it drops the row."""
        if self.max_length is None or length <= self.max_length:
            return length
        if self.length_policy == "truncate":
            cut = self.max_length
            for start, end in zip(image_starts, image_ends):
                if start < cut < end:  # never cut inside an image span: cut before its BOI
                    cut = start
                    break
            if cut > prompt_length:
                return cut
        return None

    def _apply_length_policy(self, row, position, ids, prompt_length, image_starts, image_ends):
        kept = self._kept_length(ids.numel(), prompt_length, image_starts, image_ends)
        if kept == ids.numel():
            return ids
        if kept is not None:
            self.stats["truncated"] += 1
            return ids[:kept]
        name = self._row_name(row, position)
        if self.length_policy == "truncate":
            reason = "nothing trainable is left before max_length"
        else:
            reason = "length_policy='drop'"
        self.stats["dropped"] += 1
        logger.warning(
            "Dropped row %s: %d tokens > max_length=%d (%s). %d row(s) dropped so far.",
            name,
            ids.numel(),
            self.max_length,
            reason,
            self.stats["dropped"],
        )
        return None

    def _pad(self, ids_list: list[torch.Tensor], prompt_lengths: list[int]) -> dict[str, torch.Tensor]:
        lengths = [ids.numel() for ids in ids_list]
        length = max(lengths)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(ids_list), length), self.pad_token_id, dtype=torch.long)
        for row, ids in enumerate(ids_list):  # one slice copy per row
            input_ids[row, : ids.numel()] = ids
        positions = torch.arange(length)
        attention_mask = (positions < torch.tensor(lengths)[:, None]).long()
        trained = attention_mask.bool() & (positions >= torch.tensor(prompt_lengths)[:, None])
        labels = input_ids.masked_fill(~trained, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
