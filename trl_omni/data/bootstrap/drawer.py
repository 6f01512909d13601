"""[`StepDrawer`]: drawing prompts and batched, constrained, seeded drawing of one image per prompt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...models import ImageVocabulary, generate_with_images
from ..schema import InterleavedDataError
from .config import BootstrapConfig
from .sampling import SeededGumbelSampler


@dataclass
class _Job:
    sample: int  # position in the shard
    step: int
    attempt: int
    prompt_ids: list[int]
    seed: int


class StepDrawer:
    """Draws one image per prompt, batched, through `model.generate` with `ImageSpanLogitsProcessor`.

    Every prompt ends with BOI, so the constrained generation continues that span: exactly `tokens_per_image` codes,
    then EOI (`max_new_tokens = tokens_per_image + 1`).
    """

    def __init__(self, model: Any, processor: Any, vocab: ImageVocabulary, config: BootstrapConfig):
        self.model = model
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.vocab = vocab
        self.config = config
        self.device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id
        self.bos = [self.tokenizer.bos_token_id] if config.add_bos and self.tokenizer.bos_token_id is not None else []
        self.num_generate_calls = 0
        self._forbidden = {vocab.boi_token_id, vocab.eoi_token_id, vocab.image_placeholder_id}
        # While drawing, ImageSpanLogitsProcessor leaves only image tokens and EOI possible: noise for those only.
        vocab_size = model.get_output_embeddings().weight.shape[0]
        image_ids = vocab.image_token_mask(vocab_size, torch.device("cpu")).nonzero().flatten()
        self._support = torch.cat([image_ids, torch.tensor([vocab.eoi_token_id])]).sort().values

    def prompt_ids(
        self, question: str, images: Sequence[torch.Tensor], steps: Sequence[str], step: int, row: Any = "?"
    ) -> list[int]:
        """Token ids of the drawing prompt for `steps[step]`: BOS, the template (question images spliced in at
        `{image}` through `ImageVocabulary.image_span_ids`), BOI."""
        filled = self.config.prompt_template.replace("{image}", "\0")
        filled = filled.format(
            question=question,
            step=step + 1,
            num_steps=len(steps),
            step_text=steps[step],
            previous_steps=" ".join(steps[:step]),
        )
        ids = list(self.bos)
        for i, piece in enumerate(filled.split("\0")):
            if i > 0:
                for codes in images:
                    ids += self.vocab.image_span_ids(codes).tolist()
            if piece:
                piece_ids = self.tokenizer(piece, add_special_tokens=False).input_ids
                if (
                    any(t in self._forbidden for t in piece_ids)
                    or self.vocab.is_image_token(torch.tensor(piece_ids)).any()
                ):
                    raise InterleavedDataError(
                        row,
                        f"step {step + 1}",
                        "the drawing prompt's text tokenizes to an image token, BOI, EOI or the image placeholder.",
                        "remove image-token strings from the question / rationale / prompt_template.",
                    )
                ids += piece_ids
        return ids + [self.vocab.boi_token_id]

    @torch.inference_mode()
    def draw(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int]) -> torch.Tensor:
        """Draws one image per prompt (each ending with BOI, as `prompt_ids` builds them). Returns `(N, H*W)` codes
        on CPU."""
        tokens = self.vocab.tokens_per_image
        if any(not p or p[-1] != self.vocab.boi_token_id for p in prompts):
            raise ValueError("Every drawing prompt must end with BOI (build them with StepDrawer.prompt_ids).")
        out = []
        for start in range(0, len(prompts), self.config.batch_size):
            chunk = prompts[start : start + self.config.batch_size]
            length = max(len(p) for p in chunk)
            input_ids = torch.full((len(chunk), length), self.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for row, prompt in enumerate(chunk):  # left padding: every prompt ends where generation starts
                input_ids[row, length - len(prompt) :] = torch.tensor(prompt)
                attention_mask[row, length - len(prompt) :] = 1
            generated = generate_with_images(
                self.model,
                self.vocab,
                input_ids,
                attention_mask,
                max_new_tokens=tokens + 1,
                max_images=0,  # only the image the prompt's final BOI opened
                sampler=SeededGumbelSampler(
                    seeds[start : start + len(chunk)],
                    self.config.temperature,
                    self.config.top_k,
                    support=self._support,
                ),
                min_new_tokens=tokens + 1,
                pad_token_id=self.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            self.num_generate_calls += 1
            segments = self.vocab.parse_segments([[self.vocab.boi_token_id, *row] for row in generated])
            if any(len(row) != tokens + 1 for row in generated) or len(segments.complete_codes) != len(chunk):
                raise RuntimeError(
                    f"Constrained generation returned {int(segments.complete.sum())} complete images for {len(chunk)} "
                    "drawing prompts; the model's generation config (e.g. an eos/stop setting) cut the images."
                )
            out.append(segments.complete_codes.reshape(len(chunk), tokens))
        return torch.cat(out) if out else torch.empty(0, tokens, dtype=torch.long)
