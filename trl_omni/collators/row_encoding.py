"""Encoding of template chunks into token ids for [`InterleavedDataCollator`]: one batched tokenizer call per
batch, image spans spliced in through the core, text that tokenizes to image tokens refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np
import torch

from ..data.images import load_image
from ..data.schema import InterleavedDataError, check_codes
from .templates import _IDS, _IMAGE, _TEXT


class _RowEncoder:
    """Mixin of [`InterleavedDataCollator`]: template chunks -> `(ids, prompt_length, image_starts, image_ends)`.

    Uses the collator's `tokenizer`, `vocab`, `image_encoder`, `image_root`, `_forbidden` ids, text cache and
    `stats`, and the layout of [`_TemplateLayout`].
    """

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
        return self._spans_from_codes(image_chunks, encoded)

    def _spans_from_codes(self, image_chunks: list[tuple[str, dict, str]], encoded: dict) -> list[torch.Tensor]:
        """`BOI + ids + EOI` of every image, built in one go after one check of all the batch's codes.

        The fast path covers codes as lists of Python ints (what `datasets` yields): one pass over the element
        types, one length check, one range check for the whole batch. Anything else (floats, booleans, nested
        lists, arrays, a wrong count or range) goes through `check_codes` image by image, which names the row and
        the field of the first bad one.
        """
        vocab, count = self.vocab, self.vocab.tokens_per_image
        values = [encoded[i] if i in encoded else part["codes"] for i, (_, part, _) in enumerate(image_chunks)]
        flat = None
        if not encoded and all(type(codes) is list and len(codes) == count for codes in values):
            if set(map(type, chain.from_iterable(values))) <= {int}:
                flat = np.fromiter(chain.from_iterable(values), dtype=np.int64, count=count * len(values))
                if flat.size and not 0 <= int(flat.min()) <= int(flat.max()) < vocab.num_codes:
                    flat = None
        if flat is None:  # locate and name the bad image, or take the encoder's / arrays' codes
            flat = np.asarray(
                [
                    codes.tolist() if i in encoded else check_codes(codes, name, field, vocab)
                    for i, ((name, _, field), codes) in enumerate(zip(image_chunks, values))
                ],
                dtype=np.int64,
            ).reshape(-1)
        ids = vocab.codes_to_ids(torch.from_numpy(flat).view(len(values), count))
        spans = torch.empty(len(values), count + 2, dtype=torch.long)
        spans[:, 0] = vocab.boi_token_id
        spans[:, 1:-1] = ids
        spans[:, -1] = vocab.eoi_token_id
        return list(spans.unbind(0))

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

    def _layout_lengths(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, int, list[int], list[int]]]:
        """Per row: `(length, prompt_length, image_starts, image_ends)` of its training sequence, without encoding an
        image or building ids: one batched tokenizer call, images counted as whole spans.

        With the `"templated"` template the lead phrase (drawn per batch) is the longest one, so the lengths are the
        largest any batch can give; the lead-phrase RNG is not advanced.
        """
        lead_phrase = self._longest_lead_phrase() if self.template == "templated" else None
        names = [self._row_name(row, position) for position, row in enumerate(rows)]
        row_chunks = [self._row_chunks(row, name, True, lead_phrase) for row, name in zip(rows, names)]
        texts = [chunk[1] for chunks in row_chunks for chunk in chunks if chunk[0] == _TEXT]
        token_table = self._tokenize(texts) if texts else {}
        span = self.vocab.span_length
        results = []
        for chunks in row_chunks:
            starts, ends, offset, prompt_length = [], [], 0, None
            for kind, payload, trained, _ in chunks:
                if trained and prompt_length is None:
                    prompt_length = offset
                if kind == _TEXT:
                    offset += token_table[payload].numel()
                elif kind == _IDS:
                    offset += len(payload)
                else:
                    starts.append(offset)
                    ends.append(offset + span)
                    offset += span
            results.append((offset, offset if prompt_length is None else prompt_length, starts, ends))
        return results

    def _longest_lead_phrase(self) -> str:
        cached = getattr(self, "_longest_lead", None)
        if cached is None:
            chunks = [f" {lead} {self.reasoning_tokens[0]}" for lead in self.lead_phrases]
            table = self._tokenize(chunks)
            cached = max(self.lead_phrases, key=lambda lead: table[f" {lead} {self.reasoning_tokens[0]}"].numel())
            self._longest_lead = cached
        return cached

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
