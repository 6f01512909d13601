"""Two-process PeRPO run (torchrun, gloo on CPU) for tests/test_perpo_distributed.py.

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/scripts/perpo_ddp.py OUTPUT_DIR
Each rank writes rank{N}.pt with its final trainable weights, its training logs and the initial lm_head.
"""

import os
import sys

import torch
from datasets import Dataset

from trl_omni.models import ImageVocabulary
from trl_omni.testing import tiny_chameleon
from trl_omni.trainers import PeRPOConfig, PeRPOTrainer


def reward(completions, image_segments, completion_ids, **kwargs):
    return [
        float(sum(s.complete for s in segs)) + float(sum(ids) % 5) for segs, ids in zip(image_segments, completion_ids)
    ]


def main(output_dir: str) -> None:
    model, processor = tiny_chameleon(seed=0)
    initial_lm_head = model.lm_head.weight.detach().clone()
    vocab = ImageVocabulary.from_model(model, processor)
    args = PeRPOConfig(
        output_dir=output_dir,
        num_generations=4,  # groups of 4 over 2 ranks x 2 rows: each group spans both processes
        per_device_train_batch_size=2,
        max_completion_length=70,
        max_steps=2,
        learning_rate=1e-2,
        bf16=False,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        filter_degenerate_groups=True,
        seed=5,
        generation_kwargs={"sequence_bias": {(vocab.boi_token_id,): 8.0}},
    )
    prompts = ["What is shown in the image?", "Let me draw it.", "The answer is A.", "I draw an auxiliary line."]
    trainer = PeRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts * 2}),
        processing_class=processor,
    )
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    torch.save(
        {
            "world_size": trainer.accelerator.num_processes,
            "weights": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
            "initial_lm_head": initial_lm_head,
            "logs": trainer.state.log_history,
        },
        os.path.join(output_dir, f"rank{rank}.pt"),
    )
    # Both ranks leave together and tear the gloo group down while the interpreter is alive (no abort at exit).
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
