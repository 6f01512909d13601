"""See the reasoning: rendered trajectories (interleaved text and images) as HTML pages and PNG strips, and their
bounded logging to trackers during training.

- [`render_trajectory`] / [`render_trajectories`]: token ids -> [`RenderedTrajectory`] (text pieces, decoded images,
  incomplete images marked with their token count), via the core's `ImageVocabulary.parse_segments`.
- Any object with `decode(codes) -> list[PIL.Image]` decodes the images: `trl_omni.models.vq_decoder.VQImageDecoder`
  (real VQGAN weights), `PaletteDecoder` (exact, palette codebooks) or [`FalseColorDecoder`] (the default; needs no
  weights: codes are coloured by a PCA projection of their codebook embeddings, so similar codes look alike).
- [`TrajectoryLogger`]: logs at most N rendered trajectories per step, within a byte budget, to tensorboard, wandb,
  trackio and/or files. [`RenderedTrajectoriesCallback`] wraps it as a `transformers.TrainerCallback`; trainers hand
  it completions with [`RenderedTrajectoriesCallback.submit`] and it renders only at logging steps.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from transformers import TrainerCallback

from .models.image_vocabulary import ImageVocabulary
from .models.vq_decoder import PaletteDecoder


logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------- decoders
class FalseColorDecoder:
    """Shows raw codes as a false-colour grid, without any decoder weights.

    Each code gets the colour of its codebook embedding projected on the codebook's first three principal components
    (each scaled to `[0, 255]`), so codes with similar embeddings get similar colours. Each code is drawn as a square
    cell of `cell_size` pixels.

    Args:
        image_vocabulary: The model's image vocabulary (codebook and grid).
        cell_size: Pixels per code; by default chosen so that an image is about `target_size` pixels wide.
        target_size: Width aimed at when `cell_size` is not given.

    Example:
        ```python
        >>> decoder = FalseColorDecoder(vocab)
        >>> images = decoder.decode(vocab.parse_segments(ids).complete_codes)
        ```
    """

    def __init__(self, image_vocabulary: ImageVocabulary, cell_size: int | None = None, target_size: int = 256):
        height, width = image_vocabulary.grid_size
        self.cell_size = cell_size or max(1, target_size // max(height, width))
        self.palette = self.codebook_colors(image_vocabulary.codebook)
        self._palette_decoder = PaletteDecoder(self.palette, self.cell_size, grid_size=image_vocabulary.grid_size)

    @staticmethod
    def codebook_colors(codebook: torch.Tensor) -> np.ndarray:
        """`(K, 3)` uint8 colours from the top-3 principal components of a `(K, D)` codebook."""
        embeddings = codebook.detach().float().cpu()
        centered = embeddings - embeddings.mean(dim=0, keepdim=True)
        if centered.shape[0] > 1 and centered.abs().sum() > 0:
            _, _, v = torch.linalg.svd(centered, full_matrices=False)
            projected = centered @ v[:3].T
        else:
            projected = torch.zeros(embeddings.shape[0], 0)
        if projected.shape[1] < 3:  # fewer than 3 informative directions: pad with a constant mid-grey channel
            projected = torch.cat([projected, torch.zeros(projected.shape[0], 3 - projected.shape[1])], dim=1)
        low, high = projected.min(dim=0).values, projected.max(dim=0).values
        span = torch.where(high > low, high - low, torch.ones_like(high))
        scaled = torch.where(high > low, (projected - low) / span, torch.full_like(projected, 0.5))
        return (scaled * 255).round().to(torch.uint8).numpy()

    def decode(self, codes: Any) -> list[Image.Image]:
        return self._palette_decoder.decode(codes)


# ---------------------------------------------------------------------------------------------------------- rendering
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
        metadata: Optional key/value facts shown under the title (rewards, step, ...).
        image_display_size: Width images are shown at in HTML and in the PNG strip (small images are enlarged with
            nearest-neighbour scaling so codes stay crisp).
    """

    pieces: list[TrajectoryPiece]
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    image_display_size: int = 256

    @property
    def images(self) -> list[Image.Image]:
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
                data = base64.b64encode(_png_bytes(piece.image)).decode("ascii")
                width = max(piece.image.width, self.image_display_size)
                out.append(
                    f'<figure><img src="data:image/png;base64,{data}" width="{width}" '
                    f'alt="image {image_number}"><figcaption>image {image_number} ({piece.image.width}x'
                    f"{piece.image.height} px)</figcaption></figure>"
                )
            else:
                out.append(f'<div class="incomplete">{html.escape(_incomplete_label(piece))}</div>')
        out.append("</section>")
        return "\n".join(out)

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
        """A vertical PNG strip: title, metadata, wrapped text, images, incomplete-image placeholders.

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
        for piece in self.pieces:
            if piece.kind == "text":
                if piece.text.strip():
                    blocks.append(("lines", (_wrap(piece.text, font, inner), (20, 20, 20))))
                if piece.num_image_tokens:
                    note = f"[{piece.num_image_tokens} stray image token(s) dropped]"
                    blocks.append(("lines", (_wrap(note, font, inner), (170, 100, 0))))
            elif piece.kind == "image":
                size = min(self.image_display_size, inner)
                height = max(1, round(piece.image.height * size / piece.image.width))
                resample = Image.NEAREST if size >= piece.image.width else Image.LANCZOS
                blocks.append(("image", piece.image.convert("RGB").resize((size, height), resample)))
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
        ids = ids.detach().cpu()
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
            attention_mask = None if attention_mask is None else torch.as_tensor(attention_mask).reshape(1, -1)
        if attention_mask is None:
            return ids.tolist()
        mask = torch.as_tensor(attention_mask).detach().cpu().bool()
        return [row[m].tolist() for row, m in zip(ids, mask)]
    return [list(map(int, row)) for row in ids]


def render_trajectories(
    ids: Any,
    processing_class: Any,
    image_vocabulary: ImageVocabulary,
    decoder: Any | None = None,
    *,
    attention_mask: Any | None = None,
    titles: Sequence[str | None] | None = None,
    metadata: Sequence[dict[str, Any]] | None = None,
    skip_special_tokens: bool = True,
    image_display_size: int = 256,
) -> list[RenderedTrajectory]:
    """Renders a batch of token sequences (completions or full sequences) as interleaved text and images.

    One vectorised `parse_segments` call finds every image; all complete images of the batch are decoded in one
    `decoder.decode` call. Text between images is decoded with the tokenizer after removing image spans (stray image
    tokens outside any segment are dropped from the text and counted in the piece). Incomplete images become
    placeholders with their token count.

    Args:
        ids: `(B, L)` tensor (with `attention_mask` for padding) or a list of id lists.
        processing_class: The processor or tokenizer (for text).
        image_vocabulary: The model's [`~trl_omni.models.ImageVocabulary`].
        decoder: Any object with `decode(codes) -> list[PIL.Image]`; defaults to [`FalseColorDecoder`].
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
        >>> rendered = render_trajectories(completion_ids, processor, vocab)
        >>> rendered[0].to_png().save("trajectory.png")
        ```
    """
    rows = _rows_of(ids, attention_mask)
    tokenizer = _tokenizer_of(processing_class)
    decoder = decoder or FalseColorDecoder(image_vocabulary)
    segments = image_vocabulary.parse_segments(rows)
    complete_images = decoder.decode(segments.complete_codes) if len(segments.complete_codes) else []
    if len(complete_images) != len(segments.complete_codes):
        raise ValueError(
            f"{type(decoder).__name__}.decode returned {len(complete_images)} images for "
            f"{len(segments.complete_codes)} code grids."
        )
    image_iter = iter(complete_images)
    per_row = segments.per_row(len(rows))
    rendered = []
    for index, (row, row_segments) in enumerate(zip(rows, per_row)):
        pieces: list[TrajectoryPiece] = []
        cursor = 0

        def add_text(start: int, end: int, row: list[int] = row, pieces: list[TrajectoryPiece] = pieces) -> None:
            if end <= start:
                return
            span = torch.tensor(row[start:end], dtype=torch.long)
            is_image = image_vocabulary.is_image_token(span)
            text = tokenizer.decode(span[~is_image].tolist(), skip_special_tokens=skip_special_tokens)
            stray = int(is_image.sum())
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
                inside = torch.tensor(row[segment.start + 1 : segment.end], dtype=torch.long)
                if inside.numel() and int(inside[-1]) == image_vocabulary.eoi_token_id:
                    inside = inside[:-1]
                others = inside[~image_vocabulary.is_image_token(inside)].tolist()
                pieces.append(
                    TrajectoryPiece(
                        "incomplete_image",
                        text=tokenizer.decode(others, skip_special_tokens=skip_special_tokens) if others else "",
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
            )
        )
    return rendered


def render_trajectory(
    ids: Any,
    processing_class: Any,
    image_vocabulary: ImageVocabulary,
    decoder: Any | None = None,
    *,
    title: str | None = None,
    metadata: dict[str, Any] | None = None,
    skip_special_tokens: bool = True,
    image_display_size: int = 256,
) -> RenderedTrajectory:
    """Renders one token sequence (a completion or a full sequence) as interleaved text and images.

    See [`render_trajectories`] for the arguments; `ids` is one sequence (list or 1-D tensor).

    Example:
        ```python
        >>> from trl_omni.visualization import render_trajectory
        >>> rendered = render_trajectory(completion_ids, processor, vocab, decoder=palette_decoder, title="sample 0")
        >>> open("trajectory.html", "w").write(rendered.to_html())
        >>> rendered.to_png(width=512).save("trajectory.png")
        ```
    """
    if isinstance(ids, torch.Tensor) and ids.dim() != 1:
        raise ValueError(
            f"render_trajectory takes one sequence (1-D); got shape {tuple(ids.shape)}. Use render_trajectories."
        )
    return render_trajectories(
        [ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)],
        processing_class,
        image_vocabulary,
        decoder,
        titles=[title],
        metadata=None if metadata is None else [metadata],
        skip_special_tokens=skip_special_tokens,
        image_display_size=image_display_size,
    )[0]


# ---------------------------------------------------------------------------------------------------------- logging
SUPPORTED_TRACKERS = ("tensorboard", "wandb", "trackio", "files")


@dataclass
class TrajectoryLogReport:
    """What one [`TrajectoryLogger.log`] call did.

    Attributes:
        step: The training step logged.
        logged: Trajectories logged.
        skipped_for_count: Trajectories beyond `max_per_step`.
        skipped_for_size: Trajectories dropped because they would exceed the byte budget.
        downscaled: Trajectories whose PNG strip was shrunk to fit `max_bytes_per_item`.
        bytes: Bytes of PNG + HTML handed to the trackers.
        trackers: Trackers written to.
        files: Files written (with the `files` tracker).
    """

    step: int
    logged: int = 0
    skipped_for_count: int = 0
    skipped_for_size: int = 0
    downscaled: int = 0
    bytes: int = 0
    trackers: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


class TrajectoryLogger:
    """Logs rendered trajectories to trackers, bounded in count and bytes per step.

    Each trajectory becomes a PNG strip (and, for `files` and `wandb`, an HTML page). At most `max_per_step`
    trajectories are logged per call; a strip larger than `max_bytes_per_item` is downscaled until it fits (or
    dropped); trajectories are dropped once the step's `max_bytes_per_step` budget would be exceeded. Every drop is
    counted in the returned [`TrajectoryLogReport`] and logged at INFO level.

    Trackers: `"tensorboard"` (`torch.utils.tensorboard.SummaryWriter`, images + text), `"wandb"` (`wandb.Image` +
    `wandb.Html`, only while a run is active), `"trackio"` (`trackio.Image`), `"files"` (`<output_dir>/step_<N>/`).
    A tracker that cannot be imported is skipped with one warning; when none is usable, files are written instead
    (if `output_dir` is set).

    Args:
        output_dir: Directory for the `files` tracker (and the fallback).
        trackers: Tracker names; default `("files",)`.
        max_per_step: Most trajectories logged per call.
        max_bytes_per_step: Byte budget (PNG + HTML) per call.
        max_bytes_per_item: Byte budget per trajectory's PNG strip.
        png_width: Width of the PNG strips.
        tag: Name under which trackers show the trajectories.
        tensorboard_dir: Log directory of the tensorboard writer (default `<output_dir>/tensorboard`).

    Example:
        ```python
        >>> trajectory_logger = TrajectoryLogger(output_dir="out/rendered", trackers=["tensorboard", "files"])
        >>> report = trajectory_logger.log(render_trajectories(completion_ids, processor, vocab), step=10)
        ```
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        trackers: Sequence[str] | None = None,
        max_per_step: int = 4,
        max_bytes_per_step: int = 4 * 2**20,
        max_bytes_per_item: int = 2**20,
        png_width: int = 512,
        tag: str = "rendered_trajectories",
        tensorboard_dir: str | os.PathLike | None = None,
    ):
        trackers = list(trackers) if trackers is not None else ["files"]
        unknown = [t for t in trackers if t not in SUPPORTED_TRACKERS]
        if unknown:
            raise ValueError(f"Unknown trackers {unknown}; supported: {list(SUPPORTED_TRACKERS)}.")
        if max_per_step < 0 or max_bytes_per_step <= 0 or max_bytes_per_item <= 0:
            raise ValueError("max_per_step must be >= 0 and the byte budgets > 0.")
        self.output_dir = None if output_dir is None else os.fspath(output_dir)
        self.max_per_step = max_per_step
        self.max_bytes_per_step = max_bytes_per_step
        self.max_bytes_per_item = max_bytes_per_item
        self.png_width = png_width
        self.tag = tag
        self.tensorboard_dir = tensorboard_dir
        self._writer = None
        self._warned: set[str] = set()
        self.trackers = [t for t in trackers if self._available(t)]
        if not self.trackers and self.output_dir is not None:
            self.trackers = ["files"]
        if "files" in self.trackers and self.output_dir is None:
            raise ValueError("The 'files' tracker needs output_dir.")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def _available(self, tracker: str) -> bool:
        if tracker == "files":
            return True
        try:
            if tracker == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            elif tracker == "wandb":
                import wandb  # noqa: F401
            else:
                import trackio  # noqa: F401
        except ImportError:  # torch.utils.tensorboard raises ImportError when tensorboard is missing
            self._warn_once(tracker, f"Rendered trajectories: {tracker} is not installed; not logging to it.")
            return False
        return True

    def _prepare(
        self, trajectory: RenderedTrajectory, report: TrajectoryLogReport
    ) -> tuple[Image.Image, bytes] | None:
        strip = trajectory.to_png(width=self.png_width)
        data = _png_bytes(strip)
        shrunk = False
        for _ in range(6):
            if len(data) <= self.max_bytes_per_item:
                break
            factor = max(0.1, min(0.9, (self.max_bytes_per_item / len(data)) ** 0.5))
            strip = strip.resize(
                (max(1, int(strip.width * factor)), max(1, int(strip.height * factor))), Image.LANCZOS
            )
            data = _png_bytes(strip)
            shrunk = True
        if len(data) > self.max_bytes_per_item:
            return None
        report.downscaled += int(shrunk)
        return strip, data

    def log(self, trajectories: Sequence[RenderedTrajectory], step: int) -> TrajectoryLogReport:
        """Logs up to `max_per_step` trajectories for `step`, within the byte budgets.

        Args:
            trajectories: Rendered trajectories (the first ones are logged first).
            step: Training step (tracker x-axis, file directory name).

        Returns:
            A [`TrajectoryLogReport`].
        """
        report = TrajectoryLogReport(step=step, trackers=list(self.trackers))
        chosen = list(trajectories[: self.max_per_step])
        report.skipped_for_count = max(0, len(trajectories) - len(chosen))
        accepted: list[tuple[RenderedTrajectory, Image.Image, bytes, str | None]] = []
        wants_html = "files" in self.trackers or "wandb" in self.trackers
        for trajectory in chosen:
            prepared = self._prepare(trajectory, report)
            if prepared is None:
                report.skipped_for_size += 1
                continue
            strip, data = prepared
            page = trajectory.to_html() if wants_html else None
            page_bytes = len(page.encode("utf-8")) if page is not None else 0
            if page is not None and page_bytes > self.max_bytes_per_item:
                page, page_bytes = None, 0  # the PNG still goes out; the page alone is too large
            cost = len(data) + page_bytes
            if report.bytes + cost > self.max_bytes_per_step:
                report.skipped_for_size += 1
                continue
            report.bytes += cost
            accepted.append((trajectory, strip, data, page))
        report.logged = len(accepted)
        if report.skipped_for_count or report.skipped_for_size:
            logger.info(
                "Rendered trajectories at step %d: logged %d, skipped %d (count limit) and %d (size limit).",
                step,
                report.logged,
                report.skipped_for_count,
                report.skipped_for_size,
            )
        if accepted:
            for tracker in self.trackers:
                getattr(self, f"_log_{tracker}")(accepted, step, report)
        return report

    # ------------------------------------------------------------------ trackers
    def _log_files(self, accepted: list, step: int, report: TrajectoryLogReport) -> None:
        directory = os.path.join(self.output_dir, f"step_{step:08d}")
        os.makedirs(directory, exist_ok=True)
        for i, (_, _, data, page) in enumerate(accepted):
            png_path = os.path.join(directory, f"trajectory_{i:02d}.png")
            with open(png_path, "wb") as f:
                f.write(data)
            report.files.append(png_path)
            if page is not None:
                html_path = os.path.join(directory, f"trajectory_{i:02d}.html")
                with open(html_path, "w", encoding="utf-8") as f:
                    f.write(page)
                report.files.append(html_path)

    def _log_tensorboard(self, accepted: list, step: int, report: TrajectoryLogReport) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = self.tensorboard_dir or os.path.join(self.output_dir or ".", "tensorboard")
            self._writer = SummaryWriter(log_dir=os.fspath(log_dir))
        for i, (trajectory, strip, _, _) in enumerate(accepted):
            self._writer.add_image(f"{self.tag}/{i}", np.asarray(strip), step, dataformats="HWC")
            self._writer.add_text(f"{self.tag}/{i}", trajectory.text, step)
        self._writer.flush()

    def _log_wandb(self, accepted: list, step: int, report: TrajectoryLogReport) -> None:
        import wandb

        if wandb.run is None:
            self._warn_once("wandb_run", "Rendered trajectories: no active wandb run; not logging to wandb.")
            return
        images = [
            wandb.Image(strip, caption=trajectory.title or f"trajectory {i}")
            for i, (trajectory, strip, _, _) in enumerate(accepted)
        ]
        payload = {self.tag: images}
        pages = [t for t, _, _, page in accepted if page is not None]
        if pages:
            payload[f"{self.tag}_html"] = wandb.Html(render_html_page(pages, title=f"step {step}"))
        wandb.log(payload)  # no explicit step: the Trainer's wandb callback owns the step counter

    def _log_trackio(self, accepted: list, step: int, report: TrajectoryLogReport) -> None:
        import trackio

        if not hasattr(trackio, "Image"):
            self._warn_once("trackio_image", "Rendered trajectories: this trackio version has no trackio.Image.")
            return
        images = [
            trackio.Image(strip, caption=trajectory.title or f"trajectory {i}")
            for i, (trajectory, strip, _, _) in enumerate(accepted)
        ]
        trackio.log({self.tag: images})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class RenderedTrajectoriesCallback(TrainerCallback):
    """Logs a few rendered trajectories at each logging step of a `transformers.Trainer` (TRL trainers included).

    Hook for trainers: call [`submit`] with completion ids whenever completions exist (e.g. after generation in a
    GRPO-style trainer, or after evaluation generation); it only stores ids (cheap). At the next `on_log` the callback
    renders at most `max_per_step` of the latest submissions on the main process, logs them with a
    [`TrajectoryLogger`], and clears the buffer. Find the registered instance with [`RenderedTrajectoriesCallback.find`]:

    ```python
    callback = RenderedTrajectoriesCallback.find(self)  # inside a trainer method; None when not registered
    if callback is not None:
        callback.submit(completion_ids, metadata=[{"reward": r} for r in rewards])
    ```

    Trackers default to the trainer's `report_to` (tensorboard / wandb / trackio); with none of those, PNG and HTML
    files are written under `<output_dir>/rendered_trajectories/step_<N>/`.

    Args:
        image_vocabulary: The model's image vocabulary; by default read from the trainer's model at first use.
        processing_class: Processor or tokenizer for text; by default the trainer's `processing_class`.
        decoder: Object with `decode(codes) -> list[PIL.Image]`; by default [`FalseColorDecoder`].
        max_per_step: Most trajectories logged per logging step.
        max_bytes_per_step: Byte budget per logging step.
        max_bytes_per_item: Byte budget per PNG strip.
        output_dir: Directory for files (default `<args.output_dir>/rendered_trajectories`).
        trackers: Explicit tracker names (see [`TrajectoryLogger`]); default from `args.report_to`.
        png_width: Width of the PNG strips.

    Example:
        ```python
        >>> trainer = PeRPOTrainer(model, args=args, train_dataset=dataset, processing_class=processor)
        >>> trainer.add_callback(RenderedTrajectoriesCallback(max_per_step=4))
        ```
    """

    def __init__(
        self,
        image_vocabulary: ImageVocabulary | None = None,
        processing_class: Any | None = None,
        decoder: Any | None = None,
        max_per_step: int = 4,
        max_bytes_per_step: int = 4 * 2**20,
        max_bytes_per_item: int = 2**20,
        output_dir: str | os.PathLike | None = None,
        trackers: Sequence[str] | None = None,
        png_width: int = 512,
    ):
        self.image_vocabulary = image_vocabulary
        self.processing_class = processing_class
        self.decoder = decoder
        self.max_per_step = max_per_step
        self.max_bytes_per_step = max_bytes_per_step
        self.max_bytes_per_item = max_bytes_per_item
        self.output_dir = output_dir
        self.trackers = None if trackers is None else list(trackers)
        self.png_width = png_width
        self._pending: deque[tuple[list[int], str | None, dict[str, Any]]] = deque(maxlen=max(1, max_per_step))
        self._logger: TrajectoryLogger | None = None
        self.last_report: TrajectoryLogReport | None = None

    @classmethod
    def find(cls, trainer: Any) -> RenderedTrajectoriesCallback | None:
        """The instance registered on `trainer` (via `callbacks=` or `add_callback`), or None."""
        handler = getattr(trainer, "callback_handler", None)
        for callback in getattr(handler, "callbacks", []):
            if isinstance(callback, cls):
                return callback
        return None

    def submit(
        self,
        completion_ids: Any,
        titles: Sequence[str | None] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
        attention_mask: Any | None = None,
    ) -> None:
        """Hands completions to the callback; only the latest `max_per_step` are kept until the next log.

        Args:
            completion_ids: `(B, L)` tensor or list of id lists (padding removed, as TRL's reward functions get them),
                or full sequences; prompt text and images render too when included.
            titles: Optional title per completion (e.g. the prompt).
            metadata: Optional dict per completion (e.g. `{"reward": 0.8}`), shown with the trajectory.
            attention_mask: Optional mask for a padded tensor of ids (0 = padding, dropped).
        """
        rows = _rows_of(completion_ids, attention_mask)
        for i, row in enumerate(rows):
            title = None if titles is None else titles[i]
            facts = {} if metadata is None else dict(metadata[i])
            self._pending.append((row, title, facts))

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def _get_logger(self, args: Any) -> TrajectoryLogger:
        if self._logger is None:
            output_dir = self.output_dir or os.path.join(args.output_dir, "rendered_trajectories")
            trackers = self.trackers
            if trackers is None:
                report_to = getattr(args, "report_to", None) or []
                report_to = [report_to] if isinstance(report_to, str) else list(report_to)
                if "all" in report_to:
                    report_to = ["tensorboard", "wandb", "trackio"]
                trackers = [t for t in report_to if t in ("tensorboard", "wandb", "trackio")]
            tensorboard_dir = os.environ.get("TENSORBOARD_LOGGING_DIR") or os.path.join(
                args.output_dir, "runs", "rendered_trajectories"
            )
            self._logger = TrajectoryLogger(
                output_dir=output_dir,
                trackers=trackers,
                max_per_step=self.max_per_step,
                max_bytes_per_step=self.max_bytes_per_step,
                max_bytes_per_item=self.max_bytes_per_item,
                png_width=self.png_width,
                tensorboard_dir=tensorboard_dir,
            )
        return self._logger

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not self._pending:
            return
        pending = list(self._pending)
        self._pending.clear()
        if not state.is_world_process_zero:
            return
        processing_class = self.processing_class or kwargs.get("processing_class")
        if self.image_vocabulary is None:
            model = kwargs.get("model")
            if model is None:
                raise ValueError("RenderedTrajectoriesCallback needs `image_vocabulary=` or a trainer model.")
            self.image_vocabulary = ImageVocabulary.from_model(model, processing_class)
        if self.decoder is None:
            self.decoder = FalseColorDecoder(self.image_vocabulary)
        rendered = render_trajectories(
            [row for row, _, _ in pending],
            processing_class,
            self.image_vocabulary,
            self.decoder,
            titles=[title for _, title, _ in pending],
            metadata=[{"step": state.global_step, **facts} for _, _, facts in pending],
        )
        self.last_report = self._get_logger(args).log(rendered, step=state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._logger is not None:
            self._logger.close()
