"""`trl-omni ablate`: a one-seed, few-step run of every arm (table structure, every arm trained), the statistics of
the paired comparisons, and the Zero recipe's data (generic drawing rows, text-only chains of thought)."""

import json
import math
import os
import re

import numpy as np
import pytest

from trl_omni.data.converters import question_row_to_interleaved
from trl_omni.demo import SKILLS, make_uniskills, row_images
from trl_omni.demo.ablation import ARMS, AblationConfig
from trl_omni.demo.ablation_report import CLAIMS, METRICS, aggregate, compare
from trl_omni.demo.zero import GENERIC_TASKS, check_generic_drawing, make_generic_drawing, text_only_cot


GRID = (6, 6)


# One seed, two steps per stage, a tiny suite.
SMOKE = [
    "--seeds", "3", "--base_steps", "2", "--sft_steps", "2", "--rl_steps", "1", "--num_train", "8", "--num_test", "4",
    "--num_generic", "8", "--hidden_size", "64", "--rl_batch_size", "4", "--num_generations", "2",
    "--num_report_samples", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The whole ablation through the `trl-omni` dispatcher, in this process (worker processes: see below)."""
    from trl_omni.cli import main

    out = tmp_path_factory.mktemp("ablation")
    assert main(["ablate", "--output_dir", str(out), *SMOKE, "--num_workers", "1"]) == 0
    with open(out / "results.json") as handle:
        return out, json.load(handle)


def test_smoke_run_table_and_every_arm_trained(smoke, capsys):
    out, summary = smoke
    expected_arms = list(ARMS)
    assert list(summary["runs"]) == list(summary["table"]) == expected_arms

    # The table: every arm x (each skill, all) x each metric, mean and std over the one seed.
    for arm, rows in summary["table"].items():
        assert list(rows) == [*sorted(SKILLS), "all"]
        for row, metrics in rows.items():
            assert set(metrics) == set(METRICS)
            for metric, entry in metrics.items():
                assert entry["values"] == [summary["runs"][arm]["3"]["metrics"][row][metric]]
                assert entry["mean"] == entry["values"][0] and entry["std"] == 0.0
                assert 0.0 <= entry["mean"] <= 1.0

    # Every arm but the untrained one trained: its own stages (and those it continues from) ran their steps, with
    # finite losses, and moved the parameters.
    steps = {"sft": [2], "pesft": [2], "pesft_perpo": [2, 1], "pesft_perpo_ref": [2, 1], "zero_pesft": [2],
             "zero_pesft_perpo": [2, 1]}  # fmt: skip
    assert summary["runs"]["untrained"]["3"]["stages"] == []
    for arm in expected_arms[1:]:
        stages = [stage for stage in summary["runs"][arm]["3"]["stages"] if "bootstrap" not in stage]
        assert [stage["steps"] for stage in stages] == steps[arm]
        for stage in stages:
            assert stage["losses_finite"] and math.isfinite(stage["last_loss"])
            assert stage["parameter_change"] > 0
    weights = [stage["perception_loss_weight"] for stage in summary["runs"]["sft"]["3"]["stages"]]
    assert weights == [0.0] and summary["runs"]["pesft"]["3"]["stages"][0]["perception_loss_weight"] == 1.0
    # Zero trained on the base model's bootstrapped traces: one drawing per reasoning step (two THOUGHTs).
    (bootstrap,) = [s["bootstrap"] for s in summary["runs"]["zero_pesft"]["3"]["stages"] if "bootstrap" in s]
    assert bootstrap["rows"] == 8 and bootstrap["images_per_row"] == 2.0
    assert summary["base_model"]["steps"] == 2 and summary["base_model"]["parameter_change"] > 0
    assert set(summary["base_model"]["generic_drawing_foreground"]) == {*GENERIC_TASKS, "all"}

    # One comparison per claim, paired by seed.
    assert [item["arm"] for item in summary["comparisons"]] == [claim["arm"] for claim in CLAIMS]
    for item in summary["comparisons"]:
        assert item["differences"] == [pytest.approx(item["arm_mean"] - item["baseline_mean"])]
        assert item["spread"] == 0.0 and item["exceeds_spread"] == (item["difference"] != 0.0)
    assert summary["timing"]["cpu_seconds"] > 0 and summary["max_new_tokens"] > 0

    # report.html: the tables, the claims, two held-out trajectories per arm and two Zero training traces.
    page = (out / "report.html").read_text()
    assert "correct-drawing rate" in page and "Claims (paired by seed)" in page
    for arm in expected_arms:
        assert len(re.findall(rf"(?<!\w){arm}: uniskills-test-", page)) == 2
    assert page.count("Zero training trace (bootstrapped by the base model)") == 2
    assert os.path.isdir(out / "eval" / "seed-3" / "pesft")  # the library evaluation's files per arm


@pytest.mark.slow  # ~20 s: a spawned worker imports torch and TRL
def test_worker_processes_give_the_same_results(smoke, tmp_path):
    """The default path runs each seed's chains of arms in spawned worker processes: an arm trained there (from the
    base model saved by the main process) gives the numbers it gives in the main process."""
    from trl_omni.cli import main

    _, in_process = smoke
    assert main(["ablate", "--output_dir", str(tmp_path), *SMOKE, "--arms", "sft", "--num_workers", "2"]) == 0
    with open(tmp_path / "results.json") as handle:
        in_worker = json.load(handle)
    assert list(in_worker["runs"]) == ["sft"] and in_worker["config"]["num_workers"] == 2
    assert in_worker["runs"]["sft"]["3"]["metrics"] == in_process["runs"]["sft"]["3"]["metrics"]
    (stage,), (expected,) = in_worker["runs"]["sft"]["3"]["stages"], in_process["runs"]["sft"]["3"]["stages"]
    for key in ("steps", "first_loss", "last_loss", "parameter_change"):
        assert stage[key] == pytest.approx(expected[key], rel=1e-5)


def _runs(values):
    """Synthetic runs: arm -> seed -> metrics with every skill equal to `value` (and `all`)."""
    return {
        arm: {
            seed: {"metrics": {row: dict.fromkeys(METRICS, value) for row in [*SKILLS, "all"]}, "stages": []}
            for seed, value in enumerate(per_seed)
        }
        for arm, per_seed in values.items()
    }


def test_aggregate_and_paired_comparisons():
    runs = _runs(
        {
            "sft": [0.10, 0.20, 0.30],
            "pesft": [0.50, 0.60, 0.70],  # +0.4 every seed, spread 0.1: supported
            "pesft_perpo": [0.55, 0.60, 0.70],  # +0.0167 over pesft, within the spread
            "zero_pesft_perpo": [0.10, 0.15, 0.20],  # far below the supervised pipeline
        }
    )
    table = aggregate(runs)
    assert table["pesft"]["all"]["accuracy"]["mean"] == pytest.approx(0.6)
    assert table["pesft"]["zoom"]["drawing_accuracy"]["std"] == pytest.approx(0.1)
    drawing, perpo, zero = compare(runs, CLAIMS)
    assert drawing["differences"] == pytest.approx([0.4, 0.4, 0.4])
    assert drawing["spread"] == pytest.approx(0.1) and drawing["exceeds_spread"]
    assert drawing["verdict"] == "supported"
    assert perpo["difference"] == pytest.approx(0.05 / 3) and not perpo["exceeds_spread"]
    assert perpo["verdict"].startswith("not shown")
    assert zero["difference"] == pytest.approx(-0.4666, abs=1e-3) and zero["verdict"].startswith("contradicted")
    # An arm that did not run is reported as skipped, not compared.
    (skipped,) = compare(runs, [{**CLAIMS[0], "arm": "pesft_perpo_ref"}])
    assert "did not run" in skipped["skipped"]


def test_config_adds_parent_arms_and_rejects_bad_values():
    assert AblationConfig(arms=["pesft_perpo"]).arms == ["pesft", "pesft_perpo"]
    assert AblationConfig(arms=["zero_pesft_perpo", "sft"]).arms == ["sft", "zero_pesft", "zero_pesft_perpo"]
    with pytest.raises(ValueError, match="Unknown arms"):
        AblationConfig(arms=["rlhf"])
    with pytest.raises(ValueError, match="distinct"):
        AblationConfig(seeds=[1, 1])
    with pytest.raises(ValueError, match="multiple of num_generations"):
        AblationConfig(rl_batch_size=6, num_generations=4)


def test_zero_data_is_generic_drawing_and_text_only_cot():
    rows = make_generic_drawing(GRID, 10, seed=0)
    assert [row["task"] for row in rows[:5]] == list(GENERIC_TASKS)
    for row in rows:
        (picture,), (drawing,) = row_images(row, "prompt"), row_images(row, "completion")
        picture, drawing = np.array(picture).reshape(GRID), np.array(drawing).reshape(GRID)
        request = row["prompt"][1]["text"]
        assert "Reasoning step 1 of 1:" in request and request.endswith("Text step 1 -> Image step 1:")
        expected = {"copy": picture, "mirror": picture[:, ::-1], "upside_down": picture[::-1]}.get(row["task"])
        if expected is not None:
            assert np.array_equal(drawing, expected)
        # No Uni-Skills operation is asked for.
        assert not any(word in request.lower() for word in ("zoom", "line", "mark", "ball", "how many"))
        assert check_generic_drawing(row, [drawing]) == 1.0 and check_generic_drawing(row, []) == 0.0
        if row["task"] == "copy":  # a blank answer to a copy request gets nothing; a missed object costs 1 / n
            assert check_generic_drawing(row, [np.zeros_like(drawing)]) == 0.0
            objects = np.argwhere(picture != 0)
            wrong = drawing.copy()
            wrong[tuple(objects[0])] = 0
            assert check_generic_drawing(row, [wrong]) == pytest.approx(1 - 1 / len(objects))
    frame = next(row for row in rows if row["task"] == "frame")
    drawn = np.array(row_images(frame, "completion")[0]).reshape(GRID)
    assert len(set(drawn[0].tolist() + drawn[-1].tolist() + drawn[:, 0].tolist())) == 1

    train, _ = make_uniskills(GRID, num_train=8, num_test=0, seed=0)
    cot = text_only_cot(train)
    for row, text_row in zip(train, cot):
        assert text_row["image"]["codes"] == row_images(row, "prompt")[0]
        assert text_row["rationale"] == " ".join(p["text"] for p in row["completion"] if p["type"] == "text")
        assert text_row["rationale"].startswith("THOUGHT 0:") and "THOUGHT 1:" in text_row["rationale"]
        assert (text_row["answer"], text_row["skill"]) == (row["answer"], row["skill"])
        # The bootstrap's free-form question input takes the problem image as its codes (no VQ encoder needed).
        converted = question_row_to_interleaved(text_row, 0, multiple_choice=False)
        assert [part["codes"] for part in converted["prompt"] if part["type"] == "image"] == [
            text_row["image"]["codes"]
        ]
