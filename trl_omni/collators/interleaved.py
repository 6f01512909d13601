"""`InterleavedDataCollator`: interleaved text/image rows -> `input_ids`, `attention_mask`, `labels`.

Stable interface (consumed by the trainers):

- `collator(rows) -> {"input_ids", "attention_mask", "labels"}`: `(B, L)` LongTensors, right padded. `labels` is -100
  on the prompt (its text *and* its images), on padding, and wherever nothing is trained; it equals `input_ids` on the
  completion: text, images (BOI, codes, EOI) and the final EOS. Completion image-token positions are exactly
  `image_vocabulary.is_image_token(labels)` (PeSFT relies on that; prompt images never appear in `labels`).
- `collator.encode_prompt(row) -> list[int]` / `collator.encode_prompts(rows)`: the prompt of a row with its images
  spliced in, laid out by the same template, ending where the model should start writing (for RL trainers);
  `collator.encode_prompt_batch(rows, padding_side="left")`: the same, padded, ready for `model.generate`.
- `collator.stats`: counters (`rows`, `batches`, `dropped`, `truncated`, `images_encoded`).

Text pieces are tokenized separately (one batched tokenizer call per batch) and image spans are spliced between
them with [`ImageVocabulary.image_span_ids`]; image-token strings are never tokenized. Text that tokenizes to an
image token, BOI, EOI or the image placeholder is refused, naming the row and field.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import torch

from ..data.images import load_image
from ..data.schema import InterleavedDataError, normalize_parts
from ..models.image_vocabulary import ImageVocabulary


logger = logging.getLogger(__name__)

TEMPLATES = ("plain", "templated", "chat")
LENGTH_POLICIES = ("drop", "truncate")

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_INSTRUCTION = (
    " Think with images first. The image reasoning process and answer are enclosed within {reasoning_open} "
    "{reasoning_close} and {answer_open} {answer_close} XML tags, respectively."
)
# The authors' lead phrases were not released; these are ours (override with `lead_phrases=`).
DEFAULT_LEAD_PHRASES = (
    "Let me think with images.",
    "Let me draw this out step by step.",
    "I will sketch the key steps first.",
    "Let me reason by drawing.",
    "Let me visualize the problem.",
)
_CHAT_IMAGE_SENTINEL = "\ue000"  # private-use character standing for one image inside a rendered chat template

# Chunk kinds inside a row: a text string to tokenize, fixed token ids, or an image part.
_TEXT, _IDS, _IMAGE = 0, 1, 2


class InterleavedDataCollator:
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

    def __init__(
        self,
        processing_class: Any,
        image_vocabulary: ImageVocabulary,
        template: str = "plain",
        max_length: int | None = None,
        length_policy: str = "drop",
        image_encoder: Any | None = None,
        image_root: str | None = None,
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
        self.vocab = image_vocabulary
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
                "length_policy='truncate', or filter long rows out of the dataset beforehand."
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
            >>> model.generate(**inputs, logits_processor=[ImageSpanLogitsProcessor(vocab)])
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

    # ------------------------------------------------------------------ templates
    def _row_name(self, row: Mapping[str, Any], position: int) -> str:
        row_id = row.get(self.id_column) if isinstance(row, Mapping) else None
        return f"{position} (id={row_id!r})" if row_id is not None else f"{position} (of the batch)"

    def _parts_to_chunks(self, parts: list[dict], column: str, trained: bool) -> list[tuple]:
        return [
            (_TEXT, part["text"], trained, f"{column}[{i}].text")
            if part["type"] == "text"
            else (_IMAGE, part, trained, f"{column}[{i}]")
            for i, part in enumerate(parts)
        ]

    def _row_chunks(self, row: Mapping[str, Any], name: str, with_completion: bool) -> list[tuple]:
        if not isinstance(row, Mapping):
            raise InterleavedDataError(name, "<row>", f"expected a dict, got {type(row).__name__}.", "pass dict rows.")
        prompt = normalize_parts(row.get(self.prompt_column), name, self.prompt_column)
        if not any(part["type"] == "image" or part["text"].strip() for part in prompt):
            raise InterleavedDataError(
                name, self.prompt_column, "the prompt (question) is empty.", "give the question text and/or images."
            )
        completion, answer = [], None
        if with_completion:
            completion = normalize_parts(row.get(self.completion_column), name, self.completion_column)
            answer = row.get(self.answer_column)
            if answer is not None and not isinstance(answer, str):
                answer = str(answer)
            has_completion = any(part["type"] == "image" or part["text"].strip() for part in completion)
            if self.template == "templated" and not (answer and answer.strip()):
                raise InterleavedDataError(
                    name, self.answer_column, "the answer is empty.", "give the final answer text (template needs it)."
                )
            if not has_completion and not (answer and answer.strip()):
                raise InterleavedDataError(
                    name,
                    f"{self.completion_column}/{self.answer_column}",
                    "both the completion and the answer are empty: nothing to train.",
                    "give a completion (reasoning) and/or an answer, or drop the row.",
                )
        if self.template == "plain":
            return self._plain(prompt, completion, answer, with_completion)
        if self.template == "templated":
            return self._templated(prompt, completion, answer, with_completion)
        return self._chat(name, prompt, completion, answer, with_completion)

    def _plain(self, prompt, completion, answer, with_completion) -> list[tuple]:
        chunks = [(_IDS, self.bos_ids, False, "bos")] if self.bos_ids else []
        chunks += self._parts_to_chunks(prompt, self.prompt_column, False)
        if self.prompt_separator:
            chunks.append((_TEXT, self.prompt_separator, False, "prompt_separator"))
        if with_completion:
            chunks += self._parts_to_chunks(completion, self.completion_column, True)
            if answer:
                chunks.append((_TEXT, self.answer_prefix + answer, True, self.answer_column))
            chunks.append((_IDS, self.eos_ids, True, "eos"))
        return chunks

    def _templated(self, prompt, completion, answer, with_completion) -> list[tuple]:
        chunks = [(_IDS, self.bos_ids, False, "bos")] if self.bos_ids else []
        chunks.append((_TEXT, f"{self.system_prompt}\nUser: ", False, "system_prompt"))
        chunks += self._parts_to_chunks(prompt, self.prompt_column, False)
        chunks.append((_TEXT, f"{self.instruction}\nAssistant:", False, "instruction"))
        if with_completion:
            lead = self.rng.choice(self.lead_phrases)
            chunks.append((_TEXT, f" {lead} {self.reasoning_tokens[0]}", True, "lead_phrase"))
            chunks += self._parts_to_chunks(completion, self.completion_column, True)
            closing = f"{self.reasoning_tokens[1]}{self.answer_tokens[0]}{answer}{self.answer_tokens[1]}"
            chunks.append((_TEXT, closing, True, self.answer_column))
            chunks.append((_IDS, self.eos_ids, True, "eos"))
        return chunks

    def _chat(self, name, prompt, completion, answer, with_completion) -> list[tuple]:
        def flatten(parts: list[dict], column: str) -> tuple[str, list[tuple]]:
            texts, images = [], []
            for i, part in enumerate(parts):
                if part["type"] == "text":
                    if _CHAT_IMAGE_SENTINEL in part["text"]:
                        raise InterleavedDataError(
                            name, f"{column}[{i}].text", "the text holds U+E000.", "remove that private-use char."
                        )
                    texts.append(part["text"])
                else:
                    texts.append(_CHAT_IMAGE_SENTINEL)
                    images.append((part, f"{column}[{i}]"))
            return "".join(texts), images

        def split(text: str, images: list[tuple], trained: bool, field: str) -> list[tuple]:
            pieces = text.split(_CHAT_IMAGE_SENTINEL)
            if len(pieces) != len(images) + 1:
                raise InterleavedDataError(
                    name,
                    field,
                    f"the chat template kept {len(pieces) - 1} of {len(images)} images.",
                    "use a chat template that renders message content verbatim.",
                )
            chunks = []
            for piece, image in zip(pieces, [*images, None]):
                if piece:
                    chunks.append((_TEXT, piece, trained, f"{field} (chat template)"))
                if image is not None:
                    chunks.append((_IMAGE, image[0], trained, image[1]))
            return chunks

        user_text, prompt_images = flatten(prompt, self.prompt_column)
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": user_text})
        prompt_text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        chunks = split(prompt_text, prompt_images, False, self.prompt_column)
        if with_completion:
            assistant_text, completion_images = flatten(completion, self.completion_column)
            if answer:
                assistant_text += self.answer_prefix + answer
            messages.append({"role": "assistant", "content": assistant_text})
            full_text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            if not full_text.startswith(prompt_text):
                raise InterleavedDataError(
                    name,
                    self.completion_column,
                    "the chat template renders the conversation with a different prefix than the prompt alone.",
                    "use a chat template whose generation prompt is a prefix of the full conversation.",
                )
            completion_text = full_text[len(prompt_text) :]
            chunks += split(completion_text, completion_images, True, self.completion_column)
            if not completion_text.rstrip().endswith(self.tokenizer.eos_token):
                chunks.append((_IDS, self.eos_ids, True, "eos"))
        return chunks

    # ------------------------------------------------------------------ encoding
    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids of each distinct text: one batched tokenizer call, one tensor, one forbidden-id check."""
        unique = [text for text in dict.fromkeys(texts) if text not in self._text_cache]
        table = dict(self._text_cache)
        if unique:
            encoded = self.tokenizer(unique, add_special_tokens=False)["input_ids"]
            lengths = [len(ids) for ids in encoded]
            flat = torch.tensor(list(chain.from_iterable(encoded)), dtype=torch.long)
            table.update(zip(unique, torch.split(flat, lengths)))
            self._bad_texts = set()
            if flat.numel() and bool(self._forbidden[flat].any()):
                self._bad_texts = {text for text in unique if bool(self._forbidden[table[text]].any())}
            constants = self._constant_texts()
            self._text_cache.update((text, table[text]) for text in unique if text in constants)
        else:
            self._bad_texts = set()
        return table

    def _constant_texts(self) -> set[str]:
        cached = getattr(self, "_constants", None)
        if cached is None:
            cached = {
                self.prompt_separator,
                f"{self.system_prompt}\nUser: ",
                f"{self.instruction}\nAssistant:",
                *(f" {lead} {self.reasoning_tokens[0]}" for lead in self.lead_phrases),
            }
            self._constants = cached
        return cached

    def _image_spans(self, image_chunks: list[tuple[str, dict, str]]) -> list[torch.Tensor]:
        """Image spans for `(row_name, part, field)` items; encodes the parts without codes in one batch."""
        to_encode = [i for i, (_, part, _) in enumerate(image_chunks) if part.get("codes") is None]
        encoded: dict[int, torch.Tensor] = {}
        if to_encode:
            if self.image_encoder is None:
                name, _, field = image_chunks[to_encode[0]]
                raise InterleavedDataError(
                    name,
                    field,
                    "the image is not pre-tokenized (no `codes`).",
                    "run `trl_omni.data.pretokenize_images(dataset, model, processor)` once before training, or "
                    "pass `image_encoder=ImageEncoder(model, processor)` to the collator (encodes every step).",
                )
            images = [load_image(image_chunks[i][1], self.image_root, image_chunks[i][0], image_chunks[i][2])
                      for i in to_encode]  # fmt: skip
            codes = self.image_encoder.encode(images)
            self.stats["images_encoded"] += len(images)
            encoded = dict(zip(to_encode, codes))
        spans = []
        for i, (name, part, field) in enumerate(image_chunks):
            codes = encoded.get(i)
            if codes is None:
                codes = part["codes"]
            try:
                spans.append(self.vocab.image_span_ids(codes))
            except (ValueError, TypeError, IndexError) as error:
                raise InterleavedDataError(
                    name,
                    f"{field}.codes",
                    f"invalid pre-tokenized image ({error}).",
                    "re-run `pretokenize_images` with this model's processor: the codes must be exactly "
                    f"{self.vocab.tokens_per_image} integers in [0, {self.vocab.num_codes}).",
                ) from error
        return spans

    def _encode_rows(
        self, rows: Sequence[Mapping[str, Any]], with_completion: bool
    ) -> list[tuple[torch.Tensor, int, list[int], list[int]]]:
        """Per row: `(ids, prompt_length, image_starts, image_ends)` before any length policy.

        Every template lays a row out as a masked prompt followed by the trained completion, so one prompt length per
        row describes the labels.
        """
        names = [self._row_name(row, position) for position, row in enumerate(rows)]
        row_chunks = [self._row_chunks(row, name, with_completion) for row, name in zip(rows, names)]

        texts = [chunk[1] for chunks in row_chunks for chunk in chunks if chunk[0] == _TEXT]
        token_table = self._tokenize(texts) if texts else {}
        if texts and self._bad_texts:
            self._raise_bad_text(row_chunks, names, token_table)

        image_items = [
            (name, chunk[1], chunk[3])
            for name, chunks in zip(names, row_chunks)
            for chunk in chunks
            if chunk[0] == _IMAGE
        ]
        spans = iter(self._image_spans(image_items)) if image_items else iter(())

        results = []
        for chunks in row_chunks:
            pieces, starts, ends, offset, prompt_length = [], [], [], 0, None
            for kind, payload, trained, _ in chunks:
                if trained and prompt_length is None:
                    prompt_length = offset
                if kind == _TEXT:
                    piece = token_table[payload]
                elif kind == _IDS:
                    piece = torch.tensor(payload, dtype=torch.long)
                else:
                    piece = next(spans)
                    starts.append(offset)
                    ends.append(offset + piece.numel())
                pieces.append(piece)
                offset += piece.numel()
            ids = torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.long)
            results.append((ids, offset if prompt_length is None else prompt_length, starts, ends))
        return results

    def _raise_bad_text(self, row_chunks, names, token_table) -> None:
        """Names the first text field that tokenizes to an image / BOI / EOI / placeholder id."""
        for name, chunks in zip(names, row_chunks):
            for kind, payload, _, field in chunks:
                if kind == _TEXT and payload in self._bad_texts:
                    token_ids = token_table[payload]
                    token = self.tokenizer.convert_ids_to_tokens(int(token_ids[self._forbidden[token_ids]][0]))
                    raise InterleavedDataError(
                        name,
                        field,
                        f"the text contains {token!r}, which is an image / BOI / EOI / placeholder token.",
                        "remove image-token strings from text; put images in image parts (the collator inserts "
                        "BOI, codes and EOI itself).",
                    )

    # ------------------------------------------------------------------ length policy and padding
    def _apply_length_policy(self, row, position, ids, prompt_length, image_starts, image_ends):
        if self.max_length is None or ids.numel() <= self.max_length:
            return ids
        name = self._row_name(row, position)
        if self.length_policy == "truncate":
            cut = self.max_length
            for start, end in zip(image_starts, image_ends):
                if start < cut < end:  # never cut inside an image span: cut before its BOI
                    cut = start
                    break
            if cut > prompt_length:
                self.stats["truncated"] += 1
                return ids[:cut]
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
