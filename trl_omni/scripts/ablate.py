"""`trl-omni ablate`: the paper's claims tested on the Uni-Skills suite with the demo model, several seeds per arm.

Arms: untrained; SFT (PeSFT with lambda 0); PeSFT; PeSFT + PeRPO (calibrated reward); PeSFT + PeRPO (calibrated +
ReferenceImageReward); Omni-R1-Zero (text-only chains of thought bootstrapped by a generic-drawing base model, then
PeSFT and PeRPO). Every arm starts from the same base model with the same step budget per stage. Prints progress,
per-skill tables (mean +- std over seeds) and a paired comparison per claim; writes `results.json` and `report.html`
to `--output_dir`. See docs/ablation.md.

    trl-omni ablate --output_dir ablation
    trl-omni ablate --seeds 0 1 2 3 4 --sft_steps 320 --arms sft pesft
"""

from __future__ import annotations

from typing import Any


def make_parser(prog: str | None = None):
    """The `trl-omni ablate` argument parser (a `TrlParser` over [`AblationConfig`], so `--config x.yaml` works)."""
    from trl_omni.cli.launch import config_parser
    from trl_omni.demo.ablation import AblationConfig

    return config_parser(AblationConfig, __doc__, prog=prog)


def main(config: Any) -> dict[str, Any]:
    """Entry point of `trl-omni ablate`: runs [`~trl_omni.demo.ablation.run_ablation`]."""
    from trl_omni.demo.ablation import run_ablation

    return run_ablation(config)


if __name__ == "__main__":
    from trl_omni.cli.launch import run_script

    raise SystemExit(run_script(make_parser, main, "trl-omni ablate"))
