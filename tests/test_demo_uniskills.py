import numpy as np
import pytest
import torch

from trl_omni import ImageVocabulary, InterleavedDataCollator, PerceptionReward
from trl_omni.demo import (
    COLOR_NAMES,
    DEMO_PALETTE,
    SKILLS,
    answer_from_drawing,
    demo_decoder,
    demo_model,
    make_uniskills,
    row_images,
    row_question,
    solve_problem,
)


@pytest.fixture(scope="module")
def demo():
    model, processor = demo_model(seed=0)
    return model, processor, ImageVocabulary.from_model(model, processor)


@pytest.fixture(scope="module")
def suite(demo):
    return make_uniskills(demo[2].grid_size, num_train=96, num_test=32, seed=3)


def _key(row):
    return (row["skill"], row_question(row), tuple(row_images(row, "prompt")[0]))


def test_demo_model_codebook_is_the_palette(demo):
    model, processor, vocab = demo
    assert vocab.num_codes == len(DEMO_PALETTE) == len(COLOR_NAMES)
    # Codes are colours: codebook distances are RGB distances (scaled to the unit cube).
    rgb = torch.from_numpy(DEMO_PALETTE.astype(np.float32)) / 255.0
    torch.testing.assert_close(vocab.codebook[:, :3], rgb)
    assert torch.count_nonzero(vocab.codebook[:, 3:]) == 0
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    assert model.config.hidden_size <= 256 and model.config.num_hidden_layers <= 4


def test_deterministic(demo):
    grid = demo[2].grid_size
    assert make_uniskills(grid, 24, 8, seed=1) == make_uniskills(grid, 24, 8, seed=1)
    assert make_uniskills(grid, 24, 8, seed=1) != make_uniskills(grid, 24, 8, seed=2)
    # The test split does not depend on how many training rows are asked for.
    assert make_uniskills(grid, 24, 8, seed=1)[1] == make_uniskills(grid, 80, 8, seed=1)[1]


def test_splits_disjoint_balanced_and_unique(suite):
    train, test = suite
    assert len(train) == 96 and len(test) == 32
    train_keys, test_keys = {_key(r) for r in train}, {_key(r) for r in test}
    assert len(train_keys) == len(train) and len(test_keys) == len(test)
    assert not train_keys & test_keys
    for rows, per_skill in ((train, 24), (test, 8)):
        assert [r["skill"] for r in rows[:4]] == list(SKILLS)
        assert {s: sum(r["skill"] == s for r in rows) for s in SKILLS} == dict.fromkeys(SKILLS, per_skill)
    assert len({r["id"] for r in train + test}) == len(train) + len(test)


def test_answers_derivable_from_problem_and_drawing(suite, demo):
    grid = demo[2].grid_size
    answers = {s: set() for s in SKILLS}
    for row in suite[0] + suite[1]:
        question = row_question(row)
        (problem,), (drawing,) = row_images(row, "prompt"), row_images(row, "completion")
        assert solve_problem(row["skill"], question, problem, grid) == row["answer"]
        assert answer_from_drawing(row["skill"], question, drawing, grid) == row["answer"]
        assert row["answer"] in row["completion"][-1]["text"]
        assert problem != drawing  # the functional image is a new image, not a copy of the problem
        answers[row["skill"]].add(row["answer"])
    # Answers vary: no skill can be solved by a constant.
    assert all(len(values) >= 3 for values in answers.values())


def test_solvers_reject_wrong_images(demo):
    grid = demo[2].grid_size
    empty = [0] * (grid[0] * grid[1])
    with pytest.raises(ValueError, match="holds 0 objects"):
        solve_problem("zoom", "Zoom in on the top left quadrant. What colour is the object there?", empty, grid)
    with pytest.raises(ValueError, match="codes for a"):
        solve_problem("line", "x", empty[:-1], grid)
    assert answer_from_drawing("zoom", "Zoom in on the top left quadrant.", empty, grid) is None
    with pytest.raises(ValueError, match="Unknown Uni-Skills"):
        make_uniskills(grid, 4, 4, skills=["rotate"])
    with pytest.raises(ValueError, match="even code grid"):
        make_uniskills((5, 5), 4, 4)


def test_images_render_exactly(suite, demo):
    vocab = demo[2]
    decoder = demo_decoder(vocab.grid_size, patch_size=4)
    codes = torch.tensor([c for row in suite[1] for c in row_images(row, "prompt") + row_images(row, "completion")])
    images = decoder.decode(codes.reshape(-1, *vocab.grid_size))
    assert images[0].size == (vocab.grid_size[1] * 4, vocab.grid_size[0] * 4)
    assert torch.equal(decoder.encode(images).reshape(len(codes), -1), codes)
    # A zoom drawing shows the object's colour exactly.
    zoom = next(row for row in suite[1] if row["skill"] == "zoom")
    drawn = np.asarray(
        decoder.decode(torch.tensor([row_images(zoom, "completion")[0]]).reshape(1, *vocab.grid_size))[0]
    )
    colors = {tuple(p) for p in drawn.reshape(-1, 3).tolist()} - {(0, 0, 0)}
    assert colors == {tuple(DEMO_PALETTE[COLOR_NAMES.index(zoom["answer"])].tolist())}


def test_rows_collate_and_round_trip(suite, demo):
    model, processor, vocab = demo
    rows = suite[0][:8]
    collator = InterleavedDataCollator(processor, vocab, template="plain")
    batch = collator(rows)
    segments = vocab.parse_segments(batch["input_ids"], attention_mask=batch["attention_mask"])
    assert bool(segments.complete.all()) and int(segments.stray_image_tokens.sum()) == 0
    expected = [torch.tensor(row_images(r, "prompt") + row_images(r, "completion")) for r in rows]
    for index, row_segments in enumerate(segments.per_row(len(rows))):
        assert len(row_segments) == 2
        got = torch.stack([s.codes.reshape(-1) for s in row_segments])
        assert torch.equal(got, expected[index])
    # Only the drawn (completion) image is trained, the problem image is masked.
    trained_images = vocab.is_image_token(batch["labels"]).sum(dim=1)
    assert trained_images.tolist() == [vocab.tokens_per_image] * len(rows)
    prompts = collator.encode_prompt_batch(rows)
    assert prompts["input_ids"].shape[0] == len(rows)


def test_perception_reward_measures_palette_edges(suite, demo):
    _, _, vocab = demo
    reward = PerceptionReward(vocab)
    flat = vocab.image_span_ids(torch.zeros(vocab.tokens_per_image, dtype=torch.long)).tolist()
    drawn = vocab.image_span_ids(torch.tensor(row_images(suite[1][2], "completion")[0])).tolist()
    smooth, edgy = reward.score([flat, drawn])
    assert smooth > edgy  # a uniform image has no colour edges; a drawing with objects does
