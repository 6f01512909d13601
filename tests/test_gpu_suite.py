"""benchmarks/gpu_suite.py cannot rot: its `--tiny` mode runs every section's code on a tiny model on the CPU."""

import dataclasses
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import pytest


SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def gpu_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _positive(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_tiny_run_measures_every_section(gpu_suite, tmp_path):
    results = gpu_suite.main(["--tiny", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "results.json").read_text())["sections"].keys() == results["sections"].keys()
    sections = results["sections"]
    assert list(sections) == list(gpu_suite.SECTIONS)
    for name, entry in sections.items():
        assert entry["status"] == "ok", (name, entry.get("error"), entry.get("traceback"))

    rollouts = sections["rollouts"]
    assert set(rollouts["tokens_per_s"]) == {
        "unconstrained",
        "legacy_processor",
        "processor",
        "processor_host_check",
        "processor_static_cache",
    }
    assert all(_positive(v) for v in rollouts["tokens_per_s"].values())
    assert rollouts["constrained_outputs_valid"] is True
    assert _positive(rollouts["processor_vs_legacy_speedup"])

    for name in ("sft_qlora", "sft_lora"):
        entry = sections[name]
        for kind in ("sft", "pesft"):
            figures = entry[kind]
            assert _positive(figures["step_s"]) and _positive(figures["tokens_per_s"]) and _positive(figures["loss"])
            assert len(figures["step_s_all"]) == entry["warmup_steps"] + entry["timed_steps"]
            assert figures["trainable_params"] > 0
            assert figures["released_before_next"] is True
        assert _positive(entry["pesft"]["perception_loss"])  # PeSFT really added its loss
        assert entry["pesft"]["trainable_params"] > entry["sft"]["trainable_params"]  # + the perception head
        assert _positive(entry["pesft_vs_sft_time"])
        assert entry["image_tokens_per_row"] == 2 * 66
    assert _positive(sections["sft_qlora"]["checkpoint_save_s"]) and _positive(sections["sft_qlora"]["checkpoint_gib"])

    perpo = sections["perpo"]
    group = perpo["num_generations"]
    assert perpo["perpo"]["all_image_spans_complete"] is True
    assert perpo["perpo"]["completions_with_one_complete_image"] == group == perpo["perpo"]["image_segments"]
    for kind in ("grpo", "perpo"):
        assert perpo[kind]["rollout_tokens"] == group * perpo["completion_length"]
        assert _positive(perpo[kind]["rollout_tokens_per_s"]) and 0 < perpo[kind]["generation_share"] <= 1
        # A trainer still alive when the next is built doubled the model in the second one's peak memory.
        assert perpo[kind]["released_before_next"] is True
    assert _positive(perpo["perpo_vs_grpo_step_time"])

    assert sections["vq_decode"]["image_pixels"] == [32, 32] and _positive(
        sections["vq_decode"]["images_per_s_to_pil"]
    )
    evaluation = sections["evaluation"]
    assert evaluation["images_drawn"] == evaluation["rows"] and evaluation["incomplete_images"] == 0
    assert _positive(evaluation["images_per_min"])
    bootstrap = sections["bootstrap"]
    assert bootstrap["rows_written"] == bootstrap["rows"] and bootstrap["images_drawn"] >= bootstrap["rows"]
    assert _positive(bootstrap["rows_per_min"])
    assert "only measured on CUDA" in sections["compile"]["skipped"]

    table = (tmp_path / "table.md").read_text()
    for name in gpu_suite.SECTIONS:
        assert f"| {name} |" in table
    assert results["meta"]["profile"] == "tiny" and results["meta"]["device"] == "cpu"


def test_sections_past_the_budget_are_skipped_and_failures_are_contained(gpu_suite, tmp_path):
    suite = gpu_suite.Suite(gpu_suite.parse_args(["--tiny", "--out", str(tmp_path), "--budget_s", "60"]))

    def broken(_):
        raise RuntimeError("boom")

    def slow(_):
        time.sleep(30)

    suite.run("rollouts", broken)
    entry = json.loads((tmp_path / "results.json").read_text())["sections"]["rollouts"]
    assert entry["status"] == "error" and "RuntimeError: boom" in entry["error"] and "broken" in entry["traceback"]

    suite.profile = dataclasses.replace(suite.profile, caps={**suite.profile.caps, "vq_decode": 1})
    started = time.monotonic()
    suite.run("vq_decode", slow)
    assert time.monotonic() - started < 10
    assert suite.results["sections"]["vq_decode"]["status"] == "timeout"

    suite.t0 -= 61  # past --budget_s: nothing new starts, and the reason is recorded
    suite.run("perpo", broken)
    skipped = suite.results["sections"]["perpo"]
    assert skipped["status"] == "skipped" and "budget" in skipped["reason"]
    assert "**skipped**" in (tmp_path / "table.md").read_text()


def test_perpo_memory_script_runs_each_trainer_and_releases_it(tmp_path, gpu_suite):
    """benchmarks/perpo_memory.py (per-phase peak memory of PeRPO vs GRPO on the GPU) runs its code on the CPU."""
    path = SCRIPT.with_name("perpo_memory.py")
    spec = importlib.util.spec_from_file_location("perpo_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entries = module.main(["--tiny", "--out", str(tmp_path), "--order", "perpo", "grpo"])
    assert [entry["kind"] for entry in entries] == ["perpo", "grpo"]
    assert json.loads((tmp_path / "perpo_memory.json").read_text()) == entries
    for entry in entries:
        assert _positive(entry["rollout_s"]) and entry["step_s"] >= entry["rollout_s"]
        assert entry["rollout"] is None and entry["rest_of_step"] is None  # no device memory to read on the CPU
        assert entry["released"] is True  # nothing of it left to count in the next trainer's peak
