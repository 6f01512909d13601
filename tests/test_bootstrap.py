"""Omni-R1-Zero bootstrapping (trl_omni.data.bootstrap): step splitting, seeded drawing, the quality filter, the
output (shards + manifest, resume checks) and the end-to-end path into PeSFTTrainer."""

import json
import math
import os

import pytest
import torch
from datasets import Dataset, load_dataset

from trl_omni import ImageVocabulary
from trl_omni.collators import InterleavedDataCollator
from trl_omni.data.bootstrap import (
    BootstrapConfig,
    SeededGumbelSampler,
    StepDrawer,
    bootstrap_dataset,
    bootstrapped_files,
    cap_steps,
    drawing_seed,
    load_bootstrapped,
    run_bootstrap,
    split_steps,
)
from trl_omni.rewards import PerceptionReward
from trl_omni.testing import tiny_chameleon
from trl_omni.testing_data import m3cot_rows
from trl_omni.trainers import PeSFTConfig, PeSFTTrainer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # On a shared 2-core machine, torch's second OpenMP thread spin-waits and makes tiny matmuls 100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def drawer_model():
    return tiny_chameleon(seed=0)


def image_parts(row):
    return [p for p in row["completion"] if p["type"] == "image"]


def all_codes(dataset):
    return [p["codes"] for row in dataset for p in image_parts(row)]


# ----------------------------------------------------------------------------------------------- step splitting
@pytest.mark.parametrize(
    "text, expected",
    [
        ("Step 1: look at it. Step 2: count them.", ["Step 1: look at it.", "Step 2: count them."]),
        ("1. Find the row.\n2. Take the left one.\n3. Answer.", ["1. Find the row.", "2. Take the left one.", "3. Answer."]),
        ("Intro. (1) first (2) second", ["Intro.", "(1) first", "(2) second"]),
        ("THOUGHT 0: draw the grid. THOUGHT 1: mark 3.5 cells.", ["THOUGHT 0: draw the grid.", "THOUGHT 1: mark 3.5 cells."]),
        ("First I look. Then I count 2.5 items! Done?", ["First I look.", "Then I count 2.5 items!", "Done?"]),
        ("1. Take 1. 2. Add 3. 3) Done.", ["1. Take 1.", "2. Add 3.", "3) Done."]),  # numbers inside steps stay
        ("", []),
    ],
)  # fmt: skip
def test_auto_splitter(text, expected):
    assert split_steps(text) == expected


def test_other_splitters_and_cap():
    assert split_steps("a\n\nb\nc", "lines") == ["a", "b", "c"]
    assert split_steps("x; y; z", r"regex:;\s*") == ["x", "; y", "; z"]
    assert split_steps("one two", lambda text: text.split()) == ["one", "two"]
    assert split_steps("aaa bbb", "textwrap:wrap") == ["aaa bbb"]  # dotted path to a str -> list[str] callable
    with pytest.raises(ValueError, match="step_splitter"):
        split_steps("x", "no_such_module_xyz:split")
    assert cap_steps(["a", "b", "c", "d"], 2) == ["a", "b c d"]  # nothing lost beyond max_steps
    assert cap_steps(["a"], 3) == ["a"]


# ----------------------------------------------------------------------------------------------- seeded sampling
def test_gumbel_sampler_rows_depend_on_their_seed_only():
    scores = torch.randn(3, 50)
    alone = SeededGumbelSampler([7])(None, scores[1:2].clone())
    batched = SeededGumbelSampler([5, 7, 9])(None, scores.clone())
    assert torch.equal(alone[0], batched[1])
    assert not torch.equal(batched[0] - scores[0], batched[2] - scores[2])
    # Gumbel-max is a sample from softmax: empirical frequencies match the probabilities.
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    draws = torch.tensor([SeededGumbelSampler([s])(None, logits.clone()).argmax().item() for s in range(3000)])
    frequencies = torch.bincount(draws, minlength=3).float() / len(draws)
    assert torch.allclose(frequencies, logits.softmax(-1)[0], atol=0.03)
    # top_k keeps the k best only; temperature 0 is greedy.
    top = SeededGumbelSampler([1], top_k=2)(None, logits.clone())
    assert math.isinf(top[0, 0].item()) and not math.isinf(top[0, 1].item())
    assert torch.equal(SeededGumbelSampler([1], temperature=0)(None, logits.clone()), logits)
    assert drawing_seed(1, 2, 3, 0) != drawing_seed(1, 2, 3, 1)
    assert drawing_seed(1, 2, 3, 0) == drawing_seed(1, 2, 3, 0)
    # support: noise only where scores can be finite; the sample follows the softmax over the support
    masked = torch.tensor([[float("-inf"), 0.0, float("-inf"), 1.0, 2.0]])
    support = torch.tensor([1, 3, 4])
    noised = SeededGumbelSampler([3], support=support)(None, masked.clone())
    assert torch.isinf(noised[0, [0, 2]]).all() and torch.isfinite(noised[0, support]).all()
    draws = torch.tensor(
        [SeededGumbelSampler([s], support=support)(None, masked.clone()).argmax().item() for s in range(3000)]
    )
    frequencies = torch.bincount(draws, minlength=5).float() / len(draws)
    assert torch.allclose(frequencies, masked.softmax(-1)[0], atol=0.03)


def test_drawing_prompt_layout(drawer_model):
    model, processor = drawer_model
    vocab = ImageVocabulary.from_model(model, processor)
    config = BootstrapConfig(
        prompt_template="{image}Q: {question}\nBefore: {previous_steps}\nDraw {step}/{num_steps}: {step_text}"
    )
    drawer = StepDrawer(model, processor, vocab, config)
    images = [
        torch.arange(vocab.tokens_per_image) % vocab.num_codes,
        torch.zeros(vocab.tokens_per_image, dtype=torch.long),
    ]
    ids = drawer.prompt_ids("Which?", images, ["look.", "count."], 1)
    assert ids[0] == processor.tokenizer.bos_token_id and ids[-1] == vocab.boi_token_id  # ends by opening the image
    segments = vocab.parse_segments(torch.tensor([ids]))
    assert segments.complete.tolist() == [True, True, False]  # both question images, then the open drawing span
    assert torch.equal(segments.complete_codes.reshape(2, -1), torch.stack(images))
    text = processor.tokenizer.decode(
        [t for t in ids if not vocab.is_image_token(torch.tensor(t))], skip_special_tokens=True
    )
    assert "Q: Which?\nBefore: look.\nDraw 2/2: count." in text
    assert drawer.prompt_ids("Which?", [], ["look."], 0).count(vocab.boi_token_id) == 1  # no question image
    with pytest.raises(ValueError, match="end with BOI"):
        drawer.draw([ids[:-1]], [0])
    with pytest.raises(ValueError, match="unknown placeholder"):
        BootstrapConfig(prompt_template="{step_text} {nope}")
    with pytest.raises(ValueError, match="step_text"):
        BootstrapConfig(prompt_template="{question}")


# ----------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def bootstrapped(drawer_model, tmp_path_factory):
    model, processor = drawer_model
    out = str(tmp_path_factory.mktemp("bootstrap") / "out")
    rows = m3cot_rows(20)
    rows[3]["rationale"] = "Step 1: find the row. Step 2: take the left shape. Step 3: it is the square. Step 4: done."
    rows[5]["image"] = None  # a question without image: the drawing prompt has no image span
    dataset = bootstrap_dataset(rows, model, processor, out, shard_size=8, batch_size=7, max_steps=3, seed=3,
                                disable_tqdm=True)  # fmt: skip
    return rows, out, dataset


def test_end_to_end_interleaved_output(drawer_model, bootstrapped):
    model, processor = drawer_model
    vocab = ImageVocabulary.from_model(model, processor)
    rows, out, dataset = bootstrapped
    assert len(dataset) == 20
    assert dataset["id"] == [row["id"] for row in rows]
    assert dataset["answer"] == [row["answer"] for row in rows]  # answers preserved, in input order
    for row, source in zip(dataset, rows, strict=True):
        steps = split_steps(source["rationale"])
        capped = cap_steps(steps, 3)
        # completion = step text, its image, step text, its image, ...
        assert [p["type"] for p in row["completion"]] == ["text", "image"] * len(capped)
        assert [p["text"] for p in row["completion"][::2]] == capped
        for part in image_parts(row):
            codes = torch.tensor(part["codes"])
            assert codes.numel() == vocab.tokens_per_image
            assert bool(((codes >= 0) & (codes < vocab.num_codes)).all())
        # the question image is in the prompt as codes (and absent when the question has none)
        prompt_images = [p for p in row["prompt"] if p["type"] == "image"]
        assert len(prompt_images) == (0 if source["image"] is None else 1)
        assert all(len(p["codes"]) == vocab.tokens_per_image for p in prompt_images)
        assert "Question: " in row["prompt"][-1]["text"]
        assert len(row["image_scores"]) == len(capped) and row["num_steps"] == len(capped)
    assert dataset[3]["completion"][-2]["text"] == "Step 3: it is the square. Step 4: done."
    # scores are the PerceptionReward of the stored codes
    reward = PerceptionReward(vocab)
    grids = torch.tensor(image_parts(dataset[0])[0]["codes"]).view(1, *vocab.grid_size)
    assert dataset[0]["image_scores"][0] == pytest.approx(reward.image_scores(grids).item(), rel=1e-6)
    # the drawings are not all the same image
    assert len({tuple(c) for c in all_codes(dataset)}) > 10

    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["complete"] and len(manifest["shards"]) == 3 and manifest["arguments"]["seed"] == 3
    counts = manifest["counts"]
    images = sum(len(image_parts(r)) for r in dataset)
    assert counts["rows_written"] == 20 and counts["images_kept"] == counts["images_drawn"] == images
    assert counts["prompt_images_encoded"] == 19 and counts["redraws"] == 0
    assert manifest["template"] == "templated" and manifest["seed"] == 3 and len(manifest["arguments_hash"]) == 16
    # loads with plain datasets too
    plain = load_dataset("parquet", data_files=bootstrapped_files(out), split="train")
    assert plain["id"] == dataset["id"]
    assert 'interleaved_template="templated"' in open(os.path.join(out, "README.md")).read()


def test_pesft_trains_on_bootstrapped_rows(bootstrapped, tmp_path):
    _, out, _ = bootstrapped
    model, processor = tiny_chameleon(seed=1)  # a fresh policy: the drawer stays untouched
    vocab = ImageVocabulary.from_model(model, processor)
    train = load_bootstrapped(out)
    args = PeSFTConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-3, bf16=False,
        use_cpu=True, report_to="none", logging_steps=1, save_strategy="no", interleaved_template="templated",
    )  # fmt: skip
    trainer = PeSFTTrainer(model, args=args, train_dataset=train, processing_class=processor)
    assert isinstance(trainer.data_collator, InterleavedDataCollator)
    batch = trainer.data_collator([train[0], train[1]])
    trained_codes = vocab.ids_to_codes(batch["labels"])
    expected = [c for row in (train[0], train[1]) for p in image_parts(row) for c in p["codes"]]
    assert trained_codes[trained_codes >= 0].tolist() == expected  # the drawn images are trained, in order
    head_before = model.perception_head.weight.detach().clone()
    trainer.train()
    assert not torch.equal(model.perception_head.weight, head_before)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(math.isfinite(e["loss"]) and e["image_tokens"] > 0 for e in logs)


# ----------------------------------------------------------------------------------------------- determinism
def test_deterministic_for_a_seed_and_batch_size(drawer_model, bootstrapped, tmp_path):
    model, processor = drawer_model
    rows, _, first = bootstrapped
    kwargs = {"shard_size": 8, "max_steps": 3, "disable_tqdm": True}
    again = bootstrap_dataset(rows, model, processor, str(tmp_path / "a"), batch_size=7, seed=3, **kwargs)
    assert again.to_list() == first.to_list()
    # Drawing noise is per row: other batch sizes give the same drawings on this model (float32, CPU).
    single = bootstrap_dataset(rows[:6], model, processor, str(tmp_path / "b"), batch_size=1, seed=3, **kwargs)
    assert all_codes(single) == all_codes(first.select(range(6)))
    other_seed = bootstrap_dataset(rows[:6], model, processor, str(tmp_path / "c"), batch_size=7, seed=4, **kwargs)
    assert all_codes(other_seed) != all_codes(single)
    assert other_seed["answer"] == single["answer"]


# ----------------------------------------------------------------------------------------------- quality filter
def reject_first_attempt(codes, drawings):
    return [0.0 if d["attempt"] == 0 else 1.0 for d in drawings]


def reject_all(codes, drawings):
    return [0.0] * len(codes)


def test_quality_filter_redraws_and_policies(drawer_model, tmp_path):
    model, processor = drawer_model
    rows = m3cot_rows(4)
    kwargs = {"max_steps": 2, "disable_tqdm": True, "seed": 0}
    base = bootstrap_dataset(rows, model, processor, str(tmp_path / "base"), **kwargs)
    drawings = sum(len(image_parts(r)) for r in base)

    redrawn = bootstrap_dataset(rows, model, processor, str(tmp_path / "r"), quality_fn=reject_first_attempt,
                                max_redraws=1, **kwargs)  # fmt: skip
    counts = json.load(open(tmp_path / "r" / "manifest.json"))["counts"]
    assert counts["redraws"] == drawings and counts["images_drawn"] == 2 * drawings
    assert counts["low_quality_images"] == drawings and counts["images_kept"] == drawings
    assert all(a != b for a, b in zip(all_codes(redrawn), all_codes(base), strict=True))  # the redraws were kept

    for policy, rows_left, images_left in (("drop_step", 4, 0), ("drop_sample", 0, 0), ("keep_best", 4, drawings)):
        out = tmp_path / policy
        config = BootstrapConfig(output_dir=str(out), quality_fn=reject_all, max_redraws=2, on_low_quality=policy,
                                 **kwargs)  # fmt: skip
        if rows_left:
            manifest = run_bootstrap(config, model, processor, rows)
        else:  # a run that keeps no row fails, naming why; its manifest keeps the counts
            with pytest.raises(ValueError, match=r"wrote no rows.*4 were dropped because a drawing stayed below"):
                run_bootstrap(config, model, processor, rows)
            manifest = json.loads((out / "manifest.json").read_text())
        counts = manifest["counts"]
        assert counts["rows_written"] == rows_left and counts["images_kept"] == images_left
        assert counts["images_drawn"] == 3 * drawings and counts["redraws"] == 2 * drawings
        assert counts["steps_without_image"] == (drawings if policy == "drop_step" else 0)
        assert counts["samples_dropped"] == 4 - rows_left
    kept = load_bootstrapped(str(tmp_path / "drop_step"))
    assert [p["type"] for p in kept[0]["completion"]] == ["text", "text"]  # the text of the steps stays

    # min_distinct_codes: a drawing needs that many different codes (all 64 drawn codes distinct never happens here)
    vocab = ImageVocabulary.from_model(model, processor)
    strict = BootstrapConfig(output_dir=str(tmp_path / "distinct"), min_distinct_codes=vocab.tokens_per_image,
                             max_redraws=0, **kwargs)  # fmt: skip
    assert run_bootstrap(strict, model, processor, rows)["counts"]["images_kept"] == 0
    loose = BootstrapConfig(output_dir=str(tmp_path / "loose"), min_distinct_codes=2, max_redraws=0, **kwargs)
    assert run_bootstrap(loose, model, processor, rows)["counts"]["images_kept"] == drawings


def test_perception_threshold(drawer_model, bootstrapped, tmp_path):
    model, processor = drawer_model
    rows, _, first = bootstrapped
    scores = sorted(s for row in first.select(range(4)) for s in row["image_scores"])
    threshold = scores[len(scores) // 2]
    config = BootstrapConfig(output_dir=str(tmp_path / "t"), quality_threshold=threshold, max_redraws=1,
                             shard_size=8, batch_size=7, max_steps=3, seed=3, disable_tqdm=True)  # fmt: skip
    counts = run_bootstrap(config, model, processor, rows[:4])["counts"]
    filtered = load_bootstrapped(str(tmp_path / "t"))
    assert counts["low_quality_images"] >= len(scores) // 2 and counts["redraws"] > 0
    assert all(s >= threshold for row in filtered for s in row["image_scores"])
    assert counts["images_kept"] + counts["steps_without_image"] == len(scores)


# ----------------------------------------------------------------------------------------------- output directory
def test_resume_checks_and_overwrite(drawer_model, tmp_path):
    model, processor = drawer_model
    rows = m3cot_rows(5)
    out = str(tmp_path / "out")
    config = BootstrapConfig(output_dir=out, shard_size=2, max_steps=1, disable_tqdm=True, seed=1)
    first = run_bootstrap(config, model, processor, rows)
    mtimes = {f: os.path.getmtime(f) for f in bootstrapped_files(out)}
    # same arguments: nothing left to do, nothing rewritten
    again = run_bootstrap(config, model, processor, rows)
    assert again["shards"] == first["shards"] and {f: os.path.getmtime(f) for f in mtimes} == mtimes
    # different arguments: refused, naming them
    with pytest.raises(ValueError, match=r"seed: 1 -> 2.*--overwrite"):
        run_bootstrap(BootstrapConfig(output_dir=out, shard_size=2, max_steps=1, seed=2), model, processor, rows)
    with pytest.raises(ValueError, match="input_fingerprint"):
        run_bootstrap(config, model, processor, m3cot_rows(5, seed=9))
    # --overwrite starts over
    over = BootstrapConfig(output_dir=out, shard_size=2, max_steps=1, seed=2, overwrite=True, disable_tqdm=True)
    assert run_bootstrap(over, model, processor, rows)["arguments"]["seed"] == 2
    assert len(load_bootstrapped(out)) == 5
    # a directory that is not a bootstrap output is refused
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a bootstrap output"):
        run_bootstrap(BootstrapConfig(output_dir=str(foreign)), model, processor, rows)


def test_bad_input_is_named(drawer_model, tmp_path):
    model, processor = drawer_model
    rows = m3cot_rows(2)
    with pytest.raises(ValueError, match="no column 'rationale'.*--rationale_column"):
        run_bootstrap(BootstrapConfig(output_dir=str(tmp_path / "a")), model, processor,
                      [{k: v for k, v in r.items() if k != "rationale"} for r in rows])  # fmt: skip
    rows[1]["rationale"] = "I look <racm3:break> here."  # BOI text in a step
    with pytest.raises(ValueError, match="Row 1"):
        run_bootstrap(BootstrapConfig(output_dir=str(tmp_path / "b"), disable_tqdm=True), model, processor, rows)
    # on_error="skip": the bad rows are dropped, counted and the others written
    rows += m3cot_rows(3)[2:]
    rows[2]["answer"] = ""  # missing answer
    config = BootstrapConfig(output_dir=str(tmp_path / "c"), on_error="skip", max_steps=1, disable_tqdm=True)
    counts = run_bootstrap(config, model, processor, rows)["counts"]
    assert counts["samples_skipped_bad_input"] == 2 and counts["samples_dropped"] == 2 and counts["rows_written"] == 1
    assert load_bootstrapped(str(tmp_path / "c"))["id"] == [rows[0]["id"]]
    assert counts["images_drawn"] == 1  # nothing was drawn for the skipped rows
    with pytest.raises(ValueError, match="on_low_quality"):
        BootstrapConfig(on_low_quality="nope")
    with pytest.raises(ValueError, match="keep_columns"):
        BootstrapConfig(keep_columns=["image"])


def test_column_mapping_and_files(drawer_model, tmp_path):
    model, processor = drawer_model
    rows = [
        {"qid": f"q{i}", "q": f"What is {i} + 1?", "cot": f"1. Take {i}. 2. Add one.", "gold": str(i + 1)}
        for i in range(3)
    ]
    path = tmp_path / "cot.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    config = BootstrapConfig(
        output_dir=str(tmp_path / "out"), dataset_name=str(path), id_column="qid", question_column="q",
        rationale_column="cot", answer_column="gold", choices_column=None, context_column=None, image_column=None,
        disable_tqdm=True,
    )  # fmt: skip
    run_bootstrap(config, model, processor)
    out = load_bootstrapped(str(tmp_path / "out"))
    assert out["id"] == ["q0", "q1", "q2"] and out["answer"] == ["1", "2", "3"]
    assert [p["text"] for p in out[1]["completion"] if p["type"] == "text"] == ["1. Take 1.", "2. Add one."]
    assert out[0]["prompt"][0]["text"] == "Question: What is 0 + 1?"
    assert isinstance(Dataset.from_list(out.to_list()), Dataset)
