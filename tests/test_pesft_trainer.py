"""PeSFTTrainer / PeSFTConfig: the loss against a plain reference, parity with SFTTrainer, the perception head's
life cycle (training, checkpoint, resume, PEFT adapter), gradient accumulation, QLoRA and two processes."""

import os


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from trl_omni import ImageVocabulary, load_omni_model
from trl_omni.testing import tiny_chameleon
from trl_omni.trainers import (
    PerceptionHead,
    PeSFTConfig,
    PeSFTTrainer,
    add_perception_head,
    get_perception_head,
)


REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------- helpers
def interleaved_row(vocab, tokenizer, seed, completion_images=1, prompt_images=0):
    """A pre-tokenized interleaved row in TRL's format: `input_ids` + `completion_mask` (completion images included).

    Images enter only through `vocab.image_span_ids`, the core's one builder of in-sequence images.
    """
    generator = torch.Generator().manual_seed(seed)

    def image():
        codes = torch.randint(0, vocab.num_codes, (vocab.tokens_per_image,), generator=generator)
        return vocab.image_span_ids(codes).tolist()

    prompt = tokenizer("User: What is shown?").input_ids
    for _ in range(prompt_images):
        prompt += image()
    prompt += tokenizer(" Assistant:").input_ids
    completion = tokenizer(" Let me draw it.").input_ids
    for k in range(completion_images):
        completion += image() + tokenizer(f" THOUGHT {k}:").input_ids
    completion += tokenizer(" The answer is A.").input_ids + [tokenizer.eos_token_id]
    return {"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)}


def make_dataset(vocab, tokenizer, image_counts=(1, 0, 2, 1), prompt_images=(0, 1, 0, 0)):
    rows = [
        interleaved_row(vocab, tokenizer, seed=i, completion_images=n, prompt_images=p)
        for i, (n, p) in enumerate(zip(image_counts, prompt_images))
    ]
    return Dataset.from_list(rows)


def make_config(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-3,
        bf16=False,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    defaults.update(overrides)
    return PeSFTConfig(**defaults)


def fixed_batch(trainer, indices=(0, 1, 2, 3)):
    rows = [trainer.train_dataset[i] for i in indices]
    return trainer._prepare_inputs(trainer.data_collator(rows))


def head_weight(model):
    head = get_perception_head(model)
    if hasattr(head, "modules_to_save"):  # PEFT's ModulesToSaveWrapper: the trained copy
        head = head.modules_to_save["default"]
    return head.weight.detach().clone()


@pytest.fixture()
def tiny():
    return tiny_chameleon(seed=0)


def reference_loss(model, vocab, batch, weight, alignment, reduction):
    """L = NLL + weight * L_Pe computed plainly from the formula, with full logits and explicit loops."""
    base = model.model  # ChameleonModel: its last_hidden_state is after the final norm
    hidden = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    logits = hidden @ model.lm_head.weight.T  # no image-logit mask: the model is trained on image tokens
    labels = batch["labels"]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    head = model.perception_head
    errors = []
    codes = vocab.ids_to_codes(labels)  # -1 at text, prompt and padding positions (labels -100)
    for b, t in (codes >= 0).nonzero().tolist():
        if alignment == "next_token":
            if t == 0:
                continue
            h = hidden[b, t - 1]
        else:
            h = hidden[b, t]
        diff = head.weight @ h - vocab.codebook[codes[b, t]]
        errors.append(diff.pow(2).sum() if reduction == "paper" else diff.pow(2).mean())
    perception = torch.stack(errors).mean() if errors else torch.tensor(0.0)
    return nll + weight * perception, perception


# ------------------------------------------------------------------------------------------------------------ config
def test_config_validates_and_defaults(tmp_path):
    args = make_config(tmp_path, seed=7)
    assert args.perception_alignment == "next_token"
    assert args.perception_reduction == "paper"
    assert args.perception_loss_weight == 1.0
    assert args.perception_head_seed == 7  # falls back to `seed`
    assert args.max_length == 5100
    with pytest.raises(ValueError, match="perception_alignment"):
        make_config(tmp_path, perception_alignment="previous")
    with pytest.raises(ValueError, match="perception_reduction"):
        make_config(tmp_path, perception_reduction="sum")
    with pytest.raises(ValueError, match="perception_loss_weight"):
        make_config(tmp_path, perception_loss_weight=-1.0)


def test_perception_head_init_is_seeded_and_not_a_linear():
    a, b, c = PerceptionHead(64, 16, seed=3), PerceptionHead(64, 16, seed=3), PerceptionHead(64, 16, seed=4)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, c.weight)
    assert not isinstance(a, torch.nn.Linear)  # so PEFT's "all-linear" leaves it to modules_to_save
    assert a(torch.randn(5, 64, dtype=torch.float64)).dtype == torch.float32


# -------------------------------------------------------------------------------------------------------------- loss
def test_loss_matches_plain_reference_for_both_alignments_and_reductions(tmp_path, tiny):
    model, processor = tiny
    vocab = ImageVocabulary.from_model(model, processor)
    trainer = PeSFTTrainer(model, args=make_config(tmp_path, perception_loss_weight=0.7),
                           train_dataset=make_dataset(vocab, processor.tokenizer), processing_class=processor)  # fmt: skip
    # A non-trivial head, so that pairing the wrong hidden state changes the value.
    with torch.no_grad():
        model.perception_head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    batch = fixed_batch(trainer)
    assert vocab.is_image_token(batch["labels"]).sum() == 4 * vocab.tokens_per_image  # 1 + 0 + 2 + 1 images
    trainer.model.train()
    values = {}
    for alignment in ("next_token", "same_position"):
        for reduction in ("paper", "mean"):
            trainer.args.perception_alignment, trainer.args.perception_reduction = alignment, reduction
            loss = trainer.compute_loss(trainer.model, dict(batch))
            expected, perception = reference_loss(model, vocab, batch, 0.7, alignment, reduction)
            torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5, msg=f"{alignment}/{reduction}")
            logged = trainer._metrics["train"]["perception_loss"][-1]
            assert logged == pytest.approx(perception.item(), rel=1e-5)
            assert trainer._metrics["train"]["image_tokens"][-1] == 4 * vocab.tokens_per_image
            values[alignment, reduction] = perception.item()
    # The four variants really differ on this batch, so the test can tell them apart; "mean" is "paper" / D.
    assert len({round(v, 6) for v in values.values()}) == 4
    for alignment in ("next_token", "same_position"):
        ratio = values[alignment, "paper"] / values[alignment, "mean"]
        assert ratio == pytest.approx(vocab.codebook_dim, rel=1e-5)


def test_batch_without_completion_images_adds_exactly_zero(tmp_path, tiny):
    model, processor = tiny
    vocab = ImageVocabulary.from_model(model, processor)
    dataset = make_dataset(vocab, processor.tokenizer, image_counts=(0, 0), prompt_images=(1, 0))
    trainer = PeSFTTrainer(model, args=make_config(tmp_path, perception_loss_weight=5.0), train_dataset=dataset,
                           processing_class=processor)  # fmt: skip
    batch = fixed_batch(trainer, (0, 1))
    assert vocab.is_image_token(batch["input_ids"]).any()  # the prompt image is in the input ...
    assert not vocab.is_image_token(batch["labels"]).any()  # ... but not in the labels
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    trainer.args.perception_loss_weight = 0.0
    nll_only = trainer.compute_loss(trainer.model, dict(batch))
    assert torch.isfinite(loss)
    assert loss.item() == nll_only.item()
    loss.backward()  # the zero term stays connected: the head gets a (zero) gradient, as DDP needs
    assert torch.count_nonzero(model.perception_head.weight.grad) == 0


def test_weight_zero_matches_sft_loss_and_gradients(tmp_path):
    from trl import SFTConfig, SFTTrainer

    sft_model, processor = tiny_chameleon(seed=0)
    pe_model, _ = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(pe_model, processor)
    dataset = make_dataset(vocab, processor.tokenizer)
    common = dict(per_device_train_batch_size=4, bf16=False, use_cpu=True, report_to="none", seed=0, max_length=5100)
    sft = SFTTrainer(sft_model, args=SFTConfig(str(tmp_path / "sft"), completion_only_loss=True, **common),
                     train_dataset=dataset, processing_class=processor)  # fmt: skip
    pe = PeSFTTrainer(pe_model, args=PeSFTConfig(str(tmp_path / "pe"), perception_loss_weight=0.0, **common),
                      train_dataset=dataset, processing_class=processor)  # fmt: skip
    losses = []
    for trainer in (sft, pe):
        batch = fixed_batch(trainer)
        trainer.model.train()
        num_items = (batch["labels"][:, 1:] != -100).sum()
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=num_items)
        loss.backward()
        losses.append(loss.detach())
    assert losses[0].item() == losses[1].item()
    sft_grads = {name: p.grad for name, p in sft_model.named_parameters() if p.grad is not None}
    pe_grads = {name: p.grad for name, p in pe_model.named_parameters() if p.grad is not None}
    assert set(pe_grads) - set(sft_grads) == {"perception_head.weight"}
    assert torch.count_nonzero(pe_grads.pop("perception_head.weight")) == 0
    assert set(pe_grads) == set(sft_grads)
    for name, grad in sft_grads.items():
        torch.testing.assert_close(pe_grads[name], grad, rtol=0, atol=0, msg=name)


# ---------------------------------------------------------------------------------------------------------- training
def test_training_updates_head_logs_metrics_and_keeps_vq_frozen(tmp_path, tiny):
    model, processor = tiny
    vocab = ImageVocabulary.from_model(model, processor)
    vq_before = {k: v.clone() for k, v in model.model.vqmodel.state_dict().items()}
    trainer = PeSFTTrainer(model, args=make_config(tmp_path, eval_strategy="no"),
                           train_dataset=make_dataset(vocab, processor.tokenizer),
                           eval_dataset=make_dataset(vocab, processor.tokenizer, (1, 1), (0, 0)),
                           processing_class=processor)  # fmt: skip
    before = head_weight(trainer.model)
    trainer.train()
    assert not torch.equal(head_weight(trainer.model), before)
    assert all(not p.requires_grad for p in model.model.vqmodel.parameters())
    for key, value in model.model.vqmodel.state_dict().items():
        assert torch.equal(value, vq_before[key]), key
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    for key in ("perception_loss", "nll_text", "nll_image", "image_token_accuracy", "image_tokens"):
        assert all(key in entry and math.isfinite(entry[key]) for entry in logs), key
    assert {entry["image_tokens"] for entry in logs} <= {64.0, 128.0, 192.0}
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_perception_loss"]) and metrics["eval_image_tokens"] == 128.0
    # Outside compute_loss the hooks are idle: neither a plain forward nor generation runs the head.
    calls = []
    handle = model.perception_head.register_forward_hook(lambda *args: calls.append(1))
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3]]))
        model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert calls == [] and trainer._perception_capture is None
    model.train()
    trainer.compute_loss(trainer.model, fixed_batch(trainer, (0, 2)))
    handle.remove()
    assert calls == [1] and trainer._perception_capture is None  # one projection per loss forward, then disarmed


def test_rows_with_image_columns_are_refused_and_overlong_rows_dropped(tmp_path, tiny, caplog):
    model, processor = tiny
    vocab = ImageVocabulary.from_model(model, processor)
    rows = make_dataset(vocab, processor.tokenizer, image_counts=(1, 0), prompt_images=(0, 0))
    with pytest.raises(ValueError, match="'image'/'images' column"):
        PeSFTTrainer(model, args=make_config(tmp_path), train_dataset=rows.add_column("images", [[], []]),
                     processing_class=processor)  # fmt: skip
    short = len(rows[1]["input_ids"])
    trainer = PeSFTTrainer(model, args=make_config(tmp_path, max_length=short), train_dataset=rows,
                           processing_class=processor)  # fmt: skip
    assert len(trainer.train_dataset) == 1  # the image row was dropped whole, not cut
    assert "Dropped 1 of 2 train rows" in caplog.text


def test_checkpoint_resume_matches_uninterrupted_run(tmp_path):
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def __init__(self, step):
            self.step = step

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == self.step:
                control.should_training_stop = True

    def run(output_dir, stop_at=None, resume=None):
        model, processor = tiny_chameleon(seed=0)
        vocab = ImageVocabulary.from_model(model, processor)
        args = make_config(tmp_path, output_dir=str(output_dir), max_steps=4, save_strategy="steps", save_steps=2,
                           per_device_train_batch_size=1)  # fmt: skip
        trainer = PeSFTTrainer(model, args=args, train_dataset=make_dataset(vocab, processor.tokenizer),
                               processing_class=processor, callbacks=[StopAt(stop_at)] if stop_at else None)  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

    uninterrupted = run(tmp_path / "full")
    interrupted = run(tmp_path / "part", stop_at=2)
    checkpoint = tmp_path / "part" / "checkpoint-2"
    saved = load_file(str(checkpoint / "model.safetensors"))
    torch.testing.assert_close(saved["perception_head.weight"], interrupted["perception_head.weight"], rtol=0, atol=0)
    resumed = run(tmp_path / "part", resume=str(checkpoint))
    assert "perception_head.weight" in resumed
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(interrupted["perception_head.weight"], resumed["perception_head.weight"])

    # A fresh model with a differently seeded head, resumed at the checkpoint's step (no step left), holds exactly
    # the saved head.
    fresh, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(fresh, processor)
    restored = PeSFTTrainer(fresh, args=make_config(tmp_path, output_dir=str(tmp_path / "again"), max_steps=2,
                                                    perception_head_seed=99),
                            train_dataset=make_dataset(vocab, processor.tokenizer), processing_class=processor)  # fmt: skip
    assert not torch.equal(head_weight(fresh), saved["perception_head.weight"])
    restored.train(resume_from_checkpoint=str(checkpoint))
    assert torch.equal(head_weight(fresh), saved["perception_head.weight"])

    # Reloading the saved checkpoint keeps the trained head instead of initialising a new one.
    reloaded, _ = load_omni_model(str(checkpoint), dtype=torch.float32)
    head = add_perception_head(reloaded, 16, seed=123)
    assert torch.equal(head.weight.detach(), saved["perception_head.weight"])


def test_peft_adapter_trains_saves_and_reloads_head(tmp_path, tiny):
    from peft import LoraConfig, PeftModel

    model, processor = tiny
    vocab = ImageVocabulary.from_model(model, processor)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = PeSFTTrainer(model, args=make_config(tmp_path, max_steps=1),
                           train_dataset=make_dataset(vocab, processor.tokenizer), processing_class=processor,
                           peft_config=config)  # fmt: skip
    assert "perception_head" in trainer.model.peft_config["default"].modules_to_save
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert any("perception_head.modules_to_save" in name for name in trainable)
    assert not any("perception_head" in name and "lora_" in name for name in trainable)  # not LoRA-wrapped
    before = head_weight(trainer.model)
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    trained = head_weight(trainer.model)
    assert not torch.equal(trained, before)
    logged = trainer.state.log_history[0]
    assert all(math.isfinite(logged[key]) for key in ("perception_loss", "nll_text", "nll_image"))
    assert any(not torch.equal(p, lora_before[n]) for n, p in trainer.model.named_parameters() if n in lora_before)

    trainer.save_model(str(tmp_path / "adapter"))
    adapter = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    head_keys = [key for key in adapter if "perception_head" in key]
    assert head_keys and torch.equal(adapter[head_keys[0]], trained)
    assert (
        "perception_head" in json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["modules_to_save"]
    )

    base, _ = tiny_chameleon(seed=0)
    add_perception_head(base, vocab, seed=5)
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    assert torch.equal(head_weight(reloaded), trained)


def test_gradient_accumulation_1x4_equals_4x1(tmp_path):
    def run(batch_size, accumulation):
        model, processor = tiny_chameleon(seed=0)
        vocab = ImageVocabulary.from_model(model, processor)
        # Rows with 1, 0, 2 and 3 completion images: a per-micro-batch mean / accumulation steps would differ from
        # the window mean here. SGD without clipping keeps the update proportional to the gradient.
        args = make_config(tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                           max_steps=1, optim="sgd", learning_rate=0.5, max_grad_norm=0.0,
                           lr_scheduler_type="constant")  # fmt: skip
        dataset = make_dataset(vocab, processor.tokenizer, image_counts=(1, 0, 2, 3), prompt_images=(0, 1, 0, 0))
        trainer = PeSFTTrainer(model, args=args, train_dataset=dataset, processing_class=processor)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        trainer.train()
        return {n: p.detach() - before[n] for n, p in model.named_parameters() if p.requires_grad}

    one_by_four, four_by_one = run(4, 1), run(1, 4)
    assert one_by_four["perception_head.weight"].abs().max() > 1e-4
    for name, update in one_by_four.items():
        torch.testing.assert_close(four_by_one[name], update, rtol=1e-4, atol=1e-6, msg=name)


def test_qlora_4bit_trains(tmp_path):
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    tiny_chameleon(seed=0, save_dir=str(tmp_path / "base"))
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    model, processor = load_omni_model(str(tmp_path / "base"), dtype=torch.float32, quantization_config=quantization)
    assert getattr(model, "is_loaded_in_4bit", False)
    vocab = ImageVocabulary.from_model(model, processor)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = PeSFTTrainer(model, args=make_config(tmp_path, learning_rate=1e-2),
                           train_dataset=make_dataset(vocab, processor.tokenizer), processing_class=processor,
                           peft_config=config)  # fmt: skip
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    head_before = head_weight(trainer.model)
    trainer.train()
    assert any(not torch.equal(p, lora_before[n]) for n, p in trainer.model.named_parameters() if n in lora_before)
    assert not torch.equal(head_weight(trainer.model), head_before)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(math.isfinite(loss) for loss in losses)


def test_two_processes_ddp_identical_weights_and_fsdp2_gradients(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO_ROOT / "tests" / "scripts" / "pesft_distributed.py"), str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    initial = torch.load(tmp_path / "initial.pt")
    assert rank0.keys() == rank1.keys() and "perception_head.weight" in rank0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert not torch.equal(rank0["perception_head.weight"], initial["perception_head.weight"])
    # Each rank saw different rows: identical weights mean the head's gradients were all-reduced like the rest.
    assert json.loads((tmp_path / "ranks.json").read_text()) == {"world_size": 2, "distinct_batches": True}
    # FSDP2: with the head's weight sharded, the loss and gradients equal an unsharded copy's.
    fsdp2 = json.loads((tmp_path / "fsdp2.json").read_text())
    assert fsdp2["head_is_sharded"] and fsdp2["head_grad_norm"] > 0
    assert fsdp2["loss"][0] == pytest.approx(fsdp2["loss"][1], rel=1e-6)
    assert fsdp2["head_grad_max_diff"] < 1e-6 and fsdp2["embed_grad_max_diff"] < 1e-6


def test_model_path_loads_and_peft_model_without_head_is_refused(tmp_path):
    from peft import LoraConfig, get_peft_model

    _, processor = tiny_chameleon(seed=0, save_dir=str(tmp_path / "base"))
    vocab = ImageVocabulary.from_model(tiny_chameleon(seed=0)[0], processor)
    dataset = make_dataset(vocab, processor.tokenizer, (1, 0), (0, 0))
    trainer = PeSFTTrainer(str(tmp_path / "base"), args=make_config(tmp_path, model_init_kwargs={"dtype": "float32"}),
                           train_dataset=dataset)  # fmt: skip
    assert isinstance(get_perception_head(trainer.model), PerceptionHead)
    assert trainer.image_vocabulary.tokens_per_image == vocab.tokens_per_image

    peft_model = get_peft_model(tiny_chameleon(seed=0)[0], LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="no perception head"):
        PeSFTTrainer(peft_model, args=make_config(tmp_path), train_dataset=dataset, processing_class=processor)
