"""collators of trl-omni."""
