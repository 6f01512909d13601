"""Scripts behind the `trl-omni` subcommands: each module exposes `make_parser(prog=None)` and `main(...)`."""
