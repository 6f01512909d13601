"""`python -m trl_omni.cli ...` is the `trl-omni` console script."""

from .main import main


if __name__ == "__main__":
    raise SystemExit(main())
