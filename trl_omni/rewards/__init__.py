"""rewards of trl-omni."""
