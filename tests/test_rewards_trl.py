"""Every reward inside TRL's own GRPOTrainer on the tiny Chameleon (2 steps), unchanged.

Stock TRL samples freely, and a random tiny model never writes the control tags or a whole image. To check the
rewards' values end to end, the test steers generation with logits processors passed to `model.generate` (the only
test scaffolding): even rows are forced to a scripted, correctly formatted completion holding one constant image;
odd rows sample freely under `ImageSpanLogitsProcessor`. TRL decodes, slices, calls the rewards and logs them.
"""

import functools
import math

import pytest
import torch
from datasets import Dataset
from transformers import LogitsProcessor, LogitsProcessorList
from trl import GRPOConfig, GRPOTrainer

from trl_omni.models import ImageSpanLogitsProcessor, ImageVocabulary
from trl_omni.rewards import (
    ModelReward,
    PerceptionCalibratedReward,
    PerceptionReward,
    ReferenceImageReward,
    RewardError,
    accuracy_reward,
    format_reward,
    get_reward,
    make_accuracy_reward,
    make_format_reward,
    safe_reward,
)
from trl_omni.testing import ANSWER_CLOSE, ANSWER_OPEN, REASONING_CLOSE, REASONING_OPEN, tiny_chameleon


MAX_COMPLETION = 80


class ScriptEvenRows(LogitsProcessor):
    """Forces rows 0, 2, 4... of every generate call to emit `script` token by token."""

    def __init__(self, script):
        self.script = script
        self._start = None
        self._last = None

    def __call__(self, input_ids, scores):
        length = input_ids.shape[1]
        if self._last is None or length != self._last + 1:
            self._start = length  # a new generate call
        self._last = length
        step = length - self._start
        if step < len(self.script):
            rows = torch.arange(0, input_ids.shape[0], 2)
            forced = torch.full_like(scores[rows], float("-inf"))
            forced[:, self.script[step]] = 0.0
            scores[rows] = forced
        return scores


def _script(processor, vocab):
    tok = processor.tokenizer
    h, w = vocab.grid_size
    ids = tok.encode(REASONING_OPEN, add_special_tokens=False)
    ids += vocab.image_span_ids(torch.full((h, w), 7)).tolist()
    ids += tok.encode(f"{REASONING_CLOSE}{ANSWER_OPEN}2{ANSWER_CLOSE}", add_special_tokens=False)
    ids.append(tok.eos_token_id)
    assert len(ids) <= MAX_COMPLETION
    return ids


def _recording(reward, records):
    @functools.wraps(reward)
    def wrapper(prompts, completions, completion_ids=None, **kwargs):
        out = reward(prompts, completions, completion_ids, **kwargs)
        records.setdefault(wrapper.__name__, []).append((completion_ids, out))
        records.setdefault(f"{wrapper.__name__}/references", []).append(kwargs.get("reference_images"))
        return out

    wrapper.__name__ = getattr(reward, "__name__", type(reward).__name__)
    return wrapper


def _trainer(model, processor, reward_funcs, output_dir, **extra):
    # Every row's reference drawing is the scripted one (a constant image of code 7); the last rows have none.
    vocab = ImageVocabulary.from_model(model, processor)
    reference = [{"type": "image", "codes": [7] * vocab.tokens_per_image}]
    dataset = Dataset.from_dict(
        {
            "prompt": ["What is 1+1?", "How many circles?"] * 4,
            "answer": ["2", "2"] * 4,
            "reference_images": [reference] * 6 + [None] * 2,
        }
    )
    settings = dict(
        output_dir=str(output_dir), max_completion_length=MAX_COMPLETION, per_device_train_batch_size=4,
        num_generations=2, max_steps=2, bf16=False, use_cpu=True, report_to="none", logging_steps=1,
        save_strategy="no", seed=0,
    )  # fmt: skip
    args = GRPOConfig(**{**settings, **extra})
    return GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset,
                       processing_class=processor.tokenizer)  # fmt: skip


@pytest.fixture(scope="module")
def steered():
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    script = _script(processor, vocab)
    processors = LogitsProcessorList(
        [ScriptEvenRows(script), ImageSpanLogitsProcessor(vocab, max_new_tokens=MAX_COMPLETION)]
    )
    model.generate = functools.partial(type(model).generate, model, logits_processor=processors)
    return model, processor, vocab, script


def test_every_reward_inside_grpo_trainer(steered, tmp_path):
    model, processor, vocab, script = steered
    tok = processor.tokenizer
    helper, _ = tiny_chameleon(seed=1)

    def fluency(outputs, batch):
        log_probs = outputs.logits[:, :-1].float().log_softmax(-1)
        ids, mask = batch.inputs["input_ids"][:, 1:], batch.inputs["attention_mask"][:, 1:].float()
        picked = log_probs.gather(-1, ids[..., None]).squeeze(-1)
        return ((picked * mask).sum(1) / mask.sum(1).clamp(min=1)).exp()

    judge = ModelReward(
        helper,
        build_inputs=lambda b: tok([p + c for p, c in zip(b.prompt_texts, b.completion_texts)], return_tensors="pt",
                                   padding=True, add_special_tokens=False),
        scores={"fluency": fluency, "length": lambda outputs, b: [len(t) / 100 for t in b.completion_texts]},
        weights={"fluency": 1.0, "length": 0.5},
    )  # fmt: skip
    records = {}
    rewards = [
        make_accuracy_reward(processing_class=tok, name="accuracy_ids"),
        make_format_reward(processing_class=tok, name="format_ids"),
        accuracy_reward,  # defaults: text only (no tokenizer)
        format_reward,
        get_reward("format_thought"),  # registry + SafeReward wrapper
        PerceptionReward(vocab),
        PerceptionCalibratedReward(vocab, processing_class=tok),
        ReferenceImageReward(vocab),
        judge,
        judge.head("fluency"),
    ]
    trainer = _trainer(model, processor, [_recording(r, records) for r in rewards], tmp_path)
    trainer.train()

    names = ["accuracy_ids", "format_ids", "accuracy_reward", "format_reward", "format_thought_reward",
             "perception_reward", "perception_calibrated", "reference_image_reward", "model_reward",
             "model_reward_fluency"]  # fmt: skip
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(logs) == 2
    for name in names:
        assert name in records and len(records[name]) == 2, name
        for entry in logs:
            assert math.isfinite(entry[f"rewards/{name}/mean"]), name
    assert "perception_reward/complete_images" in logs[0]

    # exact values on the scripted rows, computed by TRL's own decoding and slicing
    scripted_seen = 0
    # The defaults see TRL's text, where the special-token tags were removed: no format, no answer. That is why
    # the tags-style rewards take `processing_class`.
    for name, expected in [("accuracy_ids", 1.0), ("format_ids", 1.0), ("format_thought_reward", 0.0),
                           ("perception_reward", 1.0), ("perception_calibrated", 1.0),
                           ("accuracy_reward", 0.0), ("format_reward", 0.0)]:  # fmt: skip
        for completion_ids, values in records[name]:
            for ids, value in zip(completion_ids, values):
                if list(ids) == script:
                    scripted_seen += 1
                    assert value == pytest.approx(expected), name
    assert scripted_seen == 7 * 4  # 2 scripted rows per generation, 2 steps, 7 rewards
    # free rows: images only complete ones (the processor), so perception is None or in (0, 1]
    for _ids, values in records["perception_reward"]:
        assert all(v is None or 0 < v <= 1 for v in values)
    # the reference reward: 1.0 for the scripted drawing (it is the reference), None for rows without a reference
    seen = 0
    for (completion_ids, values), references in zip(
        records["reference_image_reward"], records["reference_image_reward/references"]
    ):
        for ids, value, reference in zip(completion_ids, values, references):
            if reference is None:
                assert value is None
            elif list(ids) == script:
                assert value == 1.0
                seen += 1
            else:
                assert 0.0 <= value <= 1.0
    assert seen > 0
    # the ModelReward heads share one helper pass per step
    assert judge.helper_calls == 2
    # free rows hold neither tags nor a final-answer marker: accuracy 0 (not None: the ground truth exists)
    for completion_ids, values in records["accuracy_ids"]:
        assert all(v == 0.0 for ids, v in zip(completion_ids, values) if list(ids) != script)


def test_failing_contributed_reward_names_reward_and_sample(steered, tmp_path):
    model, processor, _, script = steered

    def picky_reward(prompts, completions, completion_ids, **kwargs):
        return [1.0 / (len(ids) - len(script)) if len(ids) != len(script) else 1.0 / 0 for ids in completion_ids]

    trainer = _trainer(model, processor, [safe_reward(picky_reward)], tmp_path)
    with pytest.raises(RewardError, match=r"'picky_reward' raised ZeroDivisionError on sample 0"):
        trainer.train()
