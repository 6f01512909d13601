"""The options and help text of each `trl-omni` command, cached on disk so that `trl-omni COMMAND --help` and the check
of misspelled flags and config keys need neither torch nor transformers nor TRL.

A command's parser is built from dataclasses that subclass `transformers.TrainingArguments` (through TRL), and
importing those costs seconds. The first time a command is used in an environment, its parser is built once and what
the dispatcher needs from it (the help text, the option strings, the config keys) is written to
`<cache>/cli/<environment key>.json`. The key covers the Python version, the installed TRL / transformers /
accelerate (their files' sizes and modification times) and every source file of trl-omni, so an upgrade or an edit
rebuilds it. The cache is `$TRL_OMNI_CACHE`, else `$XDG_CACHE_HOME/trl_omni`, else `~/.cache/trl_omni`; when it is not
writable the parser is simply built every time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


CACHE_ENV = "TRL_OMNI_CACHE"
_FORMAT_VERSION = 1
# Installed packages whose classes make up the commands' options.
_UPSTREAM_PACKAGES = ("trl", "transformers", "accelerate")


@dataclass(frozen=True)
class CommandOptions:
    """What the dispatcher knows about one command without importing it.

    Attributes:
        help: The `--help` text of the command's parser.
        options: Option string -> whether it takes a value, for every option of the command's parser.
        config_keys: Keys a `--config` YAML may set (the parser's destinations).
        launch_options: `accelerate launch` options (and `--accelerate_config`) -> whether they take a value; they
            are accepted next to the command's own options.
        classes: Names of the configuration classes of the parser (for error messages).
        allow_abbrev: Whether the parser accepts unambiguous prefixes of its long options.
    """

    help: str
    options: dict[str, bool]
    config_keys: list[str]
    launch_options: dict[str, bool]
    classes: list[str]
    allow_abbrev: bool

    def is_known_flag(self, flag: str) -> bool:
        """Whether `--flag` (or `--flag=value`) is accepted: an option, a launch option or an option's prefix."""
        name = flag.split("=", 1)[0]
        if name in self.options or name in self.launch_options:
            return True
        # argparse resolves an unambiguous prefix, and reports an ambiguous one itself.
        return self.allow_abbrev and any(option.startswith(name) for option in self.options if option.startswith("--"))

    def is_known_config_key(self, key: str) -> bool:
        """Whether a `--config` YAML key is accepted: a field of the command or an `accelerate launch` option."""
        return key in self.config_keys or f"--{key}" in self.launch_options


def cache_dir() -> Path:
    """Directory of trl-omni's caches: `$TRL_OMNI_CACHE`, else `$XDG_CACHE_HOME/trl_omni`, else `~/.cache/trl_omni`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trl_omni"


def environment_key() -> str:
    """A hash of what decides the commands' options: Python, the upstream packages and trl-omni's own sources.

    Only file sizes and modification times are read (no import), so it costs a few milliseconds.
    """
    entries: list[Any] = [_FORMAT_VERSION, sys.version]
    for package in _UPSTREAM_PACKAGES:
        spec = importlib.util.find_spec(package)
        origin = getattr(spec, "origin", None)
        entries.append([package, _stat(origin) if origin else None])
    root = Path(__file__).resolve().parents[1]
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".yaml")):
                path = os.path.join(directory, name)
                entries.append([os.path.relpath(path, root), _stat(path)])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:20]


def _stat(path: str) -> list[int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return [status.st_size, status.st_mtime_ns]


def command_options(command: Any) -> CommandOptions:
    """The [`CommandOptions`] of a `trl-omni` command (a `CommandSpec`), from the cache or built and cached.

    Building imports the command's module and its configuration classes (seconds); a cached entry is read in
    milliseconds.
    """
    path = cache_dir() / "cli" / f"{environment_key()}.json"
    cached = _read(path)
    if command.name not in cached:
        cached[command.name] = asdict(_build(command))
        _write(path, cached)
    return CommandOptions(**cached[command.name])


def _build(command: Any) -> CommandOptions:
    import importlib

    from .launch import accelerate_launch_options

    module = importlib.import_module(command.module)
    parser = module.make_parser(prog=f"trl-omni {command.name}")
    options = {option: action.nargs != 0 for action in parser._actions for option in action.option_strings}
    config_keys = sorted({action.dest for action in parser._actions if action.option_strings})
    classes = [getattr(t, "__name__", str(t)) for t in getattr(parser, "dataclass_types", ())]
    return CommandOptions(
        help=parser.format_help(),
        options=options,
        config_keys=config_keys,
        launch_options=dict(accelerate_launch_options()),
        classes=classes,
        allow_abbrev=bool(getattr(parser, "allow_abbrev", True)),
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write(path: Path, data: dict[str, Any]) -> None:
    """Writes atomically; a cache that cannot be written is not an error (the parser is built again next time)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        temporary.write_text(json.dumps(data), encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        pass
