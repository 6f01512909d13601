"""Two-process PeSFT checks for tests/test_pesft_trainer.py: `torchrun --nproc_per_node 2 pesft_distributed.py OUT`.

1. DDP (gloo on CPU): each rank trains on its own shard of the rows and saves its trainable weights, so the test can
   check that both ranks end identical (perception head included).
2. FSDP2: the same model with `fully_shard` on every decoder layer and the root (so the perception head's weight is a
   DTensor shard) gives the same PeSFT loss and gradients as an unsharded copy on the same batch. accelerate runs
   plain DDP on CPU even when FSDP is configured, so the sharding is applied directly with torch's `fully_shard`.
"""

import json
import os
import sys


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

from trl_omni import ImageVocabulary  # noqa: E402
from trl_omni.testing import tiny_chameleon  # noqa: E402
from trl_omni.trainers import PeSFTConfig, PeSFTTrainer  # noqa: E402


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from test_pesft_trainer import make_dataset  # noqa: E402


def main(out_dir: str) -> None:
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    dataset = make_dataset(vocab, processor.tokenizer, image_counts=(1, 0, 2, 1), prompt_images=(0, 1, 0, 0))
    args = PeSFTConfig(
        output_dir=os.path.join(out_dir, "run"),
        per_device_train_batch_size=1,
        max_steps=2,
        learning_rate=1e-2,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        seed=0,
        ddp_backend="gloo",
        disable_tqdm=True,
    )
    trainer = PeSFTTrainer(model, args=args, train_dataset=dataset, processing_class=processor)
    rank = trainer.accelerator.process_index
    if rank == 0:
        torch.save({"perception_head.weight": model.perception_head.weight.detach().clone()},
                   os.path.join(out_dir, "initial.pt"))  # fmt: skip

    seen = []
    original = trainer.compute_loss

    def recording_compute_loss(model, inputs, *args, **kwargs):
        seen.append(inputs["input_ids"].sum().item())
        return original(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording_compute_loss
    trainer.train()
    weights = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    torch.save(weights, os.path.join(out_dir, f"rank{rank}.pt"))
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, seen)
    fsdp2 = check_fsdp2(out_dir)
    if rank == 0:
        with open(os.path.join(out_dir, "ranks.json"), "w") as handle:
            json.dump({"world_size": dist.get_world_size(), "distinct_batches": gathered[0] != gathered[1]}, handle)
        with open(os.path.join(out_dir, "fsdp2.json"), "w") as handle:
            json.dump(fsdp2, handle)
    # Both ranks leave together and tear the gloo group down while the interpreter is alive (no abort at exit).
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


def check_fsdp2(out_dir: str) -> dict:
    def build():
        model, processor = tiny_chameleon(seed=0)
        vocab = ImageVocabulary.from_model(model, processor)
        args = PeSFTConfig(
            output_dir=os.path.join(out_dir, "fsdp2"),
            per_device_train_batch_size=4,
            bf16=False,
            use_cpu=True,
            report_to="none",
            seed=0,
            gradient_checkpointing=False,
        )
        dataset = make_dataset(vocab, processor.tokenizer)
        return model, PeSFTTrainer(model, args=args, train_dataset=dataset, processing_class=processor)

    reference_model, reference = build()
    model, trainer = build()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    losses = []
    for current, current_model in ((reference, reference_model), (trainer, model)):
        current_model.train()
        loss = current.compute_loss(current_model, {k: v.clone() for k, v in batch.items()})
        loss.backward()
        losses.append(loss.item())
    head_grad = model.perception_head.weight.grad.full_tensor()
    embed_grad = model.model.embed_tokens.weight.grad.full_tensor()
    return {
        "head_is_sharded": type(model.perception_head.weight).__name__ == "DTensor",
        "loss": losses,
        "head_grad_max_diff": (head_grad - reference_model.perception_head.weight.grad).abs().max().item(),
        "head_grad_norm": reference_model.perception_head.weight.grad.norm().item(),
        "embed_grad_max_diff": (embed_grad - reference_model.model.embed_tokens.weight.grad).abs().max().item(),
    }


if __name__ == "__main__":
    main(sys.argv[1])
