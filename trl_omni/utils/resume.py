"""Resumable output directories: a manifest records what decides a run's output, a later run with the same identity
continues it, and one with another identity is refused with the names of the fields that differ (evaluation and
bootstrapping both write through this; a resume never mixes two runs).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ResumeMismatchError(ValueError):
    """The output directory holds a run made with other arguments, another model or other data."""


@dataclass
class ResumableRun:
    """An output directory opened by [`open_resumable_run`]: its manifest (`data`) and whether it continues a run.

    Attributes:
        output_dir: The directory.
        manifest_path: Its manifest file.
        data: The manifest's content (the identity sections plus whatever the caller keeps there); `save()` writes it.
        resumed: True when an earlier run with the same identity was found (its outputs are to be continued).
    """

    output_dir: Path
    manifest_path: Path
    data: dict[str, Any]
    resumed: bool

    def save(self) -> None:
        """Writes the manifest atomically (a kill leaves the previous or the new version, never half of one)."""
        write_json_atomic(self.manifest_path, self.data)


def open_resumable_run(
    output_dir: str | os.PathLike,
    *,
    manifest_name: str,
    identity: Mapping[str, Mapping[str, Any]],
    what: str,
    outputs: Sequence[str] = (),
    exclusive: bool = False,
    overwrite: bool = False,
    initial: Mapping[str, Any] | None = None,
    error_class: type[ResumeMismatchError] = ResumeMismatchError,
) -> ResumableRun:
    """Opens `output_dir` for a run: starts it, or continues an earlier run with the same identity, or refuses.

    The manifest stores each identity section under its name (e.g. `{"arguments": {...}, "identity": {...}}`). On
    resume, every field of every section is compared (nested mappings field by field, named `outer.inner`): any
    difference raises `error_class` naming each field with its old and new value, and the ways out.

    Args:
        output_dir: The run's directory (created when missing).
        manifest_name: File name of the manifest inside it.
        identity: Section name -> the fields that decide the output (JSON data: arguments, model / data fingerprints).
        what: What the run is, for messages (e.g. `"an evaluation"`, `"a bootstrap output"`).
        outputs: Glob patterns (relative to `output_dir`) of the files the run writes. `overwrite` deletes them; found
            without a manifest they are refused, since the arguments that made them are unknown.
        exclusive: Also refuse, without a manifest, a directory holding anything else (the run owns the directory).
        overwrite: Delete the manifest and the `outputs` first and start again.
        initial: Further manifest fields of a new run (e.g. progress counters); kept as saved on resume.
        error_class: The exception raised on a mismatch (a subclass of [`ResumeMismatchError`]).

    Returns:
        The [`ResumableRun`]; `resumed` tells whether the caller continues from the outputs already there.

    Example:
        ```python
        >>> run = open_resumable_run("out", manifest_name="manifest.json", what="an evaluation",
        ...                          identity={"arguments": {"seed": 0}}, outputs=["predictions.jsonl"])
        >>> run.data["done"] = run.data.get("done", 0) + 1
        >>> run.save()
        ```
    """
    out = Path(output_dir)
    manifest_path = out / manifest_name
    identity = json.loads(json.dumps(identity, sort_keys=True, default=str))  # compared as stored: JSON data
    if overwrite:
        manifest_path.unlink(missing_ok=True)
        for path in _matching(out, outputs):
            path.unlink()
    if manifest_path.exists():
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
        differences = differing_fields({name: data.get(name) for name in identity}, identity)
        if differences:
            details = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in differences)
            raise error_class(
                f"{out} holds {what} made with different arguments ({details}). Refusing to mix them: pass "
                "--overwrite (`overwrite=True`) to discard it, rerun with the same arguments to resume, or choose "
                "another --output_dir."
            )
        return ResumableRun(out, manifest_path, data, resumed=True)
    found = sorted({str(path.relative_to(out)) for path in _matching(out, outputs)})
    foreign = sorted(_foreign_entries(out, outputs)) if exclusive else []
    if found or foreign:
        raise error_class(
            f"{out} has no {manifest_name}, so it is not {what} (or the arguments that made it are unknown), but it "
            f"holds {', '.join((found + foreign)[:5])}{' ...' if len(found + foreign) > 5 else ''}. Pass --overwrite "
            "(`overwrite=True`) to discard the outputs of an earlier run, or choose an empty or new --output_dir."
        )
    out.mkdir(parents=True, exist_ok=True)
    run = ResumableRun(out, manifest_path, {**identity, **(initial or {})}, resumed=False)
    run.save()
    return run


def differing_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """`(name, old value, new value)` of every field that differs between two identities (section -> fields).

    Section names are left out of the field names; nested mappings are compared field by field (`model.weights`).

    Example:
        ```python
        >>> differing_fields({"arguments": {"seed": 1}}, {"arguments": {"seed": 2}})
        [('seed', 1, 2)]
        ```
    """
    differences = []
    for section in sorted(set(old) | set(new)):
        before, after = old.get(section), new.get(section)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            differences += _differing(before, after, "")
        elif before != after:
            differences.append((section, before, after))
    return differences


def _differing(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str) -> list[tuple[str, Any, Any]]:
    differences = []
    for key in sorted(set(old) | set(new), key=str):
        before, after = old.get(key), new.get(key)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            differences += _differing(before, after, f"{prefix}{key}.")
        elif before != after:
            differences.append((f"{prefix}{key}", before, after))
    return differences


def write_json_atomic(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    """Writes JSON to `path` through a temporary file and a rename, fsynced."""
    path = Path(path)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _matching(out: Path, patterns: Sequence[str]) -> list[Path]:
    if not out.is_dir():
        return []
    return [path for pattern in patterns for path in out.glob(pattern) if path.is_file()]


def _foreign_entries(out: Path, patterns: Sequence[str]) -> list[str]:
    """Entries of `out` that are neither outputs nor (empty) directories the outputs live in."""
    if not out.is_dir():
        return []
    owned = {Path(pattern).parts[0] for pattern in patterns}
    foreign = []
    for entry in out.iterdir():
        if entry.name in owned and entry.is_dir():
            outputs = set(_matching(out, patterns))
            foreign += [str(p.relative_to(out)) for p in entry.rglob("*") if p.is_file() and p not in outputs]
        elif entry.name not in owned:
            foreign.append(entry.name)
    return foreign
