"""Command modules of the `trl-omni` console script: each exposes `make_parser(prog=None)` and `main(...)`."""
