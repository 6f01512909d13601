"""`trl-omni bootstrap`: Omni-R1-Zero interleaved trajectories from a text-only chain-of-thought dataset.

Usage:
    python -m trl_omni.scripts.bootstrap --model_name_or_path leloy/Anole-7b-v0.1-hf \
        --dataset_name m3cot_train.parquet --output_dir m3cot-zero --quality_threshold 0.5
    python -m trl_omni.scripts.bootstrap --config bootstrap.yaml

Killed at any moment, the same command continues where it stopped (see docs/bootstrap.md).
"""

from __future__ import annotations

import logging
import sys

from trl import TrlParser

from trl_omni.cli.launch import config_parser
from trl_omni.data.bootstrap import BootstrapConfig, run_bootstrap
from trl_omni.data.bootstrap.writer import no_rows_reason


def make_parser(prog: str | None = None) -> TrlParser:
    """The argument parser of `trl-omni bootstrap` (every [`BootstrapConfig`] field, plus `--config file.yaml`)."""
    return config_parser(BootstrapConfig, __doc__, prog=prog)


def main(config: BootstrapConfig | None = None) -> dict:
    """Runs (or resumes) a bootstrap; parses `sys.argv` when no config is given. Returns the manifest."""
    if config is None:
        (config,) = make_parser().parse_args_and_config()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("trl_omni").setLevel(logging.INFO)
    manifest = run_bootstrap(config)
    counts = manifest["counts"]
    print(
        f"Wrote {counts['rows_written']} rows ({counts['images_kept']} images) to {config.output_dir} in "
        f"{len(manifest['shards'])} shards; load with trl_omni.data.bootstrap.load_bootstrapped({config.output_dir!r}).",
        file=sys.stderr,
    )
    if counts["samples_dropped"]:
        print(
            f"Left out {counts['samples_dropped']} of {counts['input_rows']} input rows: "
            f"{no_rows_reason(counts, manifest['arguments']).split(', ', 1)[1]} (counts in manifest.json).",
            file=sys.stderr,
        )
    return manifest


if __name__ == "__main__":
    from trl_omni.cli.launch import run_script

    raise SystemExit(run_script(make_parser, main, "trl-omni bootstrap"))
