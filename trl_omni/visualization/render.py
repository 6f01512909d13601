"""Rendering: token ids -> [`RenderedTrajectory`] (text pieces and decoded images, incomplete images marked),
as HTML pages and PNG strips.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..models.image_vocabulary import ImageVocabulary
from ..models.segments import check_integer_tensor
from ..models.text import decode_without_images
from .decoders import FalseColorDecoder


@dataclass
class TrajectoryPiece:
    """One piece of a rendered trajectory.

    Attributes:
        kind: `"text"`, `"image"` (a complete, decoded image) or `"incomplete_image"` (shown as a placeholder).
        text: Decoded text (text pieces: image spans removed; incomplete images: the non-image tokens found inside
            the cut segment, if any).
        image: The decoded image (complete images only).
        num_image_tokens: Image tokens in the segment (images) or stray image tokens dropped from the text.
        tokens_per_image: Image tokens a complete image has.
    """

    kind: str
    text: str = ""
    image: Image.Image | None = None
    num_image_tokens: int = 0
    tokens_per_image: int = 0


_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }
section.trajectory { border: 1px solid #ddd; border-radius: 6px; padding: 1em; margin-bottom: 1.5em; }
section.trajectory h2 { font-size: 1.05em; margin: 0 0 .5em 0; }
.meta { color: #555; font-size: .9em; margin-bottom: .5em; white-space: pre-wrap; }
.text { white-space: pre-wrap; line-height: 1.4; margin: .4em 0; }
.note { color: #a60; font-size: .85em; }
figure { margin: .5em 0; }
figure img { image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { color: #777; font-size: .8em; }
.incomplete { display: inline-block; border: 2px dashed #c66; color: #a33; padding: .6em 1em; margin: .5em 0; }
.prompt-images { display: flex; flex-wrap: wrap; gap: .8em; padding-bottom: .5em; border-bottom: 1px solid #eee; }
"""


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


@dataclass
class RenderedTrajectory:
    """A trajectory as ordered text and image pieces, with HTML and PNG renderings.

    Attributes:
        pieces: The [`TrajectoryPiece`]s in sequence order.
        title: Optional heading (e.g. the prompt or a sample id).
        prompt_images: The prompt's own images (e.g. the problem image), decoded; shown before the pieces.
        metadata: Optional key/value facts shown under the title (rewards, step, ...).
        image_display_size: Width images are shown at in HTML and in the PNG strip (small images are enlarged with
            nearest-neighbour scaling so codes stay crisp).
    """

    pieces: list[TrajectoryPiece]
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    image_display_size: int = 256
    prompt_images: list[Image.Image] = field(default_factory=list)

    @property
    def images(self) -> list[Image.Image]:
        """The drawn (complete) images, in order; the prompt's images are in `prompt_images`."""
        return [piece.image for piece in self.pieces if piece.kind == "image"]

    @property
    def num_images(self) -> int:
        return sum(piece.kind == "image" for piece in self.pieces)

    @property
    def num_incomplete_images(self) -> int:
        return sum(piece.kind == "incomplete_image" for piece in self.pieces)

    @property
    def text(self) -> str:
        """The text with each image replaced by a short marker, e.g. for text-only trackers."""
        parts = []
        for piece in self.pieces:
            if piece.kind == "text":
                parts.append(piece.text)
            elif piece.kind == "image":
                parts.append(f"[image {piece.image.width}x{piece.image.height}]")
            else:
                parts.append(f"[{_incomplete_label(piece)}]")
        return "".join(parts)

    # ------------------------------------------------------------------ HTML
    def to_html_fragment(self) -> str:
        """The trajectory as one `<section>` (text escaped, images inline as base64 PNG)."""
        out = ['<section class="trajectory">']
        if self.title:
            out.append(f"<h2>{html.escape(self.title)}</h2>")
        if self.metadata:
            facts = "\n".join(f"{key}: {value}" for key, value in self.metadata.items())
            out.append(f'<div class="meta">{html.escape(facts)}</div>')
        if self.prompt_images:
            figures = [
                self._figure_html(image, f"prompt image {number}")
                for number, image in enumerate(self.prompt_images, start=1)
            ]
            out.append('<div class="prompt-images">' + "".join(figures) + "</div>")
        image_number = 0
        for piece in self.pieces:
            if piece.kind == "text":
                out.append(f'<div class="text">{html.escape(piece.text)}</div>')
                if piece.num_image_tokens:
                    out.append(
                        f'<div class="note">{piece.num_image_tokens} stray image token(s) outside any image '
                        "segment were dropped from this text</div>"
                    )
            elif piece.kind == "image":
                image_number += 1
                out.append(self._figure_html(piece.image, f"image {image_number}"))
            else:
                out.append(f'<div class="incomplete">{html.escape(_incomplete_label(piece))}</div>')
        out.append("</section>")
        return "\n".join(out)

    def _figure_html(self, image: Image.Image, label: str) -> str:
        data = base64.b64encode(_png_bytes(image)).decode("ascii")
        width = max(image.width, self.image_display_size)
        return (
            f'<figure><img src="data:image/png;base64,{data}" width="{width}" alt="{label}"><figcaption>{label} '
            f"({image.width}x{image.height} px)</figcaption></figure>"
        )

    def to_html(self) -> str:
        """A self-contained HTML page (no external resources)."""
        return render_html_page([self], title=self.title or "trajectory")

    # ------------------------------------------------------------------ PNG
    def to_png(
        self,
        width: int = 512,
        margin: int = 8,
        gap: int = 8,
        max_height: int = 8192,
        font: Any | None = None,
    ) -> Image.Image:
        """A vertical PNG strip: title, metadata, the prompt's images, wrapped text, images, incomplete-image
        placeholders.

        Height is `2 * margin + sum(block heights) + gap * (blocks - 1)`; images are `image_display_size` wide
        (capped at `width - 2 * margin`). Strips taller than `max_height` are cut with a "truncated" line.
        """
        font = font or ImageFont.load_default()
        line_height = _line_height(font)
        inner = width - 2 * margin
        blocks: list[tuple[str, Any]] = []  # ("lines", (lines, colour)) | ("image", image) | ("box", label)
        if self.title:
            blocks.append(("lines", (_wrap(self.title, font, inner), (0, 0, 0))))
        if self.metadata:
            facts = "  ".join(f"{key}: {value}" for key, value in self.metadata.items())
            blocks.append(("lines", (_wrap(facts, font, inner), (90, 90, 90))))
        for number, image in enumerate(self.prompt_images, start=1):
            blocks.append(("lines", ([f"prompt image {number}:"], (90, 90, 90))))
            blocks.append(("image", self._strip_image(image, inner)))
        if self.prompt_images:
            blocks.append(("lines", (["answer:"], (90, 90, 90))))
        for piece in self.pieces:
            if piece.kind == "text":
                if piece.text.strip():
                    blocks.append(("lines", (_wrap(piece.text, font, inner), (20, 20, 20))))
                if piece.num_image_tokens:
                    note = f"[{piece.num_image_tokens} stray image token(s) dropped]"
                    blocks.append(("lines", (_wrap(note, font, inner), (170, 100, 0))))
            elif piece.kind == "image":
                blocks.append(("image", self._strip_image(piece.image, inner)))
            else:
                blocks.append(("box", _wrap(_incomplete_label(piece), font, inner - 12)))

        def block_height(kind: str, payload: Any) -> int:
            if kind == "lines":
                return len(payload[0]) * line_height
            if kind == "image":
                return payload.height
            return (len(payload) + 1) * line_height

        heights = [block_height(kind, payload) for kind, payload in blocks]
        total = 2 * margin + sum(heights) + gap * max(0, len(blocks) - 1)
        truncated = total > max_height
        if truncated:
            total = max_height
        canvas = Image.new("RGB", (width, max(total, 2 * margin + 1)), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        y = margin
        limit = total - margin - (line_height if truncated else 0)
        for (kind, payload), height in zip(blocks, heights):
            if kind == "lines":  # text may be cut line by line; images and boxes are shown whole or not at all
                lines, colour = payload
                for i, line in enumerate(lines):
                    if y + (i + 1) * line_height > limit:
                        break
                    draw.text((margin, y + i * line_height), line, fill=colour, font=font)
            elif y + height > limit:
                break
            elif kind == "image":
                canvas.paste(payload, (margin, y))
                # A 1-pixel frame just outside the image, so white drawings stay visible on the white strip.
                frame = [margin - 1, y - 1, margin + payload.width, y + payload.height]
                draw.rectangle(frame, outline=(190, 190, 190), width=1)
            else:
                draw.rectangle([margin, y, width - margin - 1, y + height - 1], outline=(200, 80, 80), width=2)
                for i, line in enumerate(payload):
                    draw.text(
                        (margin + 6, y + line_height // 2 + i * line_height), line, fill=(170, 40, 40), font=font
                    )
            y += height + gap
            if y > limit:
                break
        if truncated:
            draw.text((margin, total - margin - line_height), "... (truncated)", fill=(170, 40, 40), font=font)
        return canvas

    def _strip_image(self, image: Image.Image, inner: int) -> Image.Image:
        size = min(self.image_display_size, inner)
        height = max(1, round(image.height * size / image.width))
        resample = Image.NEAREST if size >= image.width else Image.LANCZOS
        return image.convert("RGB").resize((size, height), resample)

    def save(self, path_prefix: str | os.PathLike, png_width: int = 512) -> tuple[str, str]:
        """Writes `<path_prefix>.html` and `<path_prefix>.png`; returns both paths."""
        path_prefix = os.fspath(path_prefix)
        os.makedirs(os.path.dirname(path_prefix) or ".", exist_ok=True)
        with open(path_prefix + ".html", "w", encoding="utf-8") as f:
            f.write(self.to_html())
        self.to_png(width=png_width).save(path_prefix + ".png")
        return path_prefix + ".html", path_prefix + ".png"


def _incomplete_label(piece: TrajectoryPiece) -> str:
    label = f"incomplete image: {piece.num_image_tokens} of {piece.tokens_per_image} image tokens"
    if piece.text:
        shown = piece.text if len(piece.text) <= 80 else piece.text[:77] + "..."
        label += f"; other tokens inside: {shown!r}"
    return label


def _line_height(font: Any) -> int:
    box = font.getbbox("Ag|")
    return int(box[3] - min(box[1], 0)) + 4


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """Greedy word wrap by rendered pixel width (long words are broken by characters)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split(" "):
            candidate = word if not current else current + " " + word
            if font.getlength(candidate) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            current = ""
            while font.getlength(word) > width and len(word) > 1:
                cut = 1
                while cut < len(word) and font.getlength(word[: cut + 1]) <= width:
                    cut += 1
                lines.append(word[:cut])
                word = word[cut:]
            current = word
        lines.append(current)
    return lines


def render_html_page(trajectories: Sequence[RenderedTrajectory], title: str = "trajectories") -> str:
    """One self-contained HTML page holding several rendered trajectories."""
    body = "\n".join(trajectory.to_html_fragment() for trajectory in trajectories)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _tokenizer_of(processing_class: Any) -> Any:
    return getattr(processing_class, "tokenizer", None) or processing_class


def _rows_of(ids: Any, attention_mask: Any | None) -> list[list[int]]:
    if isinstance(ids, torch.Tensor):
        ids = check_integer_tensor(ids, "Token ids").detach().cpu()
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
            attention_mask = None if attention_mask is None else torch.as_tensor(attention_mask).reshape(1, -1)
        if attention_mask is None:
            return ids.tolist()
        mask = torch.as_tensor(attention_mask).detach().cpu().bool()
        return [row[m].tolist() for row, m in zip(ids, mask)]
    # The core refuses rows that are not integer token ids when it parses them (no silent int() here).
    return [row.tolist() if isinstance(row, torch.Tensor | np.ndarray) else list(row) for row in ids]


def render_trajectories(
    ids: Any,
    processing_class: Any,
    image_vocabulary: ImageVocabulary,
    decoder: Any | None = None,
    *,
    prompt_ids: Sequence[Sequence[int]] | None = None,
    attention_mask: Any | None = None,
    titles: Sequence[str | None] | None = None,
    metadata: Sequence[dict[str, Any]] | None = None,
    skip_special_tokens: bool = True,
    image_display_size: int = 256,
) -> list[RenderedTrajectory]:
    """Renders a batch of token sequences (completions or full sequences) as interleaved text and images.

    The core's `ImageVocabulary.parse_completions` finds every image; all images of the batch (prompt
    images included) are decoded in one `decoder.decode` call. Text between images is decoded with the tokenizer after
    removing image spans (stray image tokens outside any segment are dropped from the text and counted in the piece).
    Incomplete images become placeholders with their token count.

    A completion that begins with image codes finishes the image its prompt opened (a prompt ending with BOI, as when
    a model is asked to draw): that image is shown as the completion's first. With `prompt_ids`, each trajectory also
    shows its prompt's images (the problem image: `prompt_images`). The prompt's *text* is not rendered (it holds the
    template's system text): put the question in `titles` or `metadata`.

    Args:
        ids: `(B, L)` tensor (with `attention_mask` for padding) or a list of id lists.
        processing_class: The processor or tokenizer (for text).
        image_vocabulary: The model's [`~trl_omni.models.ImageVocabulary`].
        decoder: Any object with `decode(codes) -> list[PIL.Image]`; defaults to [`FalseColorDecoder`].
        prompt_ids: Optional prompt of each row (a list of ids, padding removed), when `ids` are completions.
        attention_mask: Optional mask for tensor `ids`.
        titles: Optional title per row.
        metadata: Optional dict per row (rewards, prompt id, ...), shown under the title.
        skip_special_tokens: Passed to the tokenizer's `decode`.
        image_display_size: Width images are shown at.

    Returns:
        One [`RenderedTrajectory`] per row.

    Example:
        ```python
        >>> from trl_omni.visualization import render_trajectories
        >>> rendered = render_trajectories(completion_ids, processor, vocab, prompt_ids=prompt_ids)
        >>> rendered[0].to_png().save("trajectory.png")
        ```
    """
    rows = _rows_of(ids, attention_mask)
    tokenizer = _tokenizer_of(processing_class)
    decoder = decoder or FalseColorDecoder(image_vocabulary)
    if prompt_ids is not None:
        prompt_ids = _rows_of(prompt_ids, None)
        if len(prompt_ids) != len(rows):
            raise ValueError(f"Got {len(prompt_ids)} prompts for {len(rows)} sequences.")
    segments = image_vocabulary.parse_completions(rows)
    codes = segments.complete_codes
    prompt_image_rows: list[int] = []
    if prompt_ids is not None and rows:
        prompt_segments = image_vocabulary.parse_segments(prompt_ids)
        codes = torch.cat([codes, prompt_segments.complete_codes])
        prompt_image_rows = prompt_segments.complete_batch_index.tolist()
    decoded = decoder.decode(codes) if len(codes) else []
    if len(decoded) != len(codes):
        raise ValueError(
            f"{type(decoder).__name__}.decode returned {len(decoded)} images for {len(codes)} code grids."
        )
    image_iter = iter(decoded[: len(segments.complete_codes)])
    prompt_images: list[list[Image.Image]] = [[] for _ in rows]
    for row_index, image in zip(prompt_image_rows, decoded[len(segments.complete_codes) :]):
        prompt_images[row_index].append(image)
    per_row = segments.per_row(len(rows))
    rendered = []
    for index, (row, row_segments) in enumerate(zip(rows, per_row)):
        pieces: list[TrajectoryPiece] = []
        cursor = 0

        def add_text(start: int, end: int, row: list[int] = row, pieces: list[TrajectoryPiece] = pieces) -> None:
            if end <= start:
                return
            span = row[start:end]
            text = decode_without_images(tokenizer, image_vocabulary, span, skip_special_tokens=skip_special_tokens)
            stray = int(image_vocabulary.is_image_token(torch.tensor(span, dtype=torch.long)).sum())
            if text or stray:
                pieces.append(TrajectoryPiece("text", text=text, num_image_tokens=stray))

        for segment in row_segments:
            add_text(cursor, segment.start)
            if segment.complete:
                pieces.append(
                    TrajectoryPiece(
                        "image",
                        image=next(image_iter),
                        num_image_tokens=image_vocabulary.tokens_per_image,
                        tokens_per_image=image_vocabulary.tokens_per_image,
                    )
                )
            else:
                inside = torch.tensor(row[max(segment.start + 1, 0) : segment.end], dtype=torch.long)
                if inside.numel() and int(inside[-1]) == image_vocabulary.eoi_token_id:
                    inside = inside[:-1]
                pieces.append(
                    TrajectoryPiece(
                        "incomplete_image",
                        text=decode_without_images(tokenizer, image_vocabulary, inside, skip_special_tokens),
                        num_image_tokens=int(segment.codes.numel()),
                        tokens_per_image=image_vocabulary.tokens_per_image,
                    )
                )
            cursor = segment.end
        add_text(cursor, len(row))
        rendered.append(
            RenderedTrajectory(
                pieces=pieces,
                title=None if titles is None else titles[index],
                metadata=dict(metadata[index]) if metadata is not None else {},
                image_display_size=image_display_size,
                prompt_images=prompt_images[index],
            )
        )
    return rendered


def render_trajectory(
    ids: Any,
    processing_class: Any,
    image_vocabulary: ImageVocabulary,
    decoder: Any | None = None,
    *,
    prompt_ids: Sequence[int] | None = None,
    title: str | None = None,
    metadata: dict[str, Any] | None = None,
    skip_special_tokens: bool = True,
    image_display_size: int = 256,
) -> RenderedTrajectory:
    """Renders one token sequence (a completion or a full sequence) as interleaved text and images.

    See [`render_trajectories`] for the arguments; `ids` is one sequence (list or 1-D tensor) and `prompt_ids` its
    prompt (its images are shown first).

    Example:
        ```python
        >>> from trl_omni.visualization import render_trajectory
        >>> rendered = render_trajectory(
        ...     completion_ids, processor, vocab, decoder=vq_decoder, prompt_ids=prompt_ids, title=question
        ... )
        >>> open("trajectory.html", "w").write(rendered.to_html())
        >>> rendered.to_png(width=512).save("trajectory.png")
        ```
    """
    if isinstance(ids, torch.Tensor) and ids.dim() != 1:
        raise ValueError(
            f"render_trajectory takes one sequence (1-D); got shape {tuple(ids.shape)}. Use render_trajectories."
        )
    return render_trajectories(
        [ids],
        processing_class,
        image_vocabulary,
        decoder,
        prompt_ids=None if prompt_ids is None else [prompt_ids],
        titles=[title],
        metadata=None if metadata is None else [metadata],
        skip_special_tokens=skip_special_tokens,
        image_display_size=image_display_size,
    )[0]
