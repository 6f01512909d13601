import json
import os
import re

import pytest
import torch

from trl_omni import ImageVocabulary, InterleavedDataCollator
from trl_omni.demo import SKILLS, demo_model, make_uniskills
from trl_omni.scripts.demo import DemoArguments, completion_budget, evaluate, format_table, main, make_parser


class _ScriptedModel:
    """Stands in for a policy whose `generate` returns given completions (to test the scoring, not the model)."""

    training = False
    device = torch.device("cpu")

    def __init__(self, completions, pad_token_id):
        self.completions, self.pad_token_id, self.calls = completions, pad_token_id, 0

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        batch = self.completions[self.calls : self.calls + input_ids.shape[0]]
        self.calls += input_ids.shape[0]
        out = torch.full((input_ids.shape[0], max_new_tokens), self.pad_token_id, dtype=torch.long)
        for row, ids in enumerate(batch):
            out[row, : len(ids)] = torch.tensor(ids)
        return torch.cat([input_ids, out], dim=1)


@pytest.fixture(scope="module")
def setup():
    model, processor = demo_model(seed=0, image_size=24)
    vocab = ImageVocabulary.from_model(model, processor)
    _, test_rows = make_uniskills(vocab.grid_size, num_train=0, num_test=8, seed=0)
    collator = InterleavedDataCollator(processor, vocab, template="plain")
    return processor, vocab, collator, test_rows


def test_evaluate_scores_reference_and_wrong_completions(setup):
    processor, vocab, collator, rows = setup
    batch = collator(rows)
    references = [ids[labels != -100].tolist() for ids, labels in zip(batch["input_ids"], batch["labels"])]
    budget = completion_budget(collator, rows)
    assert budget == max(len(ids) for ids in references) + 8
    pad = processor.tokenizer.pad_token_id

    perfect = evaluate(_ScriptedModel(references, pad), processor, vocab, collator, rows, budget, batch_size=3)
    assert perfect.metrics["all"] == {"accuracy": 1.0, "complete_image_rate": 1.0, "drawing_accuracy": 1.0, "n": 8}
    assert set(perfect.metrics) == {*SKILLS, "all"}
    # The sequences are the prompts (unpadded) followed by the completions cut at EOS.
    prompts = collator.encode_prompts(rows)
    assert perfect.sequences == [p + r for p, r in zip(prompts, references)]

    # Wrong answers, no images: everything scores 0; a drawing without the answer is not a correct drawing.
    tokenizer = processor.tokenizer
    wrong = [tokenizer("THOUGHT 0: no.\nFinal Answer: 99", add_special_tokens=False)["input_ids"]] * len(rows)
    zero = evaluate(_ScriptedModel(wrong, pad), processor, vocab, collator, rows, budget)
    assert zero.metrics["all"]["accuracy"] == zero.metrics["all"]["complete_image_rate"] == 0.0
    blank = vocab.image_span_ids(torch.zeros(vocab.tokens_per_image, dtype=torch.long)).tolist()
    drawn = evaluate(_ScriptedModel([blank] * len(rows), pad), processor, vocab, collator, rows, budget)
    assert drawn.metrics["all"]["complete_image_rate"] == 1.0
    assert drawn.metrics["all"]["drawing_accuracy"] < 1.0


def test_parser_defaults_and_options():
    parser = make_parser(prog="trl-omni demo")
    (args,) = parser.parse_args_and_config(["--output_dir", "x", "--sft_steps", "5", "--rl_steps", "0", "--seed", "3"])
    assert (args.output_dir, args.sft_steps, args.rl_steps, args.seed) == ("x", 5, 0, 3)
    assert "--num_train" in parser.format_help() and "--num_test" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args_and_config(["--reward", "nonsense"])


@pytest.mark.parametrize("reward", ["calibrated", "accuracy_perception", "reference"])
def test_demo_smoke_run(tmp_path, capsys, reward):
    args = DemoArguments(
        reward=reward,
        output_dir=str(tmp_path / "demo"),
        sft_steps=2,
        rl_steps=1,
        num_train=8,
        num_test=8,
        rl_batch_size=4,
        num_generations=2,
        num_report_samples=2,
        hidden_size=64,
    )
    summary = main(args)
    printed = capsys.readouterr().out
    stages = ["untrained", "PeSFT", "PeSFT+PeRPO"]
    assert list(summary["results"]) == stages
    with open(os.path.join(args.output_dir, "results.json")) as handle:
        assert json.load(handle)["results"] == summary["results"]
    # The printed table is the one in results.json.
    assert format_table(summary["results"]) in printed
    for stage in stages:
        metrics = summary["results"][stage]
        assert set(metrics) == {*SKILLS, "all"}
        assert sum(metrics[skill]["n"] for skill in SKILLS) == metrics["all"]["n"] == 8
        for key in ("accuracy", "complete_image_rate", "drawing_accuracy"):
            assert 0.0 <= metrics["all"][key] <= 1.0
            mean = sum(metrics[s][key] * metrics[s]["n"] for s in SKILLS) / 8
            assert metrics["all"][key] == pytest.approx(mean)
    # Checkpoints of both stages, loadable as models.
    for stage_dir in ("pesft", "perpo"):
        files = os.listdir(os.path.join(args.output_dir, stage_dir))
        assert "config.json" in files and any(name.endswith(".safetensors") for name in files)
    # The report holds the table and 2 rendered trajectories per stage, with images embedded.
    with open(os.path.join(args.output_dir, "report.html"), encoding="utf-8") as handle:
        page = handle.read()
    assert 'class="demo-results"' in page
    for stage in stages:
        assert len(re.findall(re.escape(f"{stage}: uniskills-test-"), page)) == 2
    assert page.count("data:image/png;base64,") >= 6  # at least the 6 problem images


def test_demo_rejects_bad_batch(tmp_path):
    with pytest.raises(ValueError, match="multiple of --num_generations"):
        main(DemoArguments(output_dir=str(tmp_path), rl_batch_size=6, num_generations=4))
    with pytest.raises(ValueError, match="--reference_weight must lie in"):
        main(DemoArguments(output_dir=str(tmp_path), reward="reference", reference_weight=1.0))
