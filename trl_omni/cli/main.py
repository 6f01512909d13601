"""The `trl-omni` command line: one subcommand per module of `trl_omni/scripts/` (TRL's CLI design).

Training commands (`sft`, `rl`) are started through `accelerate launch` (optionally with `--accelerate_config
NAME|PATH`, a preset of `trl_omni/accelerate_configs/` or a file); tool commands (`eval`, `bootstrap`, `demo`,
`ablate`) run in this process. A command whose module is not installed is listed as unavailable instead of breaking
`--help`.

Nothing heavy is imported until a command runs: `trl-omni --help`, `trl-omni COMMAND --help` and the check of
misspelled flags and config keys read the command's options from a cache (`trl_omni.cli.options`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass

from .launch import (
    CLIArgumentError,
    already_launched,
    check_option_values,
    launch_module,
    list_accelerate_presets,
    resolve_accelerate_config_argument,
    run_script,
    split_launch_args,
    unknown_arguments_error,
    unknown_options_error,
)


SCRIPTS_PACKAGE = "trl_omni.scripts"


@dataclass(frozen=True)
class CommandSpec:
    """A `trl-omni` subcommand: `name` is the module `trl_omni/scripts/<name>.py`; `training` ones go through
    `accelerate launch`."""

    name: str
    help: str
    training: bool = False

    @property
    def module(self) -> str:
        return f"{SCRIPTS_PACKAGE}.{self.name}"

    @property
    def available(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except ImportError:
            return False


BUILTIN_COMMANDS = (
    CommandSpec("sft", "PeSFT: perception-aligned supervised fine-tuning (Omni-R1 stage 1)", training=True),
    CommandSpec("rl", "PeRPO: perception-calibrated RL with image rollouts (Omni-R1 stage 2)", training=True),
    CommandSpec("eval", "Evaluate a model on Omni-Bench-format or interleaved data (accuracy, JSONL, HTML report)"),
    CommandSpec("bootstrap", "Omni-R1-Zero: bootstrap interleaved drawing traces from text-only data"),
    CommandSpec("demo", "Offline end-to-end demo on the tiny model: PeSFT, PeRPO, evaluation, report"),
    CommandSpec("ablate", "The paper's claims tested on the demo suite: arms x seeds, mean +- std, paired claims"),
)


def get_commands() -> list[CommandSpec]:
    """The built-in commands plus any other public module found in `trl_omni/scripts/` (run in-process)."""
    commands = list(BUILTIN_COMMANDS)
    known = {command.name for command in commands}
    try:
        package = importlib.import_module(SCRIPTS_PACKAGE)
        extra = sorted(
            info.name
            for info in pkgutil.iter_modules(package.__path__)
            if not info.name.startswith("_") and info.name not in known
        )
    except ImportError:
        extra = []
    commands += [CommandSpec(name, f"Run trl_omni/scripts/{name}.py") for name in extra]
    return commands


def _build_parser(commands: list[CommandSpec]) -> argparse.ArgumentParser:
    lines = []
    for command in commands:
        kind = "accelerate launch" if command.training else "in-process"
        status = "" if command.available else f"  [unavailable: {command.module} is not installed]"
        lines.append(f"  {command.name:<10} {command.help} ({kind}){status}")
    epilog = (
        "commands:\n" + "\n".join(lines) + "\n\n"
        "Every command takes --config FILE.yaml and each field of its configuration as a --flag; see\n"
        "`trl-omni COMMAND --help`. Training commands also accept `accelerate launch` options\n"
        f"(--num_processes, --mixed_precision, ...) and --accelerate_config NAME|PATH (presets: "
        f"{', '.join(list_accelerate_presets())}).\n\n"
        "examples:\n"
        "  trl-omni sft --config pesft.yaml\n"
        "  trl-omni rl --config perpo.yaml --accelerate_config zero3\n"
        "  trl-omni eval --model_name_or_path CHECKPOINT --dataset_name omni_bench.parquet --output_dir eval-out"
    )
    parser = argparse.ArgumentParser(
        prog="trl-omni",
        description="Train unified-token multimodal models (Chameleon / Anole) to reason by drawing, on top of TRL.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    # Dispatch is by the first argument (see `main`): each subcommand's own parser handles its arguments and --help.
    parser.add_argument("command", metavar="COMMAND", help="one of: " + ", ".join(c.name for c in commands))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command (see its --help)")
    return parser


def _make_script_parser(module, name: str):
    return module.make_parser(prog=f"trl-omni {name}")


def _run_in_process(module, name: str, args: list[str]) -> int:
    return run_script(module.make_parser, module.main, f"trl-omni {name}", args)


def _run_training(command: CommandSpec, module, args: list[str]) -> int:
    if already_launched():
        # Started by `accelerate launch -m trl_omni.cli ...` or torchrun: this is one rank, run it here.
        return _run_in_process(module, command.name, args)
    prog = f"trl-omni {command.name}"
    parser = _make_script_parser(module, command.name)
    config_path = args[args.index("--config") + 1] if "--config" in args[:-1] else None
    config_remaining, cli_remaining, namespace = _parse_flags(parser, args)
    config_launch, unknown_config = split_launch_args(config_remaining)
    cli_launch, unknown_cli = split_launch_args(cli_remaining)
    if unknown_config or unknown_cli:
        raise unknown_arguments_error(
            unknown_config + unknown_cli, parser, prog, config_path, from_config=unknown_config
        )
    check_option_values(parser, namespace, prog)
    preflight = getattr(module, "preflight", None)
    if preflight is not None:
        # Everything that can be checked without a model or a GPU fails here, before any process is launched.
        try:
            preflight(namespace)
        except (ValueError, OSError, ImportError) as error:
            raise CLIArgumentError(f"{prog}: {error}") from error
    launch_args = resolve_accelerate_config_argument(config_launch + cli_launch)
    script_args = _remove_subsequence(args, cli_remaining)
    return launch_module(command.module, launch_args, script_args)


def _parse_flags(parser, args: list[str]) -> tuple[list[str], list[str], argparse.Namespace]:
    """Checks the flags and config keys of a training command without building its dataclasses.

    Building a `TrainingArguments` sets up devices and, with some settings (e.g. `ddp_backend`), the process group;
    that belongs in the launched ranks, not in the launcher. Returns the strings the parser did not consume, from
    the config file and from the command line (`--help` prints and exits here), and the parsed values.
    """
    import os

    import yaml

    args = list(args)
    config_remaining: list[str] = []
    if "--config" in args:
        index = args.index("--config")
        if index + 1 >= len(args):
            raise CLIArgumentError("--config needs the path of a YAML file.")
        config_path = args.pop(index + 1)
        args.pop(index)
        with open(config_path) as handle:
            config = yaml.safe_load(handle) or {}
        if not isinstance(config, dict):
            raise CLIArgumentError(f"The config file {config_path} must hold a YAML mapping of option: value.")
        # `env:` entries apply to the launched processes too (they inherit this environment).
        for key, value in (config.pop("env", None) or {}).items():
            os.environ[key] = str(value)
        config_remaining = parser.set_defaults_with_config(**config)
    namespace, cli_remaining = parser.parse_known_args(args)
    return config_remaining, cli_remaining, namespace


def _remove_subsequence(items: list[str], subsequence: list[str]) -> list[str]:
    """`items` without the ordered `subsequence` (the launch options the argument parser left over)."""
    pending = iter(subsequence)
    current = next(pending, None)
    kept = []
    for item in items:
        if current is not None and item == current:
            current = next(pending, None)
        else:
            kept.append(item)
    return kept


def _check_before_import(command: CommandSpec, args: list[str]) -> None:
    """Answers `--help` and refuses unknown flags / config keys from the cached options, before the command's module
    (and with it torch, transformers and TRL) is imported.

    Raises:
        SystemExit: after printing the help (status 0), as argparse does.
        CLIArgumentError: naming each unknown flag or key, where it came from and the closest valid option.
    """
    from .options import command_options

    options = command_options(command)
    if "-h" in args or "--help" in args:
        print(options.help, end="")
        raise SystemExit(0)
    config_path = None
    unknown_config: list[str] = []
    if "--config" in args:
        index = args.index("--config")
        if index + 1 >= len(args):
            raise CLIArgumentError("--config needs the path of a YAML file.")
        config_path = args[index + 1]
        unknown_config = [f"--{key}" for key in _config_keys(config_path) if not options.is_known_config_key(key)]
    unknown_cli = [
        token.split("=", 1)[0] for token in args if token.startswith("--") and not options.is_known_flag(token)
    ]
    unknown_cli = [flag for flag in unknown_cli if flag != "--config"]
    if unknown_config or unknown_cli:
        prog = f"trl-omni {command.name}"
        valid = [*options.options, *options.launch_options]
        raise unknown_options_error(
            unknown_config + unknown_cli, valid, options.classes, prog, config_path, from_config=unknown_config
        )


def _config_keys(config_path: str) -> list[str]:
    """Top-level keys of a `--config` YAML (`env:` sets environment variables and is no option)."""
    import yaml

    try:
        with open(config_path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle) or {}
    except OSError as error:
        raise CLIArgumentError(f"--config {config_path}: the file cannot be read ({error.strerror}).") from error
    except yaml.YAMLError as error:
        raise CLIArgumentError(f"--config {config_path} is not valid YAML: {error}") from error
    if not isinstance(config, dict):
        raise CLIArgumentError(f"The config file {config_path} must hold a YAML mapping of option: value.")
    return [str(key) for key in config if key != "env"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `trl-omni` console script.

    Example:
        ```bash
        trl-omni --help
        trl-omni sft --config pesft.yaml --accelerate_config multi_gpu --num_processes 2
        ```
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = get_commands()
    parser = _build_parser(commands)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0].startswith("-"):
        parser.print_usage(sys.stderr)
        print(f"trl-omni: error: expected a command before {argv[0]!r}.", file=sys.stderr)
        return 2
    by_name = {command.name: command for command in commands}
    name, args = argv[0], argv[1:]
    if name not in by_name:
        parser.print_usage(sys.stderr)
        print(
            f"trl-omni: error: unknown command {name!r}; choose one of {', '.join(by_name)}.",
            file=sys.stderr,
        )
        return 2
    command = by_name[name]
    if not command.available:
        print(
            f"trl-omni: the '{name}' command is unavailable in this installation: module {command.module} "
            f"(trl_omni/scripts/{name}.py) is missing. Update trl-omni, or run the matching Python API directly.",
            file=sys.stderr,
        )
        return 2
    try:
        _check_before_import(command, args)
    except CLIArgumentError as error:
        print(f"trl-omni: error: {error}", file=sys.stderr)
        return 2
    module = importlib.import_module(command.module)
    try:
        if command.training:
            return _run_training(command, module, args)
        return _run_in_process(module, name, args)
    except CLIArgumentError as error:
        print(f"trl-omni: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        # Bad data, a bad checkpoint or an output directory of another run is the user's to fix: the message names
        # it; a traceback would only bury it.
        from ..data.schema import DatasetFormatError, InterleavedDataError
        from ..models.loading import CheckpointError
        from ..utils.resume import ResumeMismatchError

        if not isinstance(error, InterleavedDataError | DatasetFormatError | CheckpointError | ResumeMismatchError):
            raise
        print(f"trl-omni {name}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
