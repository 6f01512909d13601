"""ReferenceImageReward: drawn images against the row's reference drawings in codebook-embedding space."""

import math
import random

import pytest
import torch
from datasets import Dataset

from trl_omni.data import add_reference_images, image_part, interleaved_features, part_list_feature
from trl_omni.models import ImageVocabulary
from trl_omni.rewards import PerceptionCalibratedReward, ReferenceImageReward, get_reward
from trl_omni.testing import tiny_chameleon


@pytest.fixture(scope="module")
def tiny():
    model, processor = tiny_chameleon(seed=0)
    return model, processor, ImageVocabulary.from_model(model, processor)


def _text(processor, text):
    return processor.tokenizer.encode(text, add_special_tokens=False)


def _drawing(processor, vocab, *grids, text="I draw."):
    ids = _text(processor, text)
    for grid in grids:
        ids += vocab.image_span_ids(torch.as_tensor(grid)).tolist() + _text(processor, " then")
    return ids


def _figure(vocab, background=0, color=5, seed=None):
    """A reference drawing: background with a filled square and a mark (or noise when `seed` is given)."""
    h, w = vocab.grid_size
    if seed is not None:
        return torch.randint(0, vocab.num_codes, (h, w), generator=torch.Generator().manual_seed(seed))
    grid = torch.full((h, w), background)
    grid[2:6, 2:6] = color
    grid[3, 3] = color + 4
    return grid


def _refs(*grids):
    return [image_part(codes=torch.as_tensor(g).flatten().tolist()) for g in grids]


def _by_hand(vocab, drawn, reference):
    """The documented formula with loops: mean over cells of exp(-||E[d]-E[r]||^2 / s), chance corrected."""
    codebook = vocab.codebook.double()
    k = codebook.shape[0]
    scale = sum(float(((codebook[a] - codebook[b]) ** 2).sum()) for a in range(k) for b in range(k) if a != b)
    scale /= k * (k - 1)
    drawn, reference = torch.as_tensor(drawn).flatten().tolist(), torch.as_tensor(reference).flatten().tolist()

    def mean_similarity(a_codes):
        return sum(
            math.exp(-float(((codebook[a] - codebook[b]) ** 2).sum()) / scale) for a, b in zip(a_codes, reference)
        ) / len(reference)

    similarity = mean_similarity(drawn)
    mode = max(set(reference), key=lambda c: (reference.count(c), -c))
    baseline = mean_similarity([mode] * len(reference))
    return 1.0 if similarity >= 1 - 1e-6 else min(max((similarity - baseline) / (1 - baseline), 0.0), 1.0)


@pytest.mark.parametrize("metric", ["distance", "cosine"])
def test_identical_unrelated_shifted_blank_and_missing(tiny, metric):
    _, processor, vocab = tiny
    reference = _figure(vocab)
    drawings = [reference, _figure(vocab, seed=1), torch.roll(reference, 1, dims=1), torch.zeros_like(reference)]
    ids = [_drawing(processor, vocab, g) for g in drawings] + [
        _text(processor, "no drawing"),
        _drawing(processor, vocab, reference),
    ]
    refs = [_refs(reference)] * 5 + [None]
    reward = ReferenceImageReward(vocab, metric=metric)
    identical, unrelated, shifted, blank, nothing, unscored = reward(["p"] * 6, ["c"] * 6, ids, reference_images=refs)
    assert identical == 1.0
    assert unrelated < 0.1
    assert 0.2 < shifted < 0.9  # in between: the square overlaps itself by three quarters
    assert blank == 0.0 and nothing == 0.0  # a flat image is the chance baseline; no drawing scores 0
    assert unscored is None
    assert reward(["p"], ["c"], [ids[0]], reference_images=[[]]) == [None]


def test_matches_the_formula_by_hand(tiny):
    _, processor, vocab = tiny
    reference = _figure(vocab)
    for drawn in (torch.roll(reference, 1, dims=0), _figure(vocab, color=9), _figure(vocab, seed=3)):
        expected = _by_hand(vocab, drawn, reference)
        got = ReferenceImageReward(vocab)(
            ["p"], ["c"], [_drawing(processor, vocab, drawn)], reference_images=[_refs(reference)]
        )
        assert got[0] == pytest.approx(expected, abs=1e-5)
    raw = ReferenceImageReward(vocab, chance_corrected=False)
    flat = raw(
        ["p"], ["c"], [_drawing(processor, vocab, torch.zeros_like(reference))], reference_images=[_refs(reference)]
    )
    assert flat[0] > 0.7  # why the chance correction is the default: a blank image is "mostly right"


def test_alignment_when_counts_differ(tiny):
    _, processor, vocab = tiny
    target, other = _figure(vocab), _figure(vocab, seed=5)
    one_wrong_then_right = _drawing(processor, vocab, other, target)
    refs = [_refs(target)]
    order = ReferenceImageReward(vocab, alignment="order")
    best = ReferenceImageReward(vocab, alignment="best")
    assert order(["p"], ["c"], [one_wrong_then_right], reference_images=refs)[0] < 0.1  # 1st drawn vs 1st reference
    assert best(["p"], ["c"], [one_wrong_then_right], reference_images=refs) == [1.0]
    # two references, one drawing: the missing one scores 0, the completion gets the mean
    two_refs = [_refs(target, other)]
    assert order(["p"], ["c"], [_drawing(processor, vocab, target)], reference_images=two_refs) == [0.5]
    assert best(["p"], ["c"], [_drawing(processor, vocab, other)], reference_images=two_refs) == [0.5]


@pytest.mark.parametrize("alignment", ["order", "best"])
@pytest.mark.parametrize("metric", ["distance", "cosine"])
def test_batch_equals_per_sample(tiny, alignment, metric):
    _, processor, vocab = tiny
    rng = random.Random(0)
    pool = [_figure(vocab), _figure(vocab, color=7), *[_figure(vocab, seed=s) for s in range(4)]]
    ids, refs = [], []
    for _ in range(12):
        ids.append(_drawing(processor, vocab, *rng.sample(pool, rng.randint(0, 3))))
        refs.append(_refs(*rng.sample(pool, rng.randint(0, 3))) if rng.random() < 0.85 else None)
    reward = ReferenceImageReward(vocab, alignment=alignment, metric=metric)
    batch = reward(["p"] * 12, ["c"] * 12, ids, reference_images=refs)
    single = [reward(["p"], ["c"], [i], reference_images=[r])[0] for i, r in zip(ids, refs)]
    assert batch == pytest.approx(single, abs=1e-6)
    assert any(v is None for v in batch) and any(v is not None and 0 < v < 1 for v in batch)
    # the gather path (codebooks too large for a table) and PeRPO's pre-parsed segments give the same scores
    gathered = ReferenceImageReward(vocab, alignment=alignment, metric=metric, max_table_bytes=0)
    segments = vocab.parse_segments(ids).per_row(len(ids))
    assert gathered(["p"] * 12, ["c"] * 12, ids, reference_images=refs, image_segments=segments) == pytest.approx(
        batch, abs=1e-6
    )


def test_reference_forms_and_errors(tiny):
    model, processor, vocab = tiny
    reference = _figure(vocab)
    ids = [_drawing(processor, vocab, reference)]
    reward = ReferenceImageReward(vocab)
    for form in (reference, reference.flatten().tolist(), reference.numpy(), _refs(reference)[0]):
        assert reward(["p"], ["c"], ids, reference_images=[[form]]) == [1.0]
    n = vocab.tokens_per_image
    with pytest.raises(ValueError, match=r"Row 0 \(id 'r7'\), field 'reference_images\[0\]': found 3 codes"):
        reward(["p"], ["c"], ids, reference_images=[[[1, 2, 3]]], id=["r7"])
    with pytest.raises(ValueError, match=rf"found {n} codes in \[{vocab.num_codes}, {vocab.num_codes}\]; this model"):
        reward(["p"], ["c"], ids, reference_images=[[[vocab.num_codes] * n]])
    with pytest.raises(ValueError, match="must be integers, got float64"):
        reward(["p"], ["c"], ids, reference_images=[[[0.5] * n]])
    with pytest.raises(ValueError, match="must be integers, got bool"):
        reward(["p"], ["c"], ids, reference_images=[[[True] * n]])
    with pytest.raises(ValueError, match="expected a list of reference images, got dict"):
        reward(["p"], ["c"], ids, reference_images=[_refs(reference)[0]])
    with pytest.raises(KeyError, match="no column 'reference_images'"):
        reward(["p"], ["c"], ids, answer=["x"])
    from PIL import Image

    picture = Image.new("RGB", (32, 32), (200, 30, 30))
    with pytest.raises(ValueError, match="has no codes. Fix: pre-tokenize the column"):
        reward(["p"], ["c"], ids, reference_images=[[image_part(picture)]])
    # with an encoder, a picture scores like its codes (encoded once, then cached)
    from trl_omni.models import ImageEncoder

    encoder = ImageEncoder(model, processor)
    codes = encoder.encode([picture])[0]
    encoding = ReferenceImageReward(vocab, image_encoder=encoder)
    drawn = [_drawing(processor, vocab, codes.view(vocab.grid_size))]
    assert encoding(["p"], ["c"], drawn, reference_images=[[image_part(picture)]]) == [1.0]
    assert len(encoding._encoded) == 1


def test_anole_layout(anole):
    # The real-layout Anole checkpoint: 8,192 x 256 codebook, 32x32 grid, image ids 4..8195. The gather path: the
    # default table path (same formula, checked against it on the tiny model) would build a 256 MiB table here.
    vocab = ImageVocabulary.from_model(anole.model, anole.processor)
    assert vocab.grid_size == (32, 32) and vocab.num_codes == 8192
    generator = torch.Generator().manual_seed(1)
    reference = torch.full((32, 32), 17)
    reference[4:20, 6:22] = 99  # two shapes on a background
    reference[22:30, 2:30] = torch.randint(0, 8192, (8, 28), generator=generator)
    drawings = [reference, torch.roll(reference, 3, dims=1), torch.randint(0, 8192, (32, 32), generator=generator)]
    ids = [anole.processor.tokenizer.encode("I draw.", add_special_tokens=False) + vocab.image_span_ids(g).tolist()
           for g in drawings]  # fmt: skip
    reward = ReferenceImageReward(vocab, max_table_bytes=0)
    identical, shifted, unrelated = reward(["p"] * 3, ["c"] * 3, ids, reference_images=[_refs(reference)] * 3)
    assert identical == 1.0 and unrelated < 0.05 and unrelated < shifted < 1.0


def test_registry_and_calibrated_combination(tiny):
    _, processor, vocab = tiny
    from trl_omni.rewards import PerceptionReward

    # one distance table per device, shared by every reward holding the vocabulary
    assert PerceptionReward(vocab).distance_table("cpu") is vocab.codebook_distances("cpu")
    assert isinstance(get_reward("reference_image", image_vocabulary=vocab).__wrapped__, ReferenceImageReward)
    reference = _figure(vocab)
    shifted = torch.roll(reference, 1, dims=1)
    completion = _drawing(processor, vocab, shifted, text="THOUGHT 0: draw.") + _text(processor, " Final Answer: 2")
    calibrated = PerceptionCalibratedReward(vocab, format_style="thought", reference_weight=0.3)
    text = "THOUGHT 0: draw. then Final Answer: 2"
    metrics = {}
    out = calibrated(["p", "p"], [text, text], [completion, completion], answer=["2", "2"],
                     reference_images=[_refs(reference), None], log_metric=metrics.__setitem__)  # fmt: skip
    ref = ReferenceImageReward(vocab)(["p"], ["c"], [completion], reference_images=[_refs(reference)])[0]
    pe = calibrated.perception.score([completion])[0]
    assert out[0] == pytest.approx((1 - 0.05 - 0.3) * 1.0 + 0.05 * pe + 0.3 * ref)
    assert out[1] == pytest.approx((1 - 0.05) * 1.0 + 0.05 * pe)  # no reference: the authors' combination
    assert metrics["perception_calibrated/reference"] == pytest.approx(ref)
    with pytest.raises(ValueError, match="reference_weight must lie in"):
        PerceptionCalibratedReward(vocab, reference_weight=0.99)


def test_add_reference_images_and_demo_rows(tiny):
    _, _, vocab = tiny
    from trl_omni.demo import make_uniskills

    train, _ = make_uniskills((6, 6), num_train=8, num_test=4, seed=0)
    row = train[0]
    assert row["reference_images"] == [p for p in row["completion"] if p["type"] == "image"]
    rows = [{**r, "reference_images": None} for r in train]
    assert [r["reference_images"] for r in add_reference_images(rows)] == [r["reference_images"] for r in train]
    features = interleaved_features(reference_images=part_list_feature(), skill=interleaved_features()["id"])
    dataset = add_reference_images(Dataset.from_list([{k: v for k, v in r.items()} for r in rows], features=features))
    assert [[p["codes"] for p in refs] for refs in dataset["reference_images"]] == [
        [p["codes"] for p in r["reference_images"]] for r in train
    ]


def test_inside_perpo_trainer(tmp_path):
    from trl_omni.trainers import PeRPOConfig, PeRPOTrainer

    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    reference = _refs(_figure(vocab))
    reward = ReferenceImageReward(vocab)
    calls = []

    def recorded(prompts, completions, completion_ids, **kwargs):
        out = reward(prompts, completions, completion_ids, **kwargs)
        calls.append((completion_ids, kwargs["reference_images"], kwargs["image_segments"], out))
        return out

    recorded.__name__ = "reference_image_reward"
    calibrated = PerceptionCalibratedReward(vocab, processing_class=processor, reference_weight=0.3)
    args = PeRPOConfig(
        output_dir=str(tmp_path), max_completion_length=80, num_generations=2, per_device_train_batch_size=4,
        max_steps=1, bf16=False, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
        generation_kwargs={"sequence_bias": {(vocab.boi_token_id,): 8.0}},  # the untrained model opens images
    )  # fmt: skip
    dataset = Dataset.from_dict(
        {"prompt": ["Let me draw it.", "Draw the square."] * 2, "answer": ["A", "B"] * 2,
         "reference_images": [reference, reference, reference, None]}
    )  # fmt: skip
    trainer = PeRPOTrainer(
        model, reward_funcs=[recorded, calibrated], args=args, processing_class=processor, train_dataset=dataset
    )
    assert calibrated.reference.device == trainer.accelerator.device  # scores on the trainer's device
    trainer.train()
    assert len(calls) == 1
    scored = 0
    for completion_ids, references, segments, out in calls:
        assert len(segments) == len(completion_ids)  # PeRPO hands the reward its parsed segments
        reparsed = reward(["p"] * len(out), ["c"] * len(out), completion_ids, reference_images=references)
        assert out == pytest.approx(reparsed)
        for value, refs in zip(out, references):
            assert (value is None) == (refs is None)
            scored += value is not None
    assert scored > 0
    log = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert math.isfinite(log["rewards/reference_image_reward/mean"])
    assert math.isfinite(log["perception_calibrated/reference"])
