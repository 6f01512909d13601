"""The `trl-omni` command line (`trl-omni sft|rl|eval|bootstrap|demo`)."""

from .launch import (
    CLIArgumentError,
    list_accelerate_presets,
    parse_script_args,
    resolve_accelerate_config,
)
from .main import BUILTIN_COMMANDS, CommandSpec, get_commands, main


__all__ = [
    "BUILTIN_COMMANDS",
    "CLIArgumentError",
    "CommandSpec",
    "get_commands",
    "list_accelerate_presets",
    "main",
    "parse_script_args",
    "resolve_accelerate_config",
]
