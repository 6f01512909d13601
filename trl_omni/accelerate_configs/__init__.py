"""Accelerate presets shipped with trl-omni, usable as `trl-omni sft --accelerate_config NAME` (NAME without `.yaml`)."""
