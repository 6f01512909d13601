"""ModelReward (frozen helper model), the reward registry and the error-locating wrapper."""

import math
import sys
import textwrap
import types

import pytest
import torch

from trl_omni.rewards import (
    ModelReward,
    PerceptionReward,
    RewardBatch,
    RewardError,
    SafeReward,
    accuracy_reward,
    format_reward,
    get_reward,
    list_rewards,
    safe_reward,
)
from trl_omni.testing import tiny_chameleon


# ------------------------------------------------------------------------------------------- the worked example
def make_judge(helper, tokenizer, weights=None):
    """The docs' worked example: a frozen Chameleon judges fluency and confidence from ONE forward pass."""

    def build_inputs(batch: RewardBatch):
        texts = [p + c for p, c in zip(batch.prompt_texts, batch.completion_texts)]
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def token_log_probs(outputs, batch):
        log_probs = outputs.logits[:, :-1].float().log_softmax(-1)
        targets = batch.inputs["input_ids"][:, 1:]
        mask = batch.inputs["attention_mask"][:, 1:].float()
        return log_probs.gather(-1, targets[..., None]).squeeze(-1), log_probs, mask

    def fluency(outputs, batch):  # geometric-mean probability of the text under the helper
        picked, _, mask = token_log_probs(outputs, batch)
        return ((picked * mask).sum(1) / mask.sum(1).clamp(min=1)).exp()

    def confidence(outputs, batch):  # mean top-1 probability of the helper's next-token distributions
        _, log_probs, mask = token_log_probs(outputs, batch)
        top = log_probs.max(-1).values.exp()
        return (top * mask).sum(1) / mask.sum(1).clamp(min=1)

    return ModelReward(
        helper, build_inputs, scores={"fluency": fluency, "confidence": confidence}, weights=weights, name="judge"
    )


@pytest.fixture(scope="module")
def helper():
    model, processor = tiny_chameleon(seed=1)
    calls = []
    model.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    return model, processor.tokenizer, calls


class _State:
    def __init__(self, step):
        self.global_step = step


def test_model_reward_values_weights_and_freezing(helper):
    model, tokenizer, calls = helper
    judge = make_judge(model, tokenizer, weights={"fluency": 0.25, "confidence": 2.0})
    assert not isinstance(judge, torch.nn.Module)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    prompts, completions = ["What is 1+1?", "Which color?"], [" The answer is 2.", " red red red"]
    metrics = {}
    out = judge(prompts, completions, None, trainer_state=_State(0),
                log_metric=lambda n, v: metrics.__setitem__(n, v))  # fmt: skip
    # reference: the same quantities computed per sample, without padding
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids = tokenizer(p + c, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            log_probs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        fluency = log_probs.gather(-1, ids[0, 1:, None]).mean().exp().item()
        confidence = log_probs.max(-1).values.exp().mean().item()
        assert out[i] == pytest.approx(0.25 * fluency + 2.0 * confidence, rel=1e-4)
    assert set(metrics) == {"judge/fluency", "judge/confidence"}


def test_one_helper_call_per_step_shared_by_heads(helper):
    model, tokenizer, calls = helper
    judge = make_judge(model, tokenizer)
    prompts, completions, ids = ["q1", "q2"], [" a", " b"], [[1, 2], [3, 4]]
    calls.clear()
    total = judge(prompts, completions, ids, trainer_state=_State(5))
    fluency = judge.head("fluency")(prompts=prompts, completions=completions, completion_ids=ids,
                                    trainer_state=_State(5))  # fmt: skip
    confidence = judge.head("confidence")(prompts=prompts, completions=completions, completion_ids=ids,
                                          trainer_state=_State(5))  # fmt: skip
    assert len(calls) == 1 and judge.helper_calls == 1  # three rewards, one batched helper pass
    assert total == pytest.approx([f + c for f, c in zip(fluency, confidence)])
    assert judge.head("fluency").__name__ == "judge_fluency"
    judge(prompts, completions, ids, trainer_state=_State(6))  # next step: recomputed
    judge(prompts, [" c", " d"], ids, trainer_state=_State(6))  # other completions: recomputed
    assert len(calls) == 3 and judge.helper_calls == 3
    with pytest.raises(KeyError, match="no score"):
        judge.head("missing")


def test_model_reward_contract_checks_and_device(helper):
    model, tokenizer, _ = helper
    seen = {}

    def forward(m, inputs):
        seen["device"] = inputs["x"].device
        return inputs["x"] * 2

    reward = ModelReward(
        model, build_inputs=lambda b: {"x": torch.arange(len(b), dtype=torch.float32)}, forward=forward,
        scores=lambda out, b: [None if v == 0 else float(v) for v in out.tolist()],
    )  # fmt: skip
    assert reward.device == next(model.parameters()).device
    assert reward(["a", "b", "c"], ["x", "y", "z"]) == [None, 2.0, 4.0]
    assert seen["device"] == reward.device
    bad = ModelReward(model, build_inputs=lambda b: {"x": torch.zeros(1)}, forward=lambda m, i: i,
                      scores=lambda out, b: [1.0])  # fmt: skip
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        bad(["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match="unknown scores"):
        ModelReward(model, lambda b: None, scores={"a": lambda o, b: []}, weights={"b": 1.0})


# ------------------------------------------------------------------------------------------- registry
def test_builtin_names_and_dotted_paths():
    names = list_rewards()
    for name in ("accuracy", "format", "format_thought", "perception", "perception_calibrated", "model_reward"):
        assert name in names
    assert get_reward("accuracy", safe=False) is accuracy_reward
    assert get_reward("trl_omni.rewards:format_reward", safe=False) is format_reward
    assert get_reward("trl_omni.rewards.format.format_reward", safe=False) is format_reward
    wrapped = get_reward("format")
    assert isinstance(wrapped, SafeReward) and wrapped.__name__ == "format_reward"
    assert wrapped(["q"], ["THOUGHT Final Answer: 1"]) == [0.0]


def test_classes_are_built_with_kwargs():
    model, processor = tiny_chameleon(seed=0)
    from trl_omni.models import ImageVocabulary

    vocab = ImageVocabulary.from_model(model, processor)
    reward = get_reward("perception", image_vocabulary=vocab, aggregation="mean")
    assert isinstance(reward.fn, PerceptionReward) and reward.aggregation == "mean"
    assert reward.__name__ == "perception_reward"
    with pytest.raises(TypeError, match="could not be built"):
        get_reward("perception")


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="Unknown reward 'nope'.*accuracy.*perception_calibrated"):
        get_reward("nope")
    with pytest.raises(ValueError, match="Could not import reward 'no_such_module:x'.*Available names"):
        get_reward("no_such_module:x")


def test_entry_point_rewards(monkeypatch):
    from importlib.metadata import EntryPoint

    module = types.ModuleType("contrib_rewards_for_test")
    exec(textwrap.dedent("""
        def length_penalty(prompts, completions, **kwargs):
            return [-len(c) / 100 for c in completions]
    """), module.__dict__)  # fmt: skip
    monkeypatch.setitem(sys.modules, module.__name__, module)
    point = EntryPoint("length_penalty", f"{module.__name__}:length_penalty", "trl_omni.rewards")
    monkeypatch.setattr(
        "trl_omni.rewards.registry.entry_points", lambda group: [point] if group == "trl_omni.rewards" else []
    )
    assert "length_penalty" in list_rewards()
    assert get_reward("length_penalty")(["q"], ["abcd"]) == [-0.04]


def test_setup_declares_the_builtins_as_entry_points():
    import re
    from pathlib import Path

    from trl_omni.rewards.registry import BUILTIN_REWARDS, resolve_reward

    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    block = setup.split('"trl_omni.rewards": [', 1)[1].split("]", 1)[0]
    declared = dict(re.findall(r'"\s*(\w+)\s*=\s*([\w.:]+)\s*"', block))
    assert declared == BUILTIN_REWARDS
    for target in declared.values():  # every declared target imports and is a reward (function or class)
        assert callable(resolve_reward(target))


# ------------------------------------------------------------------------------------------- safe_reward
def flaky_reward(prompts, completions, **kwargs):
    return [1.0 / len(c) for c in completions]  # ZeroDivisionError on an empty completion


def test_failure_names_reward_and_sample_index():
    reward = safe_reward(flaky_reward)
    assert reward(["a", "b"], ["xy", "x"]) == [0.5, 1.0]
    with pytest.raises(RewardError, match=r"'flaky_reward' raised ZeroDivisionError on sample 2") as info:
        reward(["a", "b", "c"], ["xy", "x", ""], answer=["1", "2", "3"])
    assert info.value.sample_index == 2 and info.value.reward_name == "flaky_reward"
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_bad_outputs_are_reported():
    with pytest.raises(RewardError, match="returned nan for sample 1"):
        safe_reward(lambda prompts, completions, **k: [1.0, math.nan])(["a", "b"], ["x", "y"])
    with pytest.raises(RewardError, match="returned 1 values for 2"):
        safe_reward(lambda prompts, completions, **k: [1.0])(["a", "b"], ["x", "y"])
    with pytest.raises(RewardError, match=r"returned 'bad' \(str\) for sample 0"):
        safe_reward(lambda prompts, completions, **k: ["bad"], name="typo")(["a"], ["x"])
    assert safe_reward(safe_reward(flaky_reward)).fn is flaky_reward


# ------------------------------------------------------------------- the docs' recipe: a frozen vision model judges
def make_drawing_judge(model, processor, vocab, vision, decoder=None):
    """docs/rewards.md, "Judging drawings with a frozen vision model": drawn codes -> pixels -> vision model."""
    import numpy as np

    from trl_omni.models import ChameleonVQDecoder, decode_images

    # Real runs: load_vq_decoder(model, checkpoint_dir, ...); the tiny model has no decoder weights: random ones.
    decoder = decoder or ChameleonVQDecoder(model.config.vq_config, processor.image_processor)
    size = [side * decoder.upsampling_factor for side in vocab.grid_size]

    def build_inputs(batch: RewardBatch):
        codes, rows = batch.drawn_images(vocab)  # every complete drawing of the batch, with its completion
        pictures = decode_images(codes, decoder, vocab)
        pixels = [torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in pictures]
        pixel_values = torch.stack(pixels).float() / 255 if pixels else torch.zeros(0, 3, *size)
        return {"pixel_values": pixel_values, "rows": rows}

    def drawing_quality(outputs, batch):  # the worst drawing of a completion decides
        return batch.per_completion(outputs.sigmoid().flatten(), batch.inputs["rows"], aggregation="min")

    return ModelReward(
        vision,
        build_inputs,
        scores={"drawing": drawing_quality},
        forward=lambda model, inputs: model(inputs["pixel_values"]),
        name="drawing_judge",
    ), decoder


def test_frozen_vision_model_judges_decoded_drawings():
    import numpy as np

    from trl_omni.models import ImageVocabulary, decode_images

    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    torch.manual_seed(0)
    vision = torch.nn.Sequential(  # a tiny frozen CNN stands in for a real vision classifier
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 1),
    )  # fmt: skip
    judge, decoder = make_drawing_judge(model, processor, vocab, vision)
    assert not any(p.requires_grad for p in vision.parameters())
    tok = processor.tokenizer
    generator = torch.Generator().manual_seed(1)
    grids = [torch.randint(0, vocab.num_codes, vocab.grid_size, generator=generator) for _ in range(3)]
    text = tok.encode("I draw.", add_special_tokens=False)
    span = [vocab.image_span_ids(g).tolist() for g in grids]
    completion_ids = [text + span[0], text, text + span[1] + text + span[2], span[2][:5]]  # last: cut image
    out = judge(["p"] * 4, ["c"] * 4, completion_ids)

    def alone(grid):  # one drawing decoded and judged on its own
        pixels = torch.from_numpy(np.array(decode_images(grid, decoder, vocab)[0])).permute(2, 0, 1)
        with torch.no_grad():
            return float(vision(pixels[None].float() / 255).sigmoid())

    scores = [alone(g) for g in grids]
    assert out[0] == pytest.approx(scores[0], abs=1e-5)
    assert out[1] is None and out[3] is None  # nothing drawn, or only a cut image
    assert out[2] == pytest.approx(min(scores[1], scores[2]), abs=1e-5)
    assert len(set(scores)) == 3  # the drawings are told apart
    assert judge.helper_calls == 1  # one vision pass for the whole batch
    # PeRPO's pre-parsed segments give the same inputs
    segments = vocab.parse_segments(completion_ids).per_row(4)
    again = judge(["p"] * 4, ["c"] * 4, completion_ids, image_segments=segments, trainer_state=None)
    assert again == pytest.approx(out)


def test_drawing_judge_at_anole_layout(anole):
    from trl_omni.models import ImageVocabulary, load_vq_decoder

    vocab = ImageVocabulary.from_model(anole.model, anole.processor)
    decoder = load_vq_decoder(anole.model, anole.path, image_processor=anole.processor.image_processor)
    seen = []

    class Vision(torch.nn.Module):  # records what it is shown: the drawings as 512 x 512 pixels
        def forward(self, pixel_values):
            seen.append(tuple(pixel_values.shape))
            return pixel_values.mean(dim=(1, 2, 3))[:, None]

    judge, _ = make_drawing_judge(anole.model, anole.processor, vocab, Vision(), decoder=decoder)
    grid = torch.randint(0, vocab.num_codes, vocab.grid_size, generator=torch.Generator().manual_seed(0))
    text = anole.processor.tokenizer.encode("I draw.", add_special_tokens=False)
    out = judge(["p", "p"], ["c", "c"], [text + vocab.image_span_ids(grid).tolist(), text])
    assert seen == [(1, 3, 512, 512)]
    assert out[1] is None and 0.0 < out[0] < 1.0
