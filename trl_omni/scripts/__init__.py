"""Command-line entry points of trl-omni (`trl-omni <name>` runs `trl_omni.scripts.<name>`)."""
