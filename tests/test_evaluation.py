"""`trl_omni.evaluation`: the table, the JSONL and the report agree; kill-and-resume; seeds; refusing to mix runs."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from trl_omni.evaluation import EvalConfig, EvalResumeError, accuracy_table, read_predictions, task_group_of


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "scripts"))
from cli_eval_run import rows, run  # noqa: E402


NUM_ROWS = 20


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run (sampling, seed 0) of the 20-row fixture."""
    out = tmp_path_factory.mktemp("eval") / "reference"
    result = run(str(out))
    return out, result


def comparable(records):
    return [{key: value for key, value in record.items()} for record in records]


def test_table_jsonl_and_report_agree(reference):
    out, result = reference
    assert result.num_generated == NUM_ROWS
    records = read_predictions(out / "predictions.jsonl")
    assert [record["index"] for record in records] == list(range(NUM_ROWS))

    # Recompute the table from the JSONL, independently of the library's helper.
    groups, sources = {}, {}
    for record in records:
        groups.setdefault(record["group"], []).append(record["score"])
        sources.setdefault(record["source"], []).append(record["score"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result.metrics
    for name, scores in groups.items():
        assert metrics["groups"][name]["accuracy"] == pytest.approx(sum(scores) / len(scores))
        assert metrics["groups"][name]["num_rows"] == len(scores)
    for name, scores in sources.items():
        assert metrics["sources"][name]["accuracy"] == pytest.approx(sum(scores) / len(scores))
    overall = sum(record["score"] for record in records) / NUM_ROWS
    assert metrics["overall"]["accuracy"] == pytest.approx(overall)
    # The fixture answers "10" everywhere; every second row has gold "10": half the rows are right.
    assert overall == pytest.approx(0.5)
    assert all(record["extracted_answer"] == "10" for record in records)
    assert all(record["score"] == (1.0 if record["gold"] == "10" else 0.0) for record in records)
    # Omni-Bench groups from the dataset / source fields.
    assert {(r["source"], r["group"]) for r in records} == {
        ("vstar", "natural_scene"), ("chartqa", "structured_image"), ("geometry3k", "diagrammatic_math"),
    }  # fmt: skip

    # Images: one complete image per row, saved where the JSONL says.
    for record in records:
        assert record["num_images"] == 1 and record["num_incomplete_images"] == 0
        assert len(record["image_paths"]) == 1
        with Image.open(out / record["image_paths"][0]) as image:
            assert image.format == "PNG" and image.size[0] > 0

    # results.md and report.html show the same numbers.
    table = (out / "results.md").read_text()
    report = (out / "report.html").read_text()
    for name, entry in [*metrics["groups"].items(), *metrics["sources"].items(), ("all", metrics["overall"])]:
        percent = f"{100 * entry['accuracy']:.1f}%"
        assert re.search(rf"\| {re.escape(name)} \| {re.escape(percent)} \| {entry['num_scored']} / ", table)
        assert re.search(
            rf"<td>{re.escape(name)}</td><td>{re.escape(percent)}</td><td>{entry['num_scored']}</td>", report
        )
    # Each shown row: its Omni-Bench question image next to the one drawn image, and the question without the
    # template's system text.
    assert report.count('class="trajectory"') == 8 and report.count("<img") == 16
    assert report.count('alt="prompt image 1"') == 8 and report.count('alt="image 1"') == 8
    assert "What is the value of the bar 1?" in report and "You are a helpful assistant" not in report
    assert "Showing the first 8 of 20 trajectories" in report


def test_killed_run_resumes_without_recomputing(reference, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    script = REPO_ROOT / "tests" / "scripts" / "cli_eval_run.py"
    process = subprocess.Popen([sys.executable, str(script), str(out), "0.03"], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    predictions = out / "predictions.jsonl"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and process.poll() is None:
            if predictions.exists() and len(read_predictions(predictions)) >= 4:
                break
            time.sleep(0.05)
        assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()[-3000:]}"
        process.kill()
    finally:
        process.wait(timeout=60)
    before = predictions.read_text()
    finished = len(read_predictions(predictions))
    assert 4 <= finished < NUM_ROWS

    result = run(str(out))
    assert result.num_generated == NUM_ROWS - finished  # finished rows were not generated again
    after = predictions.read_text()
    assert after.startswith(before[: before.rfind("\n") + 1])
    assert comparable(read_predictions(predictions)) == comparable(read_predictions(ref_out / "predictions.jsonl"))
    assert result.metrics == json.loads((ref_out / "metrics.json").read_text())
    for record in read_predictions(predictions):
        assert (out / record["image_paths"][0]).read_bytes() == (ref_out / record["image_paths"][0]).read_bytes()


def test_seeded_runs_repeat_and_other_arguments_are_refused(reference, tmp_path):
    ref_out, _ = reference
    again = run(str(tmp_path / "again"))
    assert read_predictions(tmp_path / "again" / "predictions.jsonl") == read_predictions(
        ref_out / "predictions.jsonl"
    )
    other = run(str(tmp_path / "seed1"), seed=1)
    assert other.num_generated == NUM_ROWS
    ids = [r["completion_ids"] for r in read_predictions(tmp_path / "seed1" / "predictions.jsonl")]
    assert ids != [r["completion_ids"] for r in read_predictions(ref_out / "predictions.jsonl")]

    # Same directory, different arguments: refused with the differing argument named; --overwrite starts again.
    copy = tmp_path / "copy"
    shutil.copytree(ref_out, copy)
    with pytest.raises(EvalResumeError, match=r"max_new_tokens: 80 -> 90.*--overwrite"):
        run(str(copy), max_new_tokens=90)
    assert again.num_generated == NUM_ROWS
    redone = run(str(copy), max_new_tokens=90, overwrite=True)
    assert redone.num_generated == NUM_ROWS
    # A finished run with the same arguments generates nothing.
    assert run(str(copy), max_new_tokens=90).num_generated == 0


def test_task_groups_and_table_helpers():
    groups = EvalConfig().task_groups
    assert task_group_of(["V*"], groups) == "natural_scene"
    assert task_group_of([None, "ArxivQA"], groups) == "structured_image"
    assert task_group_of(["MathVista"], groups) == "diagrammatic_math"
    assert task_group_of(["ViC-Bench"], groups) == "vision_operational"
    assert task_group_of(["unknown-set"], groups) == "other"
    custom = EvalConfig(task_groups='{"charts": ["chartqa"]}').task_groups
    assert task_group_of(["ChartQA"], custom) == "charts" and task_group_of(["vstar"], custom) == "other"
    with pytest.raises(ValueError, match="JSON mapping"):
        EvalConfig(task_groups="{not json")
    table = accuracy_table([
        {"source": "a", "group": "g", "score": 1.0, "num_images": 2},
        {"source": "a", "group": "g", "score": None, "num_images": 0},
        {"source": "b", "group": "h", "score": 0.0, "num_images": 0},
    ])  # fmt: skip
    assert table["sources"]["a"] == {"accuracy": 1.0, "num_rows": 2, "num_scored": 1, "mean_images": 1.0}
    assert table["overall"]["accuracy"] == 0.5 and table["overall"]["num_scored"] == 2


def test_trl_omni_eval_config_on_a_parquet_file(tmp_path, capsys):
    """`trl-omni eval --config` (a tool command: runs in-process) on Omni-Bench rows stored as parquet."""
    import yaml
    from datasets import Dataset

    from trl_omni.cli import main
    from trl_omni.testing import tiny_chameleon
    from trl_omni.testing_data import omni_bench_rows

    tiny_chameleon(seed=0, save_dir=tmp_path / "tiny")
    Dataset.from_list(omni_bench_rows(6, seed=1)).to_parquet(str(tmp_path / "bench.parquet"))
    config = {
        "model_name_or_path": str(tmp_path / "tiny"),
        "dtype": "float32",
        "dataset_name": str(tmp_path / "bench.parquet"),
        "dataset_format": "omni_bench",
        "output_dir": str(tmp_path / "out"),
        "batch_size": 3,
        "max_new_tokens": 6,
        "task_groups": {"charts": ["chartqa"]},  # a YAML mapping is accepted as is
        "progress": False,
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(config))
    assert main(["eval", "--config", str(tmp_path / "eval.yaml"), "--max_images", "0"]) == 0
    out = capsys.readouterr().out
    records = read_predictions(tmp_path / "out" / "predictions.jsonl")
    assert len(records) == 6 and all(r["num_images"] == 0 and r["image_paths"] == [] for r in records)
    assert {r["group"] for r in records} == {"charts", "other"}
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["overall"]["num_rows"] == 6 and "| overall | all |" in out
    assert (tmp_path / "out" / "report.html").exists()
    state = json.loads((tmp_path / "out" / "eval_state.json").read_text())
    assert state["values"]["max_images"] == 0 and state["values"]["max_new_tokens"] == 6


def test_interleaved_rows_with_custom_groups(tmp_path):
    """Rows already in the interleaved schema (pre-tokenized images), grouped by a custom mapping."""
    from trl_omni.evaluation import evaluate
    from trl_omni.models import ImageVocabulary
    from trl_omni.testing import tiny_chameleon
    from trl_omni.testing_data import interleaved_rows

    model, processor = tiny_chameleon(seed=0)
    rows = interleaved_rows(ImageVocabulary.from_model(model, processor), num_rows=4, prompt_images=1, seed=0)
    for i, row in enumerate(rows):
        row["source"] = ["synthetic-a", "synthetic-b"][i % 2]
    config = EvalConfig(
        output_dir=str(tmp_path), template="plain", batch_size=2, max_new_tokens=4, max_images=0,
        source_columns=["source"],
        task_groups={"first": ["synthetic-a"]}, progress=False, print_table=False,
    )  # fmt: skip
    result = evaluate(model, processor, rows, config, dataset_format="interleaved")
    records = read_predictions(tmp_path / "predictions.jsonl")
    assert [r["id"] for r in records] == [row["id"] for row in rows]
    assert [r["group"] for r in records] == ["first", "other", "first", "other"]
    for row, record in zip(rows, records):  # the prompt text survives the round trip (images removed)
        texts = [part["text"].strip() for part in row["prompt"] if part["type"] == "text" and part["text"].strip()]
        assert texts and all(text in record["prompt"] for text in texts)
    assert all(len(r["completion_ids"]) <= 4 for r in records)
    assert result.metrics["sources"]["synthetic-a"]["num_rows"] == 2


def test_eval_loads_a_lora_adapter_directory(tmp_path):
    """`trl-omni eval --model_name_or_path ADAPTER_DIR` (a LoRA output of trl-omni sft) loads base + adapter + head."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trl_omni.models import ImageVocabulary, load_omni_model
    from trl_omni.testing import tiny_chameleon
    from trl_omni.trainers import add_perception_head, get_perception_head

    model, processor = tiny_chameleon(seed=0, save_dir=tmp_path / "base")
    model.config._name_or_path = model.name_or_path = str(tmp_path / "base")  # as if loaded from disk by trl-omni
    add_perception_head(model, ImageVocabulary.from_model(model, processor), seed=3)
    lora = LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["perception_head"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(tmp_path / "adapter")
    processor.save_pretrained(tmp_path / "adapter")
    # What the adapter saves: LoRA weights and the trained copy of the head (not PEFT's `original_module`).
    saved = {k: v.clone() for k, v in peft_model.state_dict().items() if "lora_" in k or "modules_to_save" in k}

    loaded, loaded_processor = load_omni_model(str(tmp_path / "adapter"), dtype=torch.float32)
    state = loaded.state_dict()
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())
    assert get_perception_head(loaded) is not None
    assert loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()


class _BoostBOI:
    """Pushes BOI up at every step: only the image-span constraint (applied after it) can keep a second image out."""

    def __init__(self, boi: int):
        self.boi = boi

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.boi] += 1e4
        return scores


def test_open_with_image_makes_the_drawing_the_answers_first_image(tmp_path):
    """`open_with_image` (the authors' --append-boi): each answer starts with a drawing the model finishes; it is the
    answer's first image in the record, the saved images and the report, and counts towards `max_images`."""
    from trl_omni.evaluation import evaluate
    from trl_omni.models import ImageVocabulary
    from trl_omni.testing import tiny_chameleon

    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    config = EvalConfig(
        output_dir=str(tmp_path), batch_size=2, max_new_tokens=3 * vocab.span_length, max_images=1,
        open_with_image=True, progress=False, print_table=False,
    )  # fmt: skip
    result = evaluate(
        model, processor, rows(4), config, dataset_format="omni_bench", logits_processors=[_BoostBOI(vocab.boi_token_id)]
    )  # fmt: skip
    records = read_predictions(tmp_path / "predictions.jsonl")
    assert len(records) == 4 and result.metrics["overall"]["mean_images"] == 1.0
    for record in records:
        assert record["prompt_ids"][-1] == vocab.boi_token_id  # the prompt opened the image...
        completion = record["completion_ids"]
        # ... the completion finished it (codes, EOI) and, with max_images=1, drew no other image although BOI was
        # pushed up at every step.
        assert bool(vocab.is_image_token(torch.tensor(completion[: vocab.tokens_per_image])).all())
        assert completion[vocab.tokens_per_image] == vocab.eoi_token_id
        assert vocab.boi_token_id not in completion
        assert record["num_images"] == 1 and record["num_incomplete_images"] == 0
        assert len(record["image_paths"]) == 1 and (tmp_path / record["image_paths"][0]).exists()
        assert record["question"].startswith("What is the value of the bar")
    report = (tmp_path / "report.html").read_text()
    assert report.count('alt="image 1"') == 4 and report.count('alt="prompt image 1"') == 4
    assert "stray image token" not in report and "incomplete image" not in report


def test_open_with_image_needs_room_for_an_image(tmp_path):
    from trl_omni.evaluation import evaluate
    from trl_omni.testing import tiny_chameleon

    with pytest.raises(ValueError, match="max_images=0 allows none"):
        EvalConfig(output_dir=str(tmp_path), open_with_image=True, max_images=0)
    model, processor = tiny_chameleon(seed=0)
    config = EvalConfig(output_dir=str(tmp_path), open_with_image=True, max_new_tokens=64, progress=False)
    with pytest.raises(ValueError, match=r"max_new_tokens=64"):  # no room for the image the answer opens with
        evaluate(model, processor, rows(2), config, dataset_format="omni_bench")
