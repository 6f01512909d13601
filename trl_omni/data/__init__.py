"""data of trl-omni."""
