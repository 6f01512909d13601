"""Argument plumbing shared by the dispatcher and the scripts: accelerate presets, launch, strict parsing."""

from __future__ import annotations

import difflib
import importlib.resources as resources
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any


PRESETS_PACKAGE = "trl_omni.accelerate_configs"
ACCELERATE_CONFIG_FLAG = "--accelerate_config"
# Any of these in the environment means an `accelerate launch` / `torchrun` already started this process.
_LAUNCHED_ENV_KEYS = ("LOCAL_RANK", "ACCELERATE_DYNAMO_BACKEND")
NO_LAUNCH_ENV = "TRL_OMNI_NO_LAUNCH"


class CLIArgumentError(ValueError):
    """A command-line or config-file problem the user must fix (unknown key, unknown preset, ...)."""


def list_accelerate_presets() -> list[str]:
    """Names of the accelerate presets shipped in `trl_omni/accelerate_configs/` (without `.yaml`)."""
    folder = resources.files(PRESETS_PACKAGE)
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def resolve_accelerate_config(name_or_path: str) -> str:
    """Path of an accelerate config given as an existing file or as the name of a shipped preset.

    Example:
        ```python
        >>> resolve_accelerate_config("zero3")  # .../trl_omni/accelerate_configs/zero3.yaml
        ```
    """
    if Path(name_or_path).is_file():
        return str(name_or_path)
    name = name_or_path[: -len(".yaml")] if name_or_path.endswith(".yaml") else name_or_path
    candidate = resources.files(PRESETS_PACKAGE).joinpath(f"{name}.yaml")
    if not candidate.is_file():
        raise CLIArgumentError(
            f"--accelerate_config {name_or_path!r} is neither an existing file nor a preset shipped with trl-omni "
            f"(presets: {', '.join(list_accelerate_presets())}). Give a preset name or the path of an accelerate "
            "config file."
        )
    return str(candidate)


def resolve_accelerate_config_argument(launch_args: list[str]) -> list[str]:
    """Replaces `--accelerate_config NAME|PATH` in `launch_args` by `--config_file <resolved path>`."""
    if ACCELERATE_CONFIG_FLAG not in launch_args:
        return list(launch_args)
    index = launch_args.index(ACCELERATE_CONFIG_FLAG)
    if index + 1 >= len(launch_args) or launch_args[index + 1].startswith("--"):
        raise CLIArgumentError(
            f"{ACCELERATE_CONFIG_FLAG} needs a value: a preset name ({', '.join(list_accelerate_presets())}) or a file."
        )
    path = resolve_accelerate_config(launch_args[index + 1])
    return ["--config_file", path] + launch_args[:index] + launch_args[index + 2 :]


@cache
def accelerate_launch_options() -> dict[str, bool]:
    """`accelerate launch` option strings -> whether the option takes a value."""
    from accelerate.commands.launch import launch_command_parser

    options: dict[str, bool] = {}
    for action in launch_command_parser()._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                options[option] = action.nargs != 0
    options[ACCELERATE_CONFIG_FLAG] = True
    return options


def split_launch_args(remaining: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits argument strings the script parser did not consume into (`accelerate launch` args, unknown flags).

    Config-file values arrive as `--key value` pairs, also for accelerate's on/off flags (`--multi_gpu True`): such a
    flag is kept bare when true and dropped when false.
    """
    options = accelerate_launch_options()
    launch: list[str] = []
    unknown: list[str] = []
    i = 0
    while i < len(remaining):
        token = remaining[i]
        name = token.split("=", 1)[0]
        following = remaining[i + 1] if i + 1 < len(remaining) else None
        if name in options and options[name]:
            launch.append(token)
            if "=" not in token and following is not None:
                launch.append(following)
                i += 1
        elif name in options:
            keep = True
            if following is not None and following.lower() in ("true", "false"):
                keep = following.lower() == "true"
                i += 1
            if keep:
                launch.append(name)
        else:
            unknown.append(name)
            # Skip the value of an unknown "--key value" pair so it is not reported as a second unknown.
            if name.startswith("-") and "=" not in token and following is not None and not following.startswith("-"):
                i += 1
        i += 1
    return launch, unknown


def unknown_arguments_error(
    unknown: Sequence[str], parser: Any, prog: str, config_path: str | None, from_config: Sequence[str] = ()
) -> CLIArgumentError:
    """A [`CLIArgumentError`] naming unknown flags / config keys, where they came from and the closest valid names."""
    options = {o for action in parser._actions for o in action.option_strings} | set(accelerate_launch_options())
    classes = [getattr(t, "__name__", str(t)) for t in getattr(parser, "dataclass_types", ())]
    return unknown_options_error(unknown, options, classes, prog, config_path, from_config)


def unknown_options_error(
    unknown: Sequence[str],
    options: Iterable[str],
    classes: Sequence[str],
    prog: str,
    config_path: str | None,
    from_config: Sequence[str] = (),
) -> CLIArgumentError:
    """[`unknown_arguments_error`] from the valid option strings and the names of the configuration classes."""
    # Underscore spellings only (argparse also registers the dashed aliases of every field).
    valid = sorted(option for option in set(options) if option.startswith("--") and "-" not in option[2:])
    lines = []
    for flag in unknown:
        origin = f"key {flag.lstrip('-')!r} of {config_path}" if config_path and flag in from_config else f"{flag!r}"
        close = difflib.get_close_matches(flag if flag.startswith("--") else f"--{flag}", valid, n=3, cutoff=0.75)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        lines.append(f"  - {origin}{hint}")
    return CLIArgumentError(
        f"{prog}: unknown argument(s):\n" + "\n".join(lines) + f"\nThey are neither fields of {', '.join(classes)} "
        f"nor `accelerate launch` options. Fix the name(s) or remove them; `{prog} --help` lists every option."
    )


def check_option_values(parser: Any, namespace: Any, prog: str) -> None:
    """Checks option values that argparse leaves unchecked because they came from the `--config` YAML (argparse
    validates only command-line strings): a value outside an option's choices, or a non-number for a number.

    Raises:
        CLIArgumentError: naming the option, the value found and the allowed values.
    """
    problems = []
    for action in parser._actions:
        if not action.option_strings or action.dest not in vars(namespace):
            continue
        value = getattr(namespace, action.dest)
        takes_list = action.nargs not in (None, 0, "?")
        if takes_list and value is not None and not isinstance(value, list | tuple):
            problems.append(f"  - {action.dest}: {value!r} is a single value; this option takes a list (YAML: "
                            f"`{action.dest}: [{value}]`)")  # fmt: skip
            continue
        values = value if takes_list and value is not None else [value]
        for item in values:
            if item is None:
                continue
            if action.choices is not None and item not in action.choices:
                problems.append(f"  - {action.dest}: {item!r} is not one of {list(action.choices)}")
            elif action.type in (int, float) and (isinstance(item, bool) or not isinstance(item, int | float)):
                problems.append(f"  - {action.dest}: {item!r} is not a number ({action.type.__name__} expected)")
            elif action.type is int and isinstance(item, float) and not item.is_integer():
                problems.append(f"  - {action.dest}: {item!r} is not an integer")
    if problems:
        raise CLIArgumentError(
            f"{prog}: invalid option value(s):\n" + "\n".join(problems) + "\nFix them in the --config file or on "
            "the command line."
        )


def parse_script_args(parser: Any, args: Sequence[str] | None = None, prog: str | None = None) -> tuple:
    """Parses a script's command line (and `--config` YAML) into its dataclasses, strictly.

    `accelerate launch` options (and `--accelerate_config`) are tolerated, since one YAML may hold both the training
    and the launch settings; any other unknown flag or config key raises a [`CLIArgumentError`] naming it.
    """
    args = list(sys.argv[1:] if args is None else args)
    config_path = args[args.index("--config") + 1] if "--config" in args[:-1] else None
    *dataclasses, config_remaining, cli_remaining = parser.parse_args_and_config(
        args, return_remaining_strings=True, separate_remaining_strings=True
    )
    _, unknown_config = split_launch_args(config_remaining)
    _, unknown_cli = split_launch_args(cli_remaining)
    if unknown_config or unknown_cli:
        raise unknown_arguments_error(
            unknown_config + unknown_cli, parser, prog or parser.prog, config_path, from_config=unknown_config
        )
    return tuple(dataclasses)


def config_parser(config_class: type, doc: str, prog: str | None = None) -> Any:
    """The `TrlParser` of a command configured by one dataclass (`trl-omni bootstrap`, `demo`, `ablate`): a flag per
    field, `--config file.yaml`, and the first line of the command module's docstring as description.

    Args:
        config_class: The command's configuration dataclass.
        doc: The command module's `__doc__`.
        prog: Program name shown in usage and errors (`trl-omni <command>`).
    """
    from trl import TrlParser

    return TrlParser((config_class,), prog=prog, description=doc.splitlines()[0])


def run_script(
    make_parser: Callable[..., Any], main: Callable[..., Any], prog: str, args: Sequence[str] | None = None
) -> int:
    """Runs a `trl_omni/scripts/` command in this process, as `trl-omni <command>` and `python -m
    trl_omni.scripts.<command>` both do: parses its arguments with [`parse_script_args`] (strict; a plain `argparse`
    parser of a third-party script parses as usual), then calls `main` with the parsed dataclasses.

    Args:
        make_parser: The command module's `make_parser(prog=None)`.
        main: The command module's `main(*dataclasses)`.
        prog: Program name shown in usage and errors (`trl-omni <command>`).
        args: Argument strings; None reads `sys.argv[1:]`.

    Returns:
        The exit status: what `main` returned when it is an int, else 0 (`demo` and `ablate` return their results).
    """
    parser = make_parser(prog=prog)
    if hasattr(parser, "parse_args_and_config"):
        parsed = parse_script_args(parser, args, prog=prog)
    else:
        parsed = (parser.parse_args(args),)
    result = main(*parsed)
    return result if isinstance(result, int) else 0


def already_launched() -> bool:
    """Whether this process was started by `accelerate launch` / `torchrun` (so it must not launch again)."""
    if os.environ.get(NO_LAUNCH_ENV, "").lower() in ("1", "true", "yes"):
        return True
    return any(key in os.environ for key in _LAUNCHED_ENV_KEYS)


def launch_module(module: str, launch_args: Sequence[str], script_args: Sequence[str]) -> int:
    """Runs `accelerate launch <launch_args> -m <module> <script_args>` and returns its exit status."""
    import subprocess

    from accelerate.commands.launch import launch_command, launch_command_parser

    launch_args = list(launch_args)
    if "--quiet" not in launch_args and "-q" not in launch_args:
        # Without --quiet accelerate turns a failed run into a CalledProcessError traceback hiding the real error.
        launch_args.append("--quiet")
    namespace = launch_command_parser().parse_args([*launch_args, "--module", module, *script_args])
    _set_launch_defaults(namespace)
    try:
        launch_command(namespace)
    except subprocess.CalledProcessError as error:
        return error.returncode or 1
    except SystemExit as error:
        return error.code if isinstance(error.code, int) else 1
    except Exception as error:  # torch.distributed's ChildFailedError: the ranks already printed their traceback
        print(f"trl-omni: the launched run failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


def _set_launch_defaults(namespace: Any) -> None:
    """Gives `accelerate launch` explicit values where it would pick defaults itself and print a block about them.

    Without an accelerate config file, accelerate fills in the number of processes (the GPU count: 0 on a CPU
    machine), machines, mixed precision and dynamo backend, and warns about each one. The values set here are the
    ones it would choose (one process per GPU, DDP when there are several; one process without a GPU; one machine; no
    launcher-level mixed precision, which the training arguments set themselves; no dynamo), so runs are unchanged
    and quiet. Values the user gave, and runs that use a config file (`--accelerate_config`, `--config_file` or
    `accelerate config`'s default file), are left alone.
    """
    import torch
    from accelerate.commands.config import default_config_file

    if namespace.config_file is not None or (os.path.isfile(default_config_file) and not namespace.cpu):
        return
    distributed = any(
        getattr(namespace, name, False) for name in ("multi_gpu", "cpu", "tpu", "use_deepspeed", "use_fsdp")
    )
    devices = torch.accelerator.device_count() if torch.accelerator.is_available() else 0
    if namespace.num_processes is None:
        namespace.num_processes = 1 if namespace.cpu else max(devices, 1)
    if not distributed and namespace.num_processes > 1 and devices > 1:
        namespace.multi_gpu = True  # what accelerate does itself, with a warning
    for name, value in (("num_machines", 1), ("mixed_precision", "no"), ("dynamo_backend", "no")):
        if getattr(namespace, name, None) is None:
            setattr(namespace, name, value)
