"""Two-process PeSFT run for tests/test_pesft_trainer.py: `torchrun --nproc_per_node 2 pesft_ddp.py OUT_DIR`.

Each rank trains on its own shard of the rows (gloo on CPU) and saves its trainable weights, so the test can check
that both ranks end identical (perception head included).
"""

import json
import os
import sys


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

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
    if rank == 0:
        with open(os.path.join(out_dir, "ranks.json"), "w") as handle:
            json.dump({"world_size": dist.get_world_size(), "distinct_batches": gathered[0] != gathered[1]}, handle)


if __name__ == "__main__":
    main(sys.argv[1])
