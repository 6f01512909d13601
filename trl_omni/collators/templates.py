"""Prompt/completion layouts of [`InterleavedDataCollator`]: a row -> chunks (text to tokenize, fixed ids, image
parts), each marked trained or masked, for the `"plain"`, `"templated"` and `"chat"` templates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..data.schema import InterleavedDataError, check_answer, normalize_parts


TEMPLATES = ("plain", "templated", "chat")


DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_INSTRUCTION = (
    " Think with images first. The image reasoning process and answer are enclosed within {reasoning_open} "
    "{reasoning_close} and {answer_open} {answer_close} XML tags, respectively."
)
# Ours. The authors' phrases are in their release (`LEAD_PHRASES` in src/PeSFT/pesft.py); trl-omni writes its own text
# (docs/deviations.md, row 6): pass theirs, or any others, with `lead_phrases=`.
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


class _TemplateLayout:
    """Mixin of [`InterleavedDataCollator`]: lays a row out as template chunks `(kind, payload, trained, field)`.

    Uses the collator's template settings (`template`, `bos_ids`, `eos_ids`, `system_prompt`, `instruction`,
    `lead_phrases`, `rng`, `reasoning_tokens`, `answer_tokens`, `answer_prefix`, `prompt_separator`, the column
    names and `tokenizer`).
    """

    def _row_name(self, row: Mapping[str, Any], position: int) -> str:
        row_id = row.get(self.id_column) if isinstance(row, Mapping) else None
        return f"{position} (id={row_id!r})" if row_id is not None else f"{position} (of the batch)"

    def question_text(self, row: Mapping[str, Any]) -> str:
        """The row's question as written: the text parts of its prompt, without the template's system text and
        instruction, and without its images (for reports and renderings, which show the images themselves)."""
        parts = normalize_parts(row.get(self.prompt_column), self._row_name(row, 0), self.prompt_column)
        return "\n".join(part["text"].strip() for part in parts if part["type"] == "text" and part["text"].strip())

    def _parts_to_chunks(self, parts: list[dict], column: str, trained: bool) -> list[tuple]:
        return [
            (_TEXT, part["text"], trained, f"{column}[{i}].text")
            if part["type"] == "text"
            else (_IMAGE, part, trained, f"{column}[{i}]")
            for i, part in enumerate(parts)
        ]

    def _row_chunks(
        self, row: Mapping[str, Any], name: str, with_completion: bool, lead_phrase: str | None = None
    ) -> list[tuple]:
        if not isinstance(row, Mapping):
            raise InterleavedDataError(name, "<row>", f"expected a dict, got {type(row).__name__}.", "pass dict rows.")
        if self.prompt_column not in row:
            columns = sorted(map(str, row))
            if "messages" in row or "conversations" in row:
                found = f"a chat-style row (columns: {columns}), not an interleaved row"
                fix = "convert each conversation into parts: the user turn -> `prompt`, the assistant turn ->"
                fix += " `completion` (lists of text_part / image_part), the final answer -> `answer`."
            else:
                found = f"no {self.prompt_column!r} column in the row (its columns: {columns})"
                fix = (
                    f"rename the column holding the prompt parts to {self.prompt_column!r}, or pass `prompt_column=`."
                )
            raise InterleavedDataError(name, self.prompt_column, f"{found}.", f"{fix} See docs/data-formats.md.")
        prompt = normalize_parts(row[self.prompt_column], name, self.prompt_column)
        if not any(part["type"] == "image" or part["text"].strip() for part in prompt):
            raise InterleavedDataError(
                name, self.prompt_column, "the prompt (question) is empty.", "give the question text and/or images."
            )
        completion, answer = [], None
        if with_completion:
            completion = normalize_parts(row.get(self.completion_column), name, self.completion_column)
            answer = check_answer(row.get(self.answer_column), name, self.answer_column)
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
            return self._templated(prompt, completion, answer, with_completion, lead_phrase)
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

    def _templated(self, prompt, completion, answer, with_completion, lead_phrase=None) -> list[tuple]:
        chunks = [(_IDS, self.bos_ids, False, "bos")] if self.bos_ids else []
        chunks.append((_TEXT, f"{self.system_prompt}\nUser: ", False, "system_prompt"))
        chunks += self._parts_to_chunks(prompt, self.prompt_column, False)
        chunks.append((_TEXT, f"{self.instruction}\nAssistant:", False, "instruction"))
        if with_completion:
            lead = self.rng.choice(self.lead_phrases) if lead_phrase is None else lead_phrase
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
