"""Every user path, run on the real-layout Anole checkpoint through the entry points a user runs.

`tiny_anole` has Anole-7B's layout (65,536-id vocabulary, 512-pixel images as 32x32 = 1,024 codes, 1,026-token image
spans, VQ decoder weights) around a tiny language model, saved and loaded back with `load_omni_model` (the session
fixture `anole`). On it, as a user would:

1. real 512-pixel PIL images are pre-tokenized and collated (complete spans, prompt images unlabelled);
2. `trl-omni sft --config examples/sft_anole_lora.yaml` (LoRA) and `examples/sft_anole_qlora.yaml` (QLoRA,
   bitsandbytes 4-bit on CPU) train 2 steps; the perception head is saved with the adapter and reloaded;
3. `trl-omni rl --config examples/rl_anole_lora.yaml` continues the PeSFT LoRA output for 2 steps on prompts that
   end with BOI; every rollout finishes a complete 1,024-code image;
4. `trl-omni eval` on the RL output, with its default budget and `--open_with_image`, draws complete images;
5. `trl-omni bootstrap` on 2 M3CoT rows draws complete images, and its rows fit the shipped PeSFT config;
6. the VQ decoder decodes an answer and `render_trajectory` shows it next to the problem image.

Every step checks what was produced (files, tensors, spans), not exit codes. Commands run in this process through
`trl_omni.cli.main` (training commands as the one rank `accelerate launch` would start, via `TRL_OMNI_NO_LAUNCH`;
the launch itself is tested in tests/test_cli.py), so the whole module pays one import and shares one checkpoint.
Its tests share fixtures in a chain (sft -> rl -> eval -> render), so they run in one xdist worker (`xdist_group`).
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml


REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
sys.path.insert(0, str(REPO_ROOT / "tests" / "scripts"))
import userpath_rewards  # noqa: E402


pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("user_paths_anole")]

# What a user on a CPU machine changes in the shipped configs (bf16 needs a GPU), plus a 2-step run.
CPU_TRAINING = ["--dtype", "float32", "--bf16", "false", "--use_cpu", "true", "--report_to", "none",
                "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "0", "--max_steps", "2",
                "--gradient_accumulation_steps", "1", "--logging_steps", "1"]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _keep_freed_memory():
    """Keeps freed memory in the process while this module runs (glibc's `mallopt`).

    At this layout each trained or generated position fills a 65,536-wide row of logits, so a step allocates and
    frees hundreds of MB. By default glibc returns such blocks to the OS at every free and the next step faults them
    in again: measured on a PeSFT run of this module, kernel time fell from 20 s to 6 s of 51 s. Afterwards the
    thresholds are set to the values glibc's dynamic policy settles at (32 MiB / 64 MiB) and the kept memory is
    released.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to tune
        yield
        return
    mmap_threshold, trim_threshold = -3, -1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    mallopt(mmap_threshold, 1 << 30)
    mallopt(trim_threshold, 1 << 30)
    yield
    mallopt(mmap_threshold, 32 << 20)
    mallopt(trim_threshold, 64 << 20)
    malloc_trim(0)


def trl_omni(*args) -> None:
    """`trl-omni ARGS`, in this process."""
    from trl_omni.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRL_OMNI_NO_LAUNCH", "1")
        code = main([str(arg) for arg in args])
    assert code == 0, f"trl-omni {args[0]} exited with {code}"


def shipped(name: str, key: str):
    return yaml.safe_load((EXAMPLES / name).read_text())[key]


def adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def vocab(anole):
    from trl_omni import ImageVocabulary

    return ImageVocabulary.from_model(anole.model, anole.processor)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("user_paths")


def assert_complete_spans(vocab, ids, expected_codes):
    """Every image of `ids` is a complete 1,026-token span holding `expected_codes`, in order; no stray codes."""
    segments = vocab.parse_segments([ids])
    assert len(segments) == len(expected_codes) and bool(segments.complete.all()), "an image span is incomplete"
    assert int(segments.stray_image_tokens.sum()) == 0
    for segment, codes in zip(segments, expected_codes):
        assert segment.end - segment.start == vocab.span_length == 1026
        assert segment.codes.tolist() == list(codes)
    return segments


# ------------------------------------------------------------------------------ 1. pre-tokenize and collate
@pytest.fixture(scope="module")
def pretokenized(anole, work):
    """Two rows with real PIL images, pre-tokenized: a 512-px question image and a drawn 512-px answer image; a
    640x480 question image (resized and cropped by the processor) and a text answer (so one of the two training steps
    of each run holds a drawing: CPU time goes into the 65,536-wide head at every trained position)."""
    from datasets import Dataset

    from trl_omni.data import image_part, interleaved_features, pretokenize_images, text_part
    from trl_omni.testing_data import make_image

    question = "Which cell of the grid is red?"
    rows = [
        {
            "id": "row-0",
            "prompt": [text_part(question), image_part(make_image((512, 512), seed=0))],
            "completion": [
                text_part("Let me draw it. I mark the object."),
                image_part(make_image((512, 512), seed=1)),
                text_part("The answer is A."),
            ],
            "answer": "A",
        },
        {
            "id": "row-1",
            "prompt": [text_part(question), image_part(make_image((640, 480), seed=2))],
            "completion": [text_part("The red cell is in the top row. The answer is B.")],
            "answer": "B",
        },
    ]
    dataset = pretokenize_images(
        Dataset.from_list(rows, features=interleaved_features()), anole.model, anole.processor
    )
    rows = [dict(row) for row in dataset]
    path = work / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return SimpleNamespace(rows=rows, path=path)


def image_codes(parts):
    return [part["codes"] for part in parts if part["type"] == "image"]


def test_real_images_pretokenize_and_collate_into_complete_spans(anole, vocab, pretokenized):
    from trl_omni.collators import InterleavedDataCollator

    parts = [part for row in pretokenized.rows for part in row["prompt"] + row["completion"]]
    images = image_codes(parts)
    assert len(images) == 3 and all(len(codes) == 1024 and 0 <= min(codes) and max(codes) < 8192 for codes in images)
    collator = InterleavedDataCollator(
        anole.processor, vocab, template=shipped("sft_anole_lora.yaml", "interleaved_template")
    )
    batch = collator(pretokenized.rows)
    for i, row in enumerate(pretokenized.rows):
        ids = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        problem, *drawings = assert_complete_spans(
            vocab, ids, image_codes(row["prompt"]) + image_codes(row["completion"])
        )
        labels = batch["labels"][i]
        assert (labels[problem.start : problem.end] == -100).all(), "a prompt image is labelled"
        for drawing in drawings:
            assert labels[drawing.start : drawing.end].tolist() == ids[drawing.start : drawing.end]


# ------------------------------------------------------------------------------ 2. trl-omni sft (LoRA, QLoRA)
def sft(config: str, anole, pretokenized, out: Path) -> Path:
    trl_omni(
        "sft", "--config", EXAMPLES / config, "--model_name_or_path", anole.path,
        "--dataset_name", pretokenized.path, "--dataset_format", "interleaved", "--output_dir", out,
        "--lora_r", "4", "--lora_alpha", "8", *CPU_TRAINING,
    )  # fmt: skip
    return out


def assert_adapter_with_perception_head_reloads(out: Path, anole) -> dict[str, torch.Tensor]:
    """The adapter holds trained LoRA weights and the perception head; `load_omni_model` gives both back."""
    from trl_omni import load_omni_model
    from trl_omni.trainers import get_perception_head

    saved = adapter_tensors(out)
    lora_b = [name for name in saved if "lora_B" in name]
    assert lora_b and any(saved[name].abs().sum() > 0 for name in lora_b), "LoRA was not trained"
    head = {name: tensor for name, tensor in saved.items() if "perception_head" in name}
    assert head, f"the perception head is missing from the adapter: {sorted(saved)[:5]}..."

    model, processor = load_omni_model(out, dtype=torch.float32)
    loaded = get_perception_head(model)
    assert loaded is not None, "the reloaded adapter has no perception head"
    if hasattr(loaded, "modules_to_save"):  # under PEFT: the trained copy
        (loaded,) = loaded.modules_to_save.values()
    loaded_state = loaded.state_dict()
    for name, tensor in head.items():
        assert torch.equal(loaded_state[name.split("perception_head.", 1)[1]], tensor), name
    assert processor.tokenizer.get_vocab() == anole.processor.tokenizer.get_vocab()
    return saved


@pytest.fixture(scope="module")
def sft_lora(anole, pretokenized, work):
    return sft("sft_anole_lora.yaml", anole, pretokenized, work / "sft-lora")


def test_sft_lora_saves_the_perception_head_with_the_adapter(anole, sft_lora):
    assert_adapter_with_perception_head_reloads(sft_lora, anole)


def test_sft_qlora_trains_a_4bit_base_and_saves_the_perception_head(anole, pretokenized, work):
    pytest.importorskip("bitsandbytes")
    out = sft("sft_anole_qlora.yaml", anole, pretokenized, work / "sft-qlora")
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert args.max_length == shipped("sft_anole_qlora.yaml", "max_length")
    config = json.loads((out / "adapter_config.json").read_text())
    assert "perception_head" in config["modules_to_save"]
    assert_adapter_with_perception_head_reloads(out, anole)


# ------------------------------------------------------------------------------ 3. trl-omni rl
@pytest.fixture(scope="module")
def rl_run(anole, vocab, pretokenized, sft_lora, work):
    """PeRPO from the PeSFT LoRA output, on prompts that end with BOI (the model is asked to draw)."""
    from trl_omni.collators import InterleavedDataCollator

    collator = InterleavedDataCollator(
        anole.processor, vocab, template=shipped("rl_anole_lora.yaml", "interleaved_template")
    )
    prompts = [
        {"id": row["id"], "prompt_ids": collator.encode_prompt(row) + [vocab.boi_token_id], "answer": row["answer"]}
        for row in pretokenized.rows
    ]
    data = work / "rl.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in prompts))
    userpath_rewards.ROLLOUTS.clear()
    out = work / "rl-lora"
    trl_omni(
        "rl", "--config", EXAMPLES / "rl_anole_lora.yaml", "--model_name_or_path", sft_lora,
        "--dataset_name", data, "--dataset_format", "pretokenized", "--output_dir", out,
        "--num_generations", "2", "--per_device_train_batch_size", "2",
        "--max_completion_length", str(vocab.span_length + 14), "--learning_rate", "1e-3",
        # The shipped default reward trains; the recorder (weight 0) keeps what every reward receives.
        "--reward_funcs", "perception_calibrated", "userpath_rewards:record_rollouts", "--reward_weights", "1", "0",
        *CPU_TRAINING,
    )  # fmt: skip
    return SimpleNamespace(out=out, prompts=prompts, rollouts=list(userpath_rewards.ROLLOUTS))


def test_rl_rollouts_finish_the_image_each_prompt_opened(vocab, rl_run):
    assert len(rl_run.rollouts) == 4  # 2 steps x 1 prompt x 2 generations
    for rollout in rl_run.rollouts:
        ids, segments = rollout["completion_ids"], rollout["image_segments"]
        assert segments and all(segment.complete for segment in segments), "a rollout holds an incomplete image"
        first = segments[0]
        assert first.start == -1 and first.codes.numel() == 1024  # the image the prompt's BOI opened
        assert bool(vocab.is_image_token(torch.tensor(ids[:1024])).all()) and ids[1024] == vocab.eoi_token_id
        parsed = vocab.parse_completions([ids])
        assert bool(parsed.complete.all()) and int(parsed.stray_image_tokens.sum()) == 0


def test_rl_continues_the_pesft_adapter_and_keeps_its_perception_head(sft_lora, rl_run):
    # (`trl-omni eval` below loads this output back.)
    before, after = adapter_tensors(sft_lora), adapter_tensors(rl_run.out)
    lora = [name for name in before if "lora_" in name]
    assert lora and set(lora) <= set(after), "the RL output does not hold the PeSFT adapter"
    assert any(not torch.equal(before[name], after[name]) for name in lora), "RL did not train the PeSFT adapter"
    head = [name for name in before if "perception_head" in name]
    assert head and all(torch.equal(before[name], after[name]) for name in head), "the perception head was lost"


# ------------------------------------------------------------------------------ 4. trl-omni eval
@pytest.fixture(scope="module")
def eval_run(rl_run, work):
    """`trl-omni eval` of the RL output on Omni-Bench rows with 512-pixel images: default settings and budget,
    answers opened with an image (the authors' --append-boi), one image per answer (the default budget is then one
    image plus text)."""
    from datasets import Dataset

    from trl_omni.evaluation import read_predictions
    from trl_omni.testing_data import omni_bench_rows

    data = work / "bench.parquet"
    Dataset.from_list(omni_bench_rows(2, image_size=(512, 512), seed=3)).to_parquet(str(data))
    out = work / "eval"
    trl_omni("eval", "--model_name_or_path", rl_run.out, "--dataset_name", data, "--output_dir", out,
             "--open_with_image", "true", "--max_images", "1", "--progress", "false")  # fmt: skip
    return SimpleNamespace(out=out, records=read_predictions(out / "predictions.jsonl"))


def test_eval_with_its_default_budget_draws_complete_images(vocab, eval_run):
    from trl_omni.evaluation import EvalConfig

    state = json.loads((eval_run.out / "eval_state.json").read_text())["values"]
    assert state["max_new_tokens"] == EvalConfig(max_images=1).generation_budget(vocab)  # the default budget
    assert len(eval_run.records) == 2
    for record in eval_run.records:
        assert record["num_images"] == 1 and record["num_incomplete_images"] == 0, "an eval answer is incomplete"
        segments = vocab.parse_completions([record["completion_ids"]])
        assert segments.start[0] == -1 and bool(segments.complete.all())
        assert len(record["image_paths"]) == record["num_images"]
        assert (eval_run.out / record["image_paths"][0]).is_file()
    report = (eval_run.out / "report.html").read_text()
    assert report.count('alt="prompt image 1"') == 2 and report.count('alt="image 1"') == 2
    assert "You are a helpful assistant" not in report and "What is the value of the bar 1?" in report


# ------------------------------------------------------------------------------ 5. trl-omni bootstrap
def test_bootstrap_draws_complete_images_that_fit_the_shipped_sft_config(anole, vocab, work):
    from datasets import Dataset

    from trl_omni.collators import InterleavedDataCollator
    from trl_omni.data.bootstrap import load_bootstrapped
    from trl_omni.testing_data import m3cot_rows

    data = work / "m3cot.parquet"
    Dataset.from_list(m3cot_rows(2, image_size=(512, 512), seed=5)).to_parquet(str(data))
    out = work / "bootstrap"
    trl_omni("bootstrap", "--output_dir", out, "--model_name_or_path", anole.path, "--dataset_name", data,
             "--dtype", "float32", "--device", "cpu", "--disable_tqdm", "true")  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    rows = list(load_bootstrapped(str(out)))
    assert len(rows) == 2 and manifest["counts"]["rows_written"] == 2
    drawings = [codes for row in rows for codes in image_codes(row["completion"])]
    assert len(drawings) == manifest["counts"]["images_kept"] >= 2
    assert all(len(codes) == 1024 for codes in drawings), "a bootstrap drawing is incomplete"

    # The rows train as the bootstrap example says (templated), within the shipped PeSFT max_length.
    collator = InterleavedDataCollator(
        anole.processor, vocab, template=manifest["arguments"]["template"],
        max_length=shipped("sft_anole_lora.yaml", "max_length"),
    )  # fmt: skip
    batch = collator(rows)
    assert collator.stats["dropped"] == 0 and batch["input_ids"].shape[0] == 2
    for i, row in enumerate(rows):
        ids = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        assert_complete_spans(vocab, ids, image_codes(row["prompt"]) + image_codes(row["completion"]))


# ------------------------------------------------------------------------------ 6. decode and render
def test_decoded_answer_is_rendered_next_to_the_problem_image(anole, vocab, eval_run):
    from trl_omni.models import VQImageDecoder, load_vq_decoder
    from trl_omni.visualization import render_trajectory

    class RecordingDecoder(VQImageDecoder):
        def decode(self, codes):
            self.codes = codes.reshape(len(codes), -1).tolist()
            return super().decode(codes)

    record = eval_run.records[0]
    vq_decoder = load_vq_decoder(anole.model, anole.path, image_processor=anole.processor.image_processor)
    decoder = RecordingDecoder(vq_decoder, vocab)
    rendered = render_trajectory(
        record["completion_ids"], anole.processor, vocab, decoder, prompt_ids=record["prompt_ids"],
        title=record["question"],
    )  # fmt: skip
    assert len(rendered.prompt_images) == 1 and rendered.num_images == record["num_images"] == 1
    assert rendered.num_incomplete_images == 0
    assert [image.size for image in rendered.prompt_images + rendered.images] == [(512, 512)] * 2
    # One decode call: the answer's drawing (its first 1,024 codes), then the problem image (the prompt's span).
    drawn = vocab.ids_to_codes(torch.tensor(record["completion_ids"][:1024])).tolist()
    (problem,) = vocab.parse_segments([record["prompt_ids"]]).complete_codes.reshape(1, -1).tolist()
    assert decoder.codes == [drawn, problem]
    page = rendered.to_html()
    assert 'alt="prompt image 1"' in page and 'alt="image 1"' in page and record["question"] in page
    strip = rendered.to_png(width=512)
    assert strip.height > 2 * rendered.image_display_size  # the problem image and the drawing
