"""PeRPOTrainer with LoRA and QLoRA; with beta > 0 under PEFT the reference is the adapter-disabled model."""

import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from trl_omni.models import ImageVocabulary, load_omni_model
from trl_omni.testing import tiny_chameleon
from trl_omni.trainers import PeRPOConfig, PeRPOTrainer


PROMPTS = ["What is shown in the image?", "Let me draw it.", "The answer is A.", "I draw an auxiliary line."]


def perpo_args(tmp_path, vocab, **overrides):
    config = dict(
        output_dir=str(tmp_path),
        num_generations=2,
        per_device_train_batch_size=4,
        max_completion_length=80,
        max_steps=2,
        learning_rate=5e-2,
        bf16=False,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        seed=3,
        # Test-only nudge so that the untrained tiny model opens images.
        generation_kwargs={"sequence_bias": {(vocab.boi_token_id,): 8.0}},
    )
    return PeRPOConfig(**{**config, **overrides})


def lora():
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def image_and_length_reward(completions, image_segments, **kwargs):
    return [float(sum(s.complete for s in segs)) + 0.01 * len(text) for text, segs in zip(completions, image_segments)]


class CapturingPeRPO(PeRPOTrainer):
    """Keeps the last generation batch handed to the loss (for assertions only)."""

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.captured = output
        return output


def completion_logps(model, batch):
    """Log-probabilities of the completion tokens under `model`, computed independently of TRL (plain logits)."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    length = batch["completion_ids"].shape[1]
    logps = torch.log_softmax(logits[:, -length - 1 : -1].float(), dim=-1)
    return logps.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)


def test_lora_trains_only_the_adapter_and_draws(tmp_path):
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = PeRPOTrainer(
        model=model,
        reward_funcs=image_and_length_reward,
        args=perpo_args(tmp_path, vocab),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 2}),
        processing_class=processor,
        peft_config=lora(),
    )
    trainer.train()
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # initialised at zero, now trained
    for name, param in trainer.model.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(param, base[key]), name
    log = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert math.isfinite(log["loss"]) and log["images/complete_rate"] == 1.0


def test_beta_under_peft_uses_the_adapter_disabled_model_as_reference(tmp_path):
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    trainer = CapturingPeRPO(
        model=model,
        reward_funcs=image_and_length_reward,
        args=perpo_args(tmp_path, vocab, beta=0.04, max_completion_length=70),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 2}),
        processing_class=processor,
        peft_config=lora(),
    )
    assert trainer.ref_model is None
    trainer.train()  # the captured batch is the one of step 2, generated after one adapter update
    batch = trainer.captured
    reference, _ = tiny_chameleon(seed=0)
    mask = batch["completion_mask"].bool()
    expected = completion_logps(reference, batch)
    assert torch.allclose(batch["ref_per_token_logps"][mask], expected[mask], atol=1e-4)
    policy = completion_logps(trainer.model, batch)
    assert not torch.allclose(policy[mask], expected[mask], atol=1e-4)  # the adapter moved the policy away
    log = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert math.isfinite(log["kl"]) and log["kl"] > 0


def test_qlora_4bit_on_cpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    tiny_chameleon(seed=0, save_dir=tmp_path / "tiny")
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    model, processor = load_omni_model(tmp_path / "tiny", quantization_config=quantization)
    assert getattr(model, "is_loaded_in_4bit", False)
    vocab = ImageVocabulary.from_model(model, processor)
    trainer = PeRPOTrainer(
        model=model,
        reward_funcs=image_and_length_reward,
        args=perpo_args(tmp_path / "run", vocab, max_steps=1),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 2}),
        processing_class=processor,
        peft_config=lora(),
    )
    trainer.train()
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.float().abs().sum() > 0 for p in lora_b)
    log = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert math.isfinite(log["loss"]) and log["images/complete_rate"] == 1.0
