"""A PeRPO run stopped at a checkpoint and resumed ends with the weights of the uninterrupted run (same seed, CPU)."""

import torch
from datasets import Dataset
from transformers import TrainerCallback

from trl_omni.models import ImageVocabulary
from trl_omni.testing import tiny_chameleon
from trl_omni.trainers import PeRPOConfig, PeRPOTrainer


PROMPTS = ["What is shown in the image?", "Let me draw it.", "The answer is A.", "I draw an auxiliary line."]


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def reward(completions, image_segments, completion_ids, **kwargs):
    return [
        float(sum(s.complete for s in segs)) + float(sum(ids) % 7) for segs, ids in zip(image_segments, completion_ids)
    ]


def run(output_dir, resume_from=None, stop_at=None):
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    args = PeRPOConfig(
        output_dir=str(output_dir),
        num_generations=2,
        per_device_train_batch_size=4,
        max_completion_length=70,
        max_steps=3,
        learning_rate=1e-2,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="steps",
        save_steps=1,
        gradient_checkpointing=False,
        seed=11,
        generation_kwargs={"sequence_bias": {(vocab.boi_token_id,): 8.0}},
    )
    trainer = PeRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 3}),
        processing_class=processor,
        callbacks=[StopAt(stop_at)] if stop_at else None,
    )
    trainer.train(resume_from_checkpoint=resume_from)
    return trainer, {n: p.detach().clone() for n, p in model.named_parameters()}


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    _, uninterrupted = run(tmp_path / "full")
    stopped, at_stop = run(tmp_path / "stopped", stop_at=1)
    assert stopped.state.global_step == 1
    checkpoint = tmp_path / "stopped" / "checkpoint-1"
    assert checkpoint.is_dir()
    resumed, final = run(tmp_path / "resumed", resume_from=str(checkpoint))
    assert resumed.state.global_step == 3
    assert any(not torch.equal(at_stop[n], final[n]) for n in final)  # the resumed run did train further
    for name, value in uninterrupted.items():
        assert torch.equal(value, final[name]), name
