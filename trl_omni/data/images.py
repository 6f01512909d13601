"""Reading the images of interleaved parts: PIL images, files confined to a root, raw bytes, base64."""

from __future__ import annotations

import base64 as b64
import binascii
import io
import os
from collections.abc import Mapping
from typing import Any

from .schema import InterleavedDataError


def resolve_image_path(path: str | os.PathLike, image_root: str | os.PathLike | None, row: Any, field: str) -> str:
    """Resolves `path` under `image_root`, refusing anything that escapes it.

    Relative paths are joined to the root; `..` components and absolute paths are accepted only when the resolved
    file (symbolic links followed) still lies inside the root.

    Raises:
        InterleavedDataError: no root configured, or the path leaves the root.
    """
    if image_root is None:
        raise InterleavedDataError(
            row,
            field,
            f"the image is a file path ({str(path)!r}) but no image root is configured.",
            "pass `image_root=` (the directory that holds the dataset's images); file reads are confined to it.",
        )
    root = os.path.realpath(image_root)
    candidate = os.path.realpath(os.path.join(root, os.fspath(path)))
    if os.path.commonpath([root, candidate]) != root:
        raise InterleavedDataError(
            row,
            field,
            f"the path {str(path)!r} resolves to {candidate!r}, outside the image root {root!r}.",
            "store image paths relative to the image root, without '..' or absolute paths leading outside it.",
        )
    return candidate


def _decode_bytes(data: bytes, row: Any, field: str):
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now, so a truncated / corrupt file fails here with the row named
    except Image.DecompressionBombError as error:
        raise InterleavedDataError(
            row,
            field,
            f"the image is too large to decode safely ({error}).",
            "downscale the image, or raise `PIL.Image.MAX_IMAGE_PIXELS` if the source is trusted.",
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise InterleavedDataError(
            row,
            field,
            f"the image bytes cannot be decoded ({type(error).__name__}: {error}).",
            "replace the image with a valid PNG/JPEG/WebP file, or drop the row (on_error='skip').",
        ) from error
    return image


def load_image(part: Mapping[str, Any], image_root: str | os.PathLike | None, row: Any, field: str):
    """Returns the PIL image of an image part that holds no codes.

    Args:
        part: A normalized image part (see [`image_part`]).
        image_root: Directory that confines `path` reads.
        row: Row index or id, for error messages.
        field: Field path of the part, for error messages (e.g. `"prompt[0]"`).

    Raises:
        InterleavedDataError: the image is missing, undecodable, or its path escapes the root.
    """
    from PIL import Image

    image = part.get("image")
    if image is not None:
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, Mapping):  # `datasets` Image storage: {"bytes": ..., "path": ...}
            if image.get("bytes") is not None:
                return _decode_bytes(image["bytes"], row, f"{field}.image")
            if image.get("path"):
                return load_image({"path": image["path"]}, image_root, row, f"{field}.image")
        raise InterleavedDataError(
            row, f"{field}.image", f"unsupported image value of type {type(image).__name__}.", "give a PIL image."
        )
    data = part.get("bytes")
    if data is not None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InterleavedDataError(
                row, f"{field}.bytes", f"`bytes` must hold the image file's bytes, got {type(data).__name__}.",
                "store the encoded file (PNG / JPEG ...) as bytes, or use `base64` for text.",
            )  # fmt: skip
        return _decode_bytes(bytes(data), row, f"{field}.bytes")
    text = part.get("base64")
    if text is not None:
        if not isinstance(text, str):
            raise InterleavedDataError(
                row, f"{field}.base64", f"`base64` must be a string, got {type(text).__name__}.",
                "store the base64 text of the image file (raw bytes go in `bytes`).",
            )  # fmt: skip
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            data = b64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as error:
            raise InterleavedDataError(
                row, f"{field}.base64", f"invalid base64 ({error}).", "store the base64 of the image file's bytes."
            ) from error
        return _decode_bytes(data, row, f"{field}.base64")
    path = part.get("path")
    if path is not None:
        if not isinstance(path, str | os.PathLike):
            raise InterleavedDataError(
                row, f"{field}.path", f"`path` must be a string, got {type(path).__name__}.",
                "store the image file's path relative to the image root as a string.",
            )  # fmt: skip
        resolved = resolve_image_path(path, image_root, row, f"{field}.path")
        try:
            with open(resolved, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise InterleavedDataError(
                row, f"{field}.path", f"cannot read {resolved!r} ({error}).", "check the file exists under the root."
            ) from error
        return _decode_bytes(data, row, f"{field}.path")
    raise InterleavedDataError(row, field, "the image part has no image source.", "set image/bytes/base64/path/codes.")
