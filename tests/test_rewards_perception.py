"""PerceptionReward (2D TV on codebook embeddings) and PerceptionCalibratedReward, on hand-computed grids."""

import math

import pytest
import torch

from trl_omni.models import ImageVocabulary
from trl_omni.rewards import PerceptionCalibratedReward, PerceptionReward, total_variation_energy
from trl_omni.testing import ANSWER_CLOSE, ANSWER_OPEN, REASONING_CLOSE, REASONING_OPEN, tiny_chameleon


@pytest.fixture(scope="module")
def tiny():
    model, processor = tiny_chameleon(seed=0)
    return model, processor, ImageVocabulary.from_model(model, processor)


def _reference_energy(codebook, grid):
    """Straight from the formula, with Python loops: E = (TV_x + TV_y) / D."""
    h, w = len(grid), len(grid[0])
    d = codebook.shape[1]
    tv_x = sum(
        float(((codebook[grid[i][j + 1]] - codebook[grid[i][j]]) ** 2).sum()) for i in range(h) for j in range(w - 1)
    )
    tv_y = sum(
        float(((codebook[grid[i + 1][j]] - codebook[grid[i][j]]) ** 2).sum()) for i in range(h - 1) for j in range(w)
    )
    return (tv_x / (h * (w - 1)) + tv_y / ((h - 1) * w)) / d


def _image(vocab, grid):
    return vocab.image_span_ids(torch.tensor(grid)).tolist()


def _text(processor, text):
    return processor.tokenizer.encode(text, add_special_tokens=False)


def test_constant_image_scores_one(tiny):
    _, processor, vocab = tiny
    h, w = vocab.grid_size
    ids = _text(processor, "Let me draw.") + _image(vocab, [[5] * w for _ in range(h)]) + _text(processor, " done")
    for mapping in ("inverse", "exp"):
        assert PerceptionReward(vocab, mapping=mapping).score([ids]) == [1.0]


@pytest.mark.parametrize("method", ["table", "gather"])
def test_checkerboard_matches_formula(tiny, method):
    _, _, vocab = tiny
    h, w = vocab.grid_size
    a, b = 3, 17
    grid = [[a if (i + j) % 2 == 0 else b for j in range(w)] for i in range(h)]
    # every horizontal and vertical neighbour pair differs: TV_x = TV_y = ||E[a] - E[b]||^2
    diff = float(((vocab.codebook[a] - vocab.codebook[b]) ** 2).sum())
    energy = 2 * diff / vocab.codebook_dim
    assert energy == pytest.approx(_reference_energy(vocab.codebook, grid), rel=1e-5)
    tau = 3.0
    inverse = PerceptionReward(vocab, tau=tau, method=method).score([_image(vocab, grid)])[0]
    exp = PerceptionReward(vocab, tau=tau, mapping="exp", method=method).score([_image(vocab, grid)])[0]
    assert inverse == pytest.approx(1 / (1 + energy / tau), rel=1e-5)
    assert exp == pytest.approx(math.exp(-energy / tau), rel=1e-5)
    assert 0 < inverse < 1


def test_tv_energy_by_hand_on_a_two_by_two_grid():
    # codebook: 0 -> (0, 0), 1 -> (3, 4); grid [[0, 1], [0, 1]]: TV_x = 25 (both rows), TV_y = 0, D = 2
    codebook = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    z = codebook[torch.tensor([[[0, 1], [0, 1]]])]
    assert total_variation_energy(z).tolist() == [12.5]
    # a single row only has horizontal pairs: TV_x = 25, TV_y = 0, E = 25 / 2
    assert total_variation_energy(codebook[torch.tensor([[[0, 1, 0]]])]).tolist() == [12.5]


def _three_images(vocab, processor):
    h, w = vocab.grid_size
    constant = [[0] * w for _ in range(h)]
    stripes = [[(j % 2) * 7 for j in range(w)] for _ in range(h)]
    noise = torch.randint(0, vocab.num_codes, (h, w), generator=torch.Generator().manual_seed(0)).tolist()
    grids = [constant, stripes, noise]
    ids = []
    for grid in grids:
        ids += _text(processor, " step") + _image(vocab, grid)
    scores = [1 / (1 + _reference_energy(vocab.codebook, g) / 3.0) for g in grids]
    return ids, scores


@pytest.mark.parametrize("aggregation", ["min", "mean", "max", "median"])
def test_aggregations(tiny, aggregation):
    _, processor, vocab = tiny
    ids, scores = _three_images(vocab, processor)
    two = _text(processor, "x") + _image(vocab, [[0] * vocab.grid_size[1]] * vocab.grid_size[0])
    two += _image(vocab, [[(j % 2) * 7 for j in range(vocab.grid_size[1])]] * vocab.grid_size[0])
    expected_three = {"min": min(scores), "mean": sum(scores) / 3, "max": max(scores), "median": sorted(scores)[1]}
    expected_two = {"min": scores[1], "mean": (scores[0] + scores[1]) / 2, "max": 1.0,
                    "median": (scores[0] + scores[1]) / 2}  # fmt: skip
    out = PerceptionReward(vocab, aggregation=aggregation).score([ids, _text(processor, "no image"), two])
    assert out[0] == pytest.approx(expected_three[aggregation], rel=1e-5)
    assert out[1] is None
    assert out[2] == pytest.approx(expected_two[aggregation], rel=1e-5)


def test_none_paths_and_incomplete_segments_are_counted(tiny):
    _, processor, vocab = tiny
    h, w = vocab.grid_size
    full = _image(vocab, [[1] * w for _ in range(h)])
    truncated = full[: vocab.span_length // 2]  # BOI + half the codes, generation cut
    unclosed = full[:-1]  # all codes, no EOI
    metrics = {}
    reward = PerceptionReward(vocab)
    out = reward(
        prompts=["p"] * 5,
        completions=["c"] * 5,
        completion_ids=[
            [],
            _text(processor, "text only"),
            truncated,
            unclosed + _text(processor, " x"),
            truncated + full,
        ],
        log_metric=lambda name, value: metrics.__setitem__(name, value),
    )
    assert out == [None, None, None, None, 1.0]
    assert metrics == {"perception_reward/incomplete_images": 3.0, "perception_reward/complete_images": 1.0}
    with pytest.raises(ValueError, match="completion_ids"):
        reward(prompts=["p"], completions=["c"])


@pytest.mark.parametrize("method", ["table", "gather"])
def test_vectorised_equals_per_sample_reference(tiny, method):
    _, processor, vocab = tiny
    h, w = vocab.grid_size
    gen = torch.Generator().manual_seed(1)
    batch, expected = [], []
    for i in range(12):
        ids, scores = _text(processor, "a"), []
        for _ in range(i % 4):  # 0..3 images, varied smoothness
            grid = torch.randint(0, 1 + 5 * i, (h, w), generator=gen).clamp(max=vocab.num_codes - 1).tolist()
            ids += _image(vocab, grid) + _text(processor, " b")
            scores.append(1 / (1 + _reference_energy(vocab.codebook, grid) / 2.0))
        batch.append(ids)
        expected.append(min(scores) if scores else None)
    out = PerceptionReward(vocab, tau=2.0, method=method, max_chunk_elements=h * w * vocab.codebook_dim * 2)
    out = out.score(batch)
    for got, want in zip(out, expected):
        assert (got is None) == (want is None)
        if want is not None:
            assert got == pytest.approx(want, rel=1e-5)
    # padded tensor input gives the same result
    length = max(len(r) for r in batch)
    padded = torch.tensor([r + [processor.tokenizer.pad_token_id] * (length - len(r)) for r in batch])
    from_tensor = PerceptionReward(vocab, tau=2.0, method=method).score(padded)
    assert [v is None for v in from_tensor] == [v is None for v in out]
    assert [v for v in from_tensor if v is not None] == pytest.approx([v for v in out if v is not None], rel=1e-6)


def test_bad_arguments(tiny):
    vocab = tiny[2]
    for kwargs in ({"tau": 0}, {"mapping": "linear"}, {"aggregation": "sum"}, {"method": "loop"}):
        with pytest.raises(ValueError):
            PerceptionReward(vocab, **kwargs)


# ---------------------------------------------------------------------------------------------- calibrated reward
def _templated(processor, vocab, answer, image_grid=None):
    ids = _text(processor, "Let me think. ") + _text(processor, REASONING_OPEN)
    if image_grid is not None:
        ids += _image(vocab, image_grid)
    ids += _text(processor, f"I see it.{REASONING_CLOSE}{ANSWER_OPEN}{answer}{ANSWER_CLOSE}")
    return ids


def test_calibrated_combination(tiny):
    _, processor, vocab = tiny
    h, w = vocab.grid_size
    checker = [[3 if (i + j) % 2 == 0 else 17 for j in range(w)] for i in range(h)]
    pe = PerceptionReward(vocab).score([_image(vocab, checker)])[0]
    reward = PerceptionCalibratedReward(vocab, processing_class=processor)
    assert reward.__name__ == reward.name == "perception_calibrated"
    ids = [
        _templated(processor, vocab, "2", checker),  # right, formatted, with an image
        _templated(processor, vocab, "2"),  # right, formatted, no image
        _templated(processor, vocab, "5", checker),  # wrong, formatted, with an image
        _text(processor, "2"),  # no format, no answer
        _templated(processor, vocab, "2"),  # no ground truth
    ]
    texts = [processor.tokenizer.decode(i, skip_special_tokens=True) for i in ids]
    metrics = {}
    out = reward(["q"] * 5, texts, ids, answer=["2", "2", "2", "2", None],
                 log_metric=lambda n, v: metrics.__setitem__(n, v))  # fmt: skip
    assert out[0] == pytest.approx(0.95 * (0.9 + 0.1) + 0.05 * pe)
    assert out[1] == pytest.approx(1.0)
    assert out[2] == pytest.approx(0.95 * 0.1 + 0.05 * pe)
    assert out[3] == 0.0
    assert out[4] is None
    assert metrics["perception_calibrated/with_image"] == pytest.approx(2 / 5)
    assert metrics["perception_calibrated/perception"] == pytest.approx(pe)
    custom = PerceptionCalibratedReward(vocab, perception_weight=0.5, accuracy_weight=0.5, format_weight=0.5,
                                        processing_class=processor)  # fmt: skip
    assert custom(["q"], texts[:1], ids[:1], answer=["2"])[0] == pytest.approx(0.5 * 1.0 + 0.5 * pe)


def test_image_segments_from_the_trainer_give_the_same_scores(tiny):
    _, processor, vocab = tiny
    ids, _ = _three_images(vocab, processor)
    h, w = vocab.grid_size
    truncated = _image(vocab, [[1] * w for _ in range(h)])[:10]
    batch = [ids, _text(processor, "no image"), truncated]
    segments = vocab.parse_segments(batch).per_row(len(batch))
    reward = PerceptionReward(vocab, aggregation="mean")
    metrics, metrics_from_segments = {}, {}
    expected = reward(["p"] * 3, ["c"] * 3, batch, log_metric=metrics.__setitem__)
    got = reward(["p"] * 3, ["c"] * 3, batch, image_segments=segments, log_metric=metrics_from_segments.__setitem__)
    assert got[1:] == [None, None] and got[0] == pytest.approx(expected[0], rel=1e-6)
    assert (
        metrics_from_segments
        == metrics
        == {
            "perception_reward/incomplete_images": 1.0,
            "perception_reward/complete_images": 3.0,
        }
    )
    # segments that do not match the batch are ignored: the ids are parsed instead
    assert reward(["p"] * 3, ["c"] * 3, batch, image_segments=segments[:1]) == expected
