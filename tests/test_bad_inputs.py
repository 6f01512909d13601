"""Bad input at every data boundary (issue 12): each kind gets an error naming the row (index and id), the field,
what was found and the fix, raised by trl-omni; or, where skipping is the policy, a counted skip.

One test per kind of bad input (table-driven where kinds share a boundary). The collator, bootstrap and evaluation
kinds are at the end of the file.
"""

import json
import shutil

import pytest
import torch
from datasets import Dataset

from trl_omni.collators import InterleavedDataCollator
from trl_omni.data import (
    DatasetFormatError,
    InterleavedDataError,
    SkipReport,
    convert_m3cot,
    convert_zebra_cot,
    image_part,
    m3cot_row_to_interleaved,
    pretokenize_images,
    text_part,
    to_interleaved,
)
from trl_omni.testing_data import m3cot_rows, zebra_cot_rows


# ---------------------------------------------------------------------------------------------------------- helpers
def codes_of(vocab, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab.num_codes, (vocab.tokens_per_image,), generator=generator).tolist()


def interleaved(vocab, **changes):
    """A good interleaved row (one prompt image, one completion image); `changes` replace its columns."""
    row = {
        "id": "r-7",
        "prompt": [text_part("Which cell is red?"), image_part(codes=codes_of(vocab, 1))],
        "completion": [text_part("THOUGHT 0: I mark it."), image_part(codes=codes_of(vocab, 2))],
        "answer": "B",
    }
    row.update(changes)
    return row


def pretokenized_row(vocab, tokenizer, row_id, cut=None, stray=False, mask_change=0):
    """A pre-tokenized row (TRL's `input_ids` + `completion_mask`) with one completion image, optionally broken."""
    prompt = tokenizer("User: What is shown? Assistant:").input_ids
    image = vocab.image_span_ids(codes_of(vocab, 3)).tolist()
    if cut is not None:
        image = image[:cut]
    if stray:
        image = image[1:-1]  # the codes without BOI / EOI
    completion = tokenizer(" I draw it.").input_ids + image + tokenizer(" The answer is A.").input_ids
    mask = [0] * len(prompt) + [1] * len(completion)
    if mask_change:
        mask = mask[:mask_change] if mask_change < 0 else mask + [1] * mask_change
    return {"id": row_id, "input_ids": prompt + completion, "completion_mask": mask}


def pesft_trainer(tmp_path, dataset, **config):
    from trl_omni.testing import tiny_chameleon
    from trl_omni.trainers import PeSFTConfig, PeSFTTrainer

    # A trainer attaches its perception head to the model it is given: never to the session's shared `tiny`.
    model, processor = tiny_chameleon(seed=0)
    args = PeSFTConfig(
        str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, bf16=False, use_cpu=True,
        report_to="none", log_rendered_trajectories=0, **config,
    )  # fmt: skip
    return PeSFTTrainer(model, args=args, train_dataset=dataset, processing_class=processor)


# ---------------------------------------------------------------------------------------------------------- M3CoT
M3COT_BAD_ROWS = [
    # (change to a good row, field named, what the message says)
    ({"choices": []}, "choices", r"0 options; a multiple-choice question needs 2 to 26"),
    ({"answer": "F"}, "answer", r"the answer 'F' is not the letter of an option \(3 options: A-C\)"),
    ({"rationale": "   "}, "rationale", r"the rationale is empty"),
    ({"choices": "the square, the circle"}, "choices", r"the options must be a list of strings, got one string"),
]


@pytest.mark.parametrize("change, field, problem", M3COT_BAD_ROWS, ids=["no-choices", "answer-F", "empty-rationale",
                                                                         "choices-one-string"])  # fmt: skip
def test_m3cot_bad_rows_are_named_or_skipped(change, field, problem):
    rows = m3cot_rows(3)
    rows[1].update(change)
    expected = rf"Row 1 \(id='physical-commonsense-1001'\), field '{field}': {problem}.*Fix:"
    with pytest.raises(InterleavedDataError, match=expected):
        m3cot_row_to_interleaved(rows[1], 1)
    with pytest.raises(InterleavedDataError, match=expected):
        convert_m3cot(rows)
    report = SkipReport()
    kept = convert_m3cot(rows, on_error="skip", skip_report=report)
    assert kept["id"] == ["physical-commonsense-1000", "physical-commonsense-1002"]
    assert report.total_skipped == 1 and report.entries[0].rows == [1]


# ---------------------------------------------------------------------------------------------------------- codes
CODE_KINDS = [
    # (codes built from good codes, field problem)
    (lambda good: [code + 0.7 for code in good], r"codes\[0\] is float [0-9.]+, not an integer code"),
    (lambda good: [True] * len(good), r"codes\[0\] is bool True, not an integer code"),
    (
        lambda good: [good[:2], good[2:4]] + [good[4:6]] * (len(good) // 2 - 2),
        r"the codes are a nested list of shape \(\d+, 2\)",
    ),
]
CODE_IDS = ["floats", "booleans", "nested-wrong-grid"]


@pytest.mark.parametrize("make, problem", CODE_KINDS, ids=CODE_IDS)
def test_codes_that_are_not_flat_integers_are_refused(tiny, vocab, make, problem):
    model, processor = tiny
    bad = interleaved(vocab, id="r-bad")
    bad["completion"][1] = {"type": "image", "codes": make(codes_of(vocab, 2))}
    with pytest.raises(
        InterleavedDataError, match=rf"Row 1 \(id='r-bad'\), field 'completion\[1\]\.codes': {problem}"
    ):
        InterleavedDataCollator(processor, vocab)([interleaved(vocab, id="r-0"), bad])
    rows = [interleaved(vocab, id="r-0", completion=[text_part("THOUGHT 0: no image.")]), bad]
    # No explicit features: Arrow stores whatever the user wrote (floats, booleans, nested lists) as the column type.
    with pytest.raises(
        InterleavedDataError, match=rf"Row 1 \(id='r-bad'\), field 'completion\[1\]\.codes': {problem}"
    ):
        pretokenize_images(Dataset.from_list(rows), model, processor)


def test_float_codes_name_the_row_holding_them_although_arrow_stores_every_row_as_floats(tmp_path, tiny, vocab):
    model, processor = tiny
    bad = interleaved(vocab, id="r-bad")
    bad["completion"][1] = image_part(codes=codes_of(vocab, 2))
    bad["completion"][1]["codes"][5] = 1.7
    dataset = Dataset.from_list([interleaved(vocab, id="r-0"), bad, interleaved(vocab, id="r-2")])
    assert dataset.features["completion"].feature["codes"].feature.dtype == "float64"
    with pytest.raises(
        InterleavedDataError, match=r"Row 1 \(id='r-bad'\), field 'completion\[1\]\.codes': codes\[5\] is float 1\.7"
    ):
        pretokenize_images(dataset, model, processor, on_error="skip")
    # PeSFT given the dataset directly refuses it when it is built, not at the step that meets the row.
    with pytest.raises(InterleavedDataError, match=r"Row 1 \(id='r-bad'\), field 'completion\[1\]\.codes'"):
        pesft_trainer(tmp_path, dataset)


# ---------------------------------------------------------------------------------------------------------- answers
@pytest.mark.parametrize("answer, found", [(float("nan"), "float nan"), (["A", "C"], r"list \['A', 'C'\]")],
                         ids=["nan", "list"])  # fmt: skip
def test_answers_that_are_not_strings_are_refused(tiny, vocab, answer, found):
    model, processor = tiny
    rows = [interleaved(vocab, id="r-0"), interleaved(vocab, id="r-1", answer=answer)]
    for template in ("plain", "templated"):
        with pytest.raises(InterleavedDataError, match=rf"Row 1 \(id='r-1'\), field 'answer'.*got {found}.*Fix:"):
            InterleavedDataCollator(processor, vocab, template=template)(rows)
    dataset = Dataset.from_list(
        [interleaved(vocab, id="r-0", answer=None), interleaved(vocab, id="r-1", answer=answer)]
    )
    with pytest.raises(InterleavedDataError, match=rf"Row 1 \(id='r-1'\), field 'answer'.*got {found}.*Fix:"):
        pretokenize_images(dataset, model, processor)


# ---------------------------------------------------------------------------------------------------------- parts
PART_KINDS = [
    # (completion value, field named, what the message says)
    (
        [{"type": "text", "text": "look", "codes": [1, 2, 3]}],
        r"completion\[0\]\.codes",
        "a text part also holds image",
    ),
    ('[{"type": "text", "text": "THOUGHT 0"}]', "completion", "the value is a string holding JSON parts"),
    (['{"type": "text", "text": "THOUGHT 0"}'], r"completion\[0\]", "the value is a string holding JSON parts"),
    ([{"role": "assistant", "content": "It is B."}], r"completion\[0\]", r"a chat message \({'role': 'assistant'"),
    ([{"type": "text", "txt": "typo"}], r"completion\[0\]", r"unknown part key\(s\) \['txt'\]"),
]


@pytest.mark.parametrize("completion, field, problem", PART_KINDS,
                         ids=["text-part-with-codes", "json-column", "json-part", "chat-message", "unknown-key"])  # fmt: skip
def test_parts_that_are_not_structs_of_their_type_are_refused(tiny, vocab, completion, field, problem):
    from trl_omni.data import normalize_parts

    with pytest.raises(InterleavedDataError, match=rf"Row 4 \(id='x'\), field '{field}': {problem}.*Fix:"):
        normalize_parts(completion, "4 (id='x')", "completion")
    model, processor = tiny
    rows = [interleaved(vocab, id="r-0", completion=[text_part("fine")]), interleaved(vocab, id="r-1")]
    rows[1]["completion"] = completion
    with pytest.raises(InterleavedDataError, match=rf"Row 1 \(id='r-1'\), field '{field}': {problem}"):
        InterleavedDataCollator(processor, vocab)(rows)
    if isinstance(completion, str):  # a column of JSON strings
        rows[0]["completion"] = "THOUGHT 0: plain text is fine."
    elif isinstance(completion[0], str):  # lists of JSON strings
        rows[0]["completion"] = ["THOUGHT 0: plain text is fine."]
    with pytest.raises(InterleavedDataError, match=rf"Row 1 \(id='r-1'\), field '{field}': {problem}"):
        pretokenize_images(Dataset.from_list(rows), model, processor)


def test_chat_style_rows_given_to_the_collator_are_named(tiny, vocab):
    _, processor = tiny
    chat_row = {"id": "c-1", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "B"}]}
    collator = InterleavedDataCollator(processor, vocab)
    with pytest.raises(InterleavedDataError, match=r"Row 1 \(id='c-1'\), field 'prompt': a chat-style row.*Fix: conv"):
        collator([interleaved(vocab), chat_row])
    with pytest.raises(InterleavedDataError, match=r"Row 0 \(id='c-2'\), field 'prompt\[0\]': a chat message"):
        collator([{"id": "c-2", "prompt": chat_row["messages"][:1], "completion": chat_row["messages"][1:]}])
    with pytest.raises(InterleavedDataError, match=r"field 'prompt': no 'prompt' column in the row \(its columns: "):
        collator([{"id": "c-3", "question": "Hi", "answer": "B"}])


@pytest.mark.parametrize(
    "source, value, found",
    [("path", 7, "`path` must be a string, got int"), ("bytes", "abc", "`bytes` must hold the image file's bytes, got"
     " str"), ("base64", b"abc", "`base64` must be a string, got bytes")],
    ids=["path-int", "bytes-str", "base64-bytes"],
)  # fmt: skip
def test_image_sources_of_the_wrong_type_are_named(tiny, vocab, source, value, found):
    model, processor = tiny
    rows = [interleaved(vocab, id="r-0"), interleaved(vocab, id="r-1")]
    rows[1]["prompt"][1] = {"type": "image", source: value}
    encoder_collator = InterleavedDataCollator(processor, vocab, image_encoder=object())
    with pytest.raises(InterleavedDataError, match=rf"Row 1 \(id='r-1'\), field 'prompt\[1\]\.{source}': {found}"):
        encoder_collator(rows)


# ---------------------------------------------------------------------------------------------------------- PeSFT
PRETOKENIZED_KINDS = [
    # (how the row is broken, field named, what the message says)
    ({"cut": 20}, "input_ids", r"the image span at position \d+ is cut or malformed \(\d+ image tokens, 64 needed"),
    ({"stray": True}, "input_ids", r"64 image tokens lie outside any BOI \.\.\. EOI image span"),
    ({"mask_change": -3}, "completion_mask", r"`completion_mask` has \d+ entries but `input_ids` has \d+"),
]


@pytest.mark.parametrize("broken, field, problem", PRETOKENIZED_KINDS, ids=["cut-span", "stray-image-tokens",
                                                                             "completion-mask-length"])  # fmt: skip
def test_pesft_refuses_or_skips_bad_pretokenized_rows(tmp_path, tiny, vocab, broken, field, problem):
    tokenizer = tiny[1].tokenizer
    rows = [pretokenized_row(vocab, tokenizer, f"p{i}") for i in range(3)]
    rows.insert(2, pretokenized_row(vocab, tokenizer, "bad", **broken))
    dataset = Dataset.from_list(rows)
    with pytest.raises(InterleavedDataError, match=rf"Row 2 \(id='bad'\), field '{field}': {problem}.*Fix:"):
        pesft_trainer(tmp_path, dataset)
    trainer = pesft_trainer(tmp_path, dataset, on_error="skip")
    assert trainer.train_dataset["id"] == ["p0", "p1", "p2"]
    (entry,) = trainer.skip_report.entries
    assert (entry.skipped, entry.total, entry.rows) == (1, 4, [2]) and "on_error='skip'" in entry.reason


def test_pesft_names_an_empty_dataset(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"The train dataset has no rows"):
        pesft_trainer(tmp_path, Dataset.from_list([]))


# ---------------------------------------------------------------------------------------------------------- datasets
def test_wrong_zebra_cot_column_names_are_named_with_the_columns_present():
    rows = [{"question": row["Question"], "trace": row["Text Reasoning Trace"], "Final Answer": row["Final Answer"]}
            for row in zebra_cot_rows(2)]  # fmt: skip
    with pytest.raises(DatasetFormatError) as error:
        convert_zebra_cot(rows)
    message = str(error.value)
    assert "lacks the column(s) ['Question', 'Text Reasoning Trace']" in message
    assert "its columns are ['question', 'trace', 'Final Answer']" in message
    assert "'question' -> 'Question'" in message and "Fix:" in message
    # The same under on_error="skip": a wrong column is never "every row skipped".
    with pytest.raises(DatasetFormatError, match="lacks the column"):
        convert_zebra_cot(rows, on_error="skip")


def test_zebra_cot_data_read_as_another_format_is_named(tmp_path, tiny):
    model, processor = tiny
    zebra = Dataset.from_list(zebra_cot_rows(2))
    for dataset_format in ("m3cot", "interleaved"):
        with pytest.raises(DatasetFormatError, match=rf"read as '{dataset_format}', lacks.*look like the 'zebra_cot'"):
            to_interleaved(zebra, dataset_format, model, processor)
    # A Zebra-CoT parquet file saved under a .jsonl name.
    from trl_omni.data.loading import load_any_dataset

    path = tmp_path / "zebra.jsonl"
    Dataset.from_list([{k: v for k, v in row.items() if "image" not in k} for row in zebra_cot_rows(2)]).to_parquet(
        str(path)
    )
    with pytest.raises(DatasetFormatError, match=r"Cannot read the dataset file .*zebra\.jsonl' as json.*Fix:"):
        load_any_dataset(str(path))


@pytest.mark.parametrize("convert", [convert_zebra_cot, convert_m3cot, "to_interleaved"])
def test_an_empty_dataset_is_named(tiny, convert):
    if convert == "to_interleaved":
        model, processor = tiny
        with pytest.raises(DatasetFormatError, match=r"The dataset has no rows \(columns: \['prompt'\]\)"):
            to_interleaved(Dataset.from_dict({"prompt": []}), "auto", model, processor)
    else:
        with pytest.raises(DatasetFormatError, match=r"has no rows.*Fix:"):
            convert([])


# ---------------------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    from trl_omni.testing import tiny_chameleon

    path = tmp_path_factory.mktemp("tiny-checkpoint")
    tiny_chameleon(seed=0, save_dir=path)
    return path


@pytest.mark.parametrize(
    "remove, named",
    [
        (["config.json"], "has no config.json"),
        (["tokenizer.json"], r"has no tokenizer \(tokenizer\.json / tokenizer\.model\)"),
        (["model.safetensors"], r"has no weights \(model\.safetensors / pytorch_model\.bin or a sharded index\)"),
    ],
    ids=["config", "tokenizer", "weights"],
)
def test_checkpoint_missing_a_file_is_named(tmp_path, saved_tiny, remove, named):
    from trl_omni import CheckpointError, load_omni_model

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(saved_tiny, checkpoint)
    for name in remove:
        (checkpoint / name).unlink()
    with pytest.raises(CheckpointError, match=rf"The checkpoint directory '.*ckpt' {named} \(files there: .*Fix:"):
        load_omni_model(checkpoint)


def test_checkpoint_of_another_model_type_or_missing_shard_is_named(tmp_path, saved_tiny):
    from trl_omni import CheckpointError, load_omni_model

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(saved_tiny, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(CheckpointError, match=r"is a 'llama' model"):
        load_omni_model(checkpoint)
    (checkpoint / "config.json").write_text(json.dumps(config))
    (checkpoint / "model.safetensors").rename(checkpoint / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"weight shard\(s\) \['model-00002-of-00002.safetensors'\]"):
        load_omni_model(checkpoint)
    with pytest.raises(CheckpointError, match=r"does not exist"):
        load_omni_model(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_without_any_step_fails_naming_why(tmp_path, tiny):
    from trl_omni.data.bootstrap import BootstrapConfig, load_bootstrapped, run_bootstrap

    model, processor = tiny
    rows = m3cot_rows(3)
    for row in rows:
        row["rationale"] = ""
    config = BootstrapConfig(output_dir=str(tmp_path / "a"), disable_tqdm=True)
    with pytest.raises(InterleavedDataError, match=r"Row 0 \(id='physical-commonsense-1000'\), field 'rationale'"):
        run_bootstrap(config, model, processor, rows)
    skip = BootstrapConfig(output_dir=str(tmp_path / "b"), on_error="skip", disable_tqdm=True)
    with pytest.raises(DatasetFormatError, match=r"wrote no rows.*of 3 input rows, 3 were bad input rows skipped"):
        run_bootstrap(skip, model, processor, rows)
    # Rationales that the splitter cuts into no step at all.
    no_steps = BootstrapConfig(output_dir=str(tmp_path / "c"), step_splitter=lambda text: [], disable_tqdm=True)
    with pytest.raises(DatasetFormatError, match=r"3 had no reasoning step in their 'rationale' column"):
        run_bootstrap(no_steps, model, processor, m3cot_rows(3))
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["samples_without_steps"] == 3
    with pytest.raises(DatasetFormatError, match=r"The bootstrap in .* wrote no rows: of 3 input rows, 3 had no"):
        load_bootstrapped(str(tmp_path / "c"))


# ---------------------------------------------------------------------------------------------------------- evaluation
def test_evaluation_rows_without_a_gold_answer_are_counted_and_left_unscored(tmp_path, tiny, caplog):
    """docs/evaluation.md: rows without a gold answer are counted but unscored (Omni-Bench and interleaved rows)."""
    from trl_omni.evaluation import EvalConfig, evaluate, read_predictions
    from trl_omni.testing_data import omni_bench_rows

    model, processor = tiny
    rows = omni_bench_rows(4)
    rows[1]["answer"], rows[2]["answer"] = None, "  "
    config = EvalConfig(output_dir=str(tmp_path / "bench"), batch_size=4, max_new_tokens=2, max_images=0,
                        progress=False, print_table=False)  # fmt: skip
    with caplog.at_level("WARNING"):
        result = evaluate(model, processor, rows, config, dataset_format="omni_bench")
    assert "2 of 4 rows have no gold answer" in caplog.text
    records = read_predictions(tmp_path / "bench" / "predictions.jsonl")
    assert [record["gold"] for record in records] == ["10", None, None, "40"]
    assert [record["score"] is None for record in records] == [False, True, True, False]
    assert (result.metrics["overall"]["num_rows"], result.metrics["overall"]["num_scored"]) == (4, 2)
    # A gold answer that is not a string is named before anything is generated.
    rows[3]["answer"] = 40.0
    bad = EvalConfig(output_dir=str(tmp_path / "bad"), batch_size=4, max_new_tokens=2, max_images=0, progress=False)
    with pytest.raises(
        InterleavedDataError, match=r"Row 3, field 'answer': the answer must be a string, got float 40\.0"
    ):
        evaluate(model, processor, rows, bad, dataset_format="omni_bench")
    assert not (tmp_path / "bad" / "predictions.jsonl").exists()


# ---------------------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def no_launch(monkeypatch):
    """Fails the test if `trl-omni sft|rl` would start `accelerate launch`: the checks must come first."""
    import importlib

    cli_main = importlib.import_module("trl_omni.cli.main")
    for key in ("LOCAL_RANK", "ACCELERATE_DYNAMO_BACKEND", "TRL_OMNI_NO_LAUNCH"):
        monkeypatch.delenv(key, raising=False)
    launched = []
    monkeypatch.setattr(cli_main, "launch_module", lambda *args: launched.append(args) or 0)
    return launched


def write_config(tmp_path, saved_tiny, rows, **options):
    import yaml

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = {"model_name_or_path": str(saved_tiny), "dataset_name": str(data), "output_dir": str(tmp_path / "o")}
    config.update(options)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_cli_names_a_misspelled_reward_before_launching(tmp_path, saved_tiny, vocab, no_launch, capsys):
    from trl_omni.cli import main

    rows = [interleaved(vocab, id=f"r{i}") for i in range(2)]
    config = write_config(tmp_path, saved_tiny, rows, reward_funcs=["accuracy", "acuracy"])
    assert main(["rl", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "Unknown reward 'acuracy'. Available names: accuracy, format" in err
    assert not no_launch
    config = write_config(tmp_path, saved_tiny, rows, reward_funcs=["accuracy", "format"], reward_weights=[1.0])
    assert main(["rl", "--config", config]) == 2
    assert "--reward_weights has 1 values for 2 rewards" in capsys.readouterr().err and not no_launch
    config = write_config(tmp_path, saved_tiny, rows, reward_funcs="accuracy")  # a list option given one value
    assert main(["rl", "--config", config]) == 2
    assert "reward_funcs: 'accuracy' is a single value; this option takes a list" in capsys.readouterr().err


def test_cli_names_dataset_format_and_config_problems_before_launching(tmp_path, saved_tiny, vocab, no_launch, capsys):
    from trl_omni.cli import main

    zebra = [{k: v for k, v in row.items() if "image" not in k} for row in zebra_cot_rows(2)]
    config = write_config(tmp_path, saved_tiny, zebra, dataset_format="m3cot")
    assert main(["sft", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "read as 'm3cot', lacks the column(s) ['question', 'choices', 'answer', 'rationale']" in err
    assert "look like the 'zebra_cot' format" in err
    config = write_config(tmp_path, saved_tiny, [interleaved(vocab)], perception_alignment="next-token")
    assert main(["sft", "--config", config]) == 2
    assert (
        "perception_alignment: 'next-token' is not one of ['next_token', 'same_position']" in capsys.readouterr().err
    )
    broken = tmp_path / "broken"
    shutil.copytree(saved_tiny, broken)
    (broken / "tokenizer.json").unlink()
    config = write_config(tmp_path, broken, [interleaved(vocab)])
    assert main(["sft", "--config", config]) == 2
    assert "has no tokenizer" in capsys.readouterr().err
    assert not no_launch
    config = write_config(tmp_path, saved_tiny, [interleaved(vocab)])
    assert main(["sft", "--config", config]) == 0 and len(no_launch) == 1  # a good config is launched


# ---------------------------------------------------------------------------------------------------------- Anole layout
def test_checks_hold_at_anoles_real_layout(anole):
    """The same boundaries at Anole-7B's layout (32x32 = 1,024 codes per image, 1,026-token spans, 65,536 ids)."""
    from trl_omni import ImageVocabulary
    from trl_omni.data.pretokenized import validate_pretokenized_rows

    vocab = ImageVocabulary.from_model(anole.model, anole.processor)
    assert vocab.tokens_per_image == 1024
    good = interleaved(vocab, id="a-0")
    floats = interleaved(vocab, id="a-1")
    floats["completion"][1] = {"type": "image", "codes": [float(code) for code in codes_of(vocab, 5)]}
    collator = InterleavedDataCollator(anole.processor, vocab, template="templated")
    assert collator([good])["input_ids"].shape[1] > 2 * vocab.span_length
    with pytest.raises(
        InterleavedDataError, match=r"Row 1 \(id='a-1'\), field 'completion\[1\]\.codes': codes\[0\] is"
    ):
        collator([good, floats])
    short = interleaved(vocab, id="a-2")
    short["completion"][1] = image_part(codes=codes_of(vocab, 6)[:64])  # a tiny model's 8x8 grid
    with pytest.raises(InterleavedDataError, match=r"has 64 codes; this model's 32x32 grid needs exactly 1024"):
        collator([short])
    tokenizer = anole.processor.tokenizer
    rows = [pretokenized_row(vocab, tokenizer, "p0"), pretokenized_row(vocab, tokenizer, "p1", cut=600)]
    with pytest.raises(InterleavedDataError, match=r"Row 1 \(id='p1'\), field 'input_ids'.*1024 needed"):
        validate_pretokenized_rows(Dataset.from_list(rows), vocab)
