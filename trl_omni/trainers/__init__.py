"""trainers of trl-omni."""
