"""Collators of trl-omni: interleaved text/image rows -> causal-LM batches."""

from .interleaved import DEFAULT_INSTRUCTION, DEFAULT_LEAD_PHRASES, DEFAULT_SYSTEM_PROMPT, InterleavedDataCollator


__all__ = ["DEFAULT_INSTRUCTION", "DEFAULT_LEAD_PHRASES", "DEFAULT_SYSTEM_PROMPT", "InterleavedDataCollator"]
