"""Resume fingerprints (issue 17 item 4): every weight, adapter, processor setting and argument that changes a result is
part of a run's identity; a resume with anything else is refused, naming what differs. One fingerprint helper
(`trl_omni.utils.fingerprint`) and one resumable-run helper (`trl_omni.utils.resume`) serve evaluation, bootstrap and
pre-tokenization."""

import json
import re

import pytest
import torch

from trl_omni.utils import fingerprint as fingerprint_module
from trl_omni.utils.fingerprint import fingerprint_model, fingerprint_processor, fingerprint_tensors
from trl_omni.utils.resume import ResumeMismatchError, differing_fields, open_resumable_run


# --------------------------------------------------------------------------------------------------- fingerprints
def test_tensor_fingerprint_reads_every_byte(monkeypatch):
    big = torch.arange(10_000, dtype=torch.float32)
    reference = fingerprint_tensors([("w", big)])
    changed = big.clone()
    changed[-1] += 1  # the very last element: no sampling can see it, a full hash must
    assert fingerprint_tensors([("w", changed)]) != reference
    # Sliced reading (as for GPU tensors) hashes the same bytes as one piece.
    monkeypatch.setattr(fingerprint_module, "_CHUNK_BYTES", 7)
    assert fingerprint_tensors([("w", big)]) == reference
    # Name, dtype and shape are part of it; empty, bool and bfloat16 tensors are handled.
    assert fingerprint_tensors([("v", big)]) != reference
    assert fingerprint_tensors([("w", big.view(100, 100))]) != reference
    assert fingerprint_tensors([("w", big.view(torch.int32))]) != reference
    odd = [("b", torch.tensor([True, False])), ("e", torch.empty(0)), ("h", torch.ones(3, dtype=torch.bfloat16))]
    assert fingerprint_tensors(odd) != fingerprint_tensors(odd[:2])


def test_model_and_processor_fingerprints_name_what_changed(tiny):
    from peft import LoraConfig, get_peft_model

    from trl_omni.testing import tiny_chameleon

    processor = tiny[1]
    base = fingerprint_model(tiny_chameleon(seed=0)[0])  # not the shared model: its identity is what is compared
    assert set(base) == {"name_or_path", "class", "dtype", "quantization", "adapters", "generation_config", "weights"}
    assert fingerprint_model(tiny_chameleon(seed=0)[0]) == base  # same content, same identity
    assert fingerprint_model(tiny_chameleon(seed=1)[0])["weights"] != base["weights"]

    adapters = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        adapters.append(fingerprint_model(get_peft_model(tiny_chameleon(seed=0)[0], lora)))
    differences = differing_fields({"model": adapters[0]}, {"model": adapters[1]})
    assert [name for name, _, _ in differences] == ["weights"]
    assert adapters[0]["adapters"]["default"]["r"] == 2 and adapters[0]["weights"] != base["weights"]

    settings = fingerprint_processor(processor)
    assert settings["processor"]["image_seq_length"] == 64 and settings["image_processor"]["size"]
    other = tiny_chameleon(seed=0)[1]
    # What a tokenizer was last asked to do (truncation, padding) is state, not identity.
    other.tokenizer(["a b c", "a"], truncation=True, max_length=2, padding="max_length")
    other.tokenizer.padding_side = "left" if other.tokenizer.padding_side == "right" else "right"
    assert fingerprint_processor(other) == settings
    other.image_processor.size = {"shortest_edge": 40}
    other.tokenizer.add_tokens(["<new-token>"])
    changed = differing_fields({"p": settings}, {"p": fingerprint_processor(other)})
    assert {name for name, _, _ in changed} == {"image_processor.size.shortest_edge", "tokenizer"}


# ------------------------------------------------------------------------------------------------ resumable runs
def test_resumable_run_starts_resumes_and_refuses(tmp_path):
    out = tmp_path / "run"
    identity = {"arguments": {"seed": 1, "steps": 4}, "identity": {"model": {"weights": "aa", "dtype": "f32"}}}
    opened = dict(manifest_name="manifest.json", what="a test run", outputs=("rows.jsonl", "images/*.png"))
    run = open_resumable_run(out, identity=identity, initial={"done": 0}, **opened)
    assert not run.resumed and json.loads((out / "manifest.json").read_text()) == {**identity, "done": 0}
    run.data["done"] = 3
    run.save()
    (out / "rows.jsonl").write_text("{}\n")
    (out / "images").mkdir()
    (out / "images" / "0.png").write_bytes(b"png")

    again = open_resumable_run(out, identity=identity, initial={"done": 0}, **opened)
    assert again.resumed and again.data["done"] == 3

    other = {"arguments": {"seed": 2, "steps": 4}, "identity": {"model": {"weights": "bb", "dtype": "f32"}}}
    with pytest.raises(ResumeMismatchError, match=r"seed: 1 -> 2; model\.weights: 'aa' -> 'bb'\).*--overwrite"):
        open_resumable_run(out, identity=other, **opened)
    assert (out / "rows.jsonl").exists()  # a refusal deletes nothing

    fresh = open_resumable_run(out, identity=other, overwrite=True, **opened)
    assert not fresh.resumed and not (out / "rows.jsonl").exists() and not (out / "images" / "0.png").exists()

    # Outputs without a manifest: their arguments are unknown, refused; an owned directory refuses strangers too.
    (out / "manifest.json").unlink()
    (out / "rows.jsonl").write_text("{}\n")
    with pytest.raises(ResumeMismatchError, match=r"no manifest.json.*rows.jsonl.*--overwrite"):
        open_resumable_run(out, identity=identity, **opened)
    for name in ("shared", "owned"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text("mine")
    assert not open_resumable_run(tmp_path / "shared", identity=identity, **opened).resumed
    with pytest.raises(ResumeMismatchError, match="not a test run.*notes.txt"):
        open_resumable_run(tmp_path / "owned", identity=identity, exclusive=True, **opened)


# ----------------------------------------------------------------------------------------- the runs that use them
def _save_adapter(base_dir, out_dir, seed):
    from peft import LoraConfig, get_peft_model

    from trl_omni import load_omni_model

    model, processor = load_omni_model(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapter = get_peft_model(model, lora)
    adapter.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def test_two_adapters_evaluated_into_one_output_dir_are_refused(tmp_path, capsys):
    """`trl-omni eval` with a second LoRA adapter of the same base into the first one's output_dir refuses, naming the
    weights; the first adapter resumes (nothing left to generate)."""
    from datasets import Dataset

    from trl_omni.cli import main
    from trl_omni.evaluation import EvalResumeError, read_predictions
    from trl_omni.testing import tiny_chameleon
    from trl_omni.testing_data import omni_bench_rows

    tiny_chameleon(seed=0, save_dir=tmp_path / "base")
    for seed in (1, 2):
        _save_adapter(tmp_path / "base", tmp_path / f"adapter{seed}", seed)
    Dataset.from_list(omni_bench_rows(2, seed=1)).to_parquet(str(tmp_path / "bench.parquet"))
    out = tmp_path / "eval"

    def evaluate(adapter: str) -> int:
        return main([
            "eval", "--model_name_or_path", str(tmp_path / adapter), "--dtype", "float32",
            "--dataset_name", str(tmp_path / "bench.parquet"), "--dataset_format", "omni_bench",
            "--output_dir", str(out), "--max_new_tokens", "4", "--max_images", "0", "--batch_size", "2",
            "--progress", "false", "--print_table", "false", "--save_images", "false",
        ])  # fmt: skip

    assert evaluate("adapter1") == 0
    first = read_predictions(out / "predictions.jsonl")
    assert len(first) == 2
    capsys.readouterr()
    assert evaluate("adapter2") == 2  # refused, without a traceback
    error = capsys.readouterr().err
    assert EvalResumeError.__name__ in error and "--overwrite" in error
    assert re.search(r"different arguments \(model\.weights: '[0-9a-f]+' -> '[0-9a-f]+'\)", error)
    assert read_predictions(out / "predictions.jsonl") == first  # nothing of the second adapter was written
    assert evaluate("adapter1") == 0 and read_predictions(out / "predictions.jsonl") == first


def test_bootstrap_refuses_another_model(tiny, tmp_path):
    from trl_omni.data.bootstrap import BootstrapConfig, run_bootstrap
    from trl_omni.testing import tiny_chameleon
    from trl_omni.testing_data import m3cot_rows

    model, processor = tiny
    rows = m3cot_rows(2)
    config = BootstrapConfig(output_dir=str(tmp_path / "out"), max_steps=1, disable_tqdm=True)
    manifest = run_bootstrap(config, model, processor, rows)
    assert manifest["identity"]["model"]["weights"] == fingerprint_model(model)["weights"]
    assert manifest["identity"]["processor"] == json.loads(json.dumps(fingerprint_processor(processor)))
    other, _ = tiny_chameleon(seed=3)
    with pytest.raises(ValueError, match=r"model\.weights: .*--overwrite"):
        run_bootstrap(config, other, processor, rows)
