"""Defaults shared by [`PeSFTConfig`] and [`PeRPOConfig`] that depend on the installed transformers.

Activation checkpointing is on by default (as in TRL), set by the name the installed transformers reads:
transformers 5.24 renamed `gradient_checkpointing` to `activation_checkpointing` and warns whenever the old name is
set, which TRL's own default does. Our configs leave the old name unset and turn the new one on, so a run with our
defaults prints no deprecation warning; a user who sets `gradient_checkpointing` still gets transformers' behaviour
(and its warning).
"""

from __future__ import annotations

from dataclasses import field, fields
from typing import Any

from transformers import TrainingArguments


HAS_ACTIVATION_CHECKPOINTING = "activation_checkpointing" in {f.name for f in fields(TrainingArguments)}


def gradient_checkpointing_field() -> Any:
    """The `gradient_checkpointing` field of our configs: unset by default (see the module docstring)."""
    return field(
        default=None,
        metadata={
            "help": "Trade compute for memory by recomputing activations in the backward pass. On by default; with "
            "transformers >= 5.24 set `activation_checkpointing` instead (this name is its deprecated alias there)."
        },
    )


def set_activation_checkpointing_default(config: Any) -> None:
    """Turns activation checkpointing on when neither name was set; call before `TrainingArguments.__post_init__`."""
    if config.gradient_checkpointing is not None or getattr(config, "activation_checkpointing", None) is not None:
        return
    if HAS_ACTIVATION_CHECKPOINTING:
        config.activation_checkpointing = True
    else:
        config.gradient_checkpointing = True
