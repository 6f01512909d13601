"""Peak device memory of a PeRPO and a GRPO step, per phase (rollout, then the rest of the step), one trainer at a time.

Each trainer gets a fresh Anole-7B-config model (random weights, bf16, LoRA r = 16 on the attention projections;
`gpu_suite.py`'s builders), one prompt ending with BOI, G = 8 completions of one image span plus text, and one
optimizer step. The peak is reset before the rollout and again after it, so the two phases are read apart; the memory
still allocated before each model is built is printed too, so a trainer that outlives its run shows up in the next
one's figures instead of inflating them silently. The default order, PeRPO, GRPO, PeRPO, puts PeRPO both first and
last.

Usage (on the device, from the repository root, with the carried wheels installed as `gpu_run.sh` does):
    python benchmarks/perpo_memory.py --out DIR [--order perpo grpo perpo] [--layers N]
    python benchmarks/perpo_memory.py --out DIR --tiny     # the same code on a tiny model on the CPU (no memory)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import weakref
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_suite  # noqa: E402  (puts the repository on sys.path and sets the offline environment)
import torch  # noqa: E402


def _memory(suite: gpu_suite.Suite) -> dict[str, float] | None:
    if not suite.cuda:
        return None
    return {
        "allocated_gib": round(torch.cuda.memory_allocated() / gpu_suite.GiB, 3),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / gpu_suite.GiB, 3),
    }


def run_one(suite: gpu_suite.Suite, kind: str, index: int) -> dict[str, Any]:
    """One optimizer step of `kind` ("perpo" or "grpo") on a fresh model; memory per phase and seconds."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from trl_omni.trainers import PeRPOConfig, PeRPOTrainer

    vocab, tokenizer = suite.vocab, suite.tokenizer
    length = vocab.tokens_per_image + 1 + suite.profile.rl_text_tokens
    text = "User: Which cell of the grid is red? Think with images first. Assistant: Let me draw it."
    prompt_ids = [tokenizer.bos_token_id, *gpu_suite.text_ids(tokenizer, text), vocab.boi_token_id]
    entry: dict[str, Any] = {"kind": kind, "before_build": _memory(suite)}
    model = suite.build_model()
    common = dict(
        gpu_suite.training_kwargs(suite, suite.workdir / f"{kind}{index}", 1), num_generations=8,
        per_device_train_batch_size=8, max_completion_length=length, learning_rate=1e-6, beta=0.0, temperature=1.0,
        top_k=0, generation_kwargs={"min_new_tokens": length},
    )  # fmt: skip
    peft = gpu_suite.lora_config(["q_proj", "k_proj", "v_proj", "o_proj"])
    if kind == "grpo":
        trainer = GRPOTrainer(
            model, reward_funcs=gpu_suite.length_reward, args=GRPOConfig(**common),
            train_dataset=Dataset.from_dict({"prompt": [text]}), processing_class=tokenizer, peft_config=peft,
        )  # fmt: skip
    else:
        trainer = PeRPOTrainer(
            model, reward_funcs=gpu_suite.length_reward, args=PeRPOConfig(**common, log_rendered_trajectories=0),
            train_dataset=Dataset.from_dict({"prompt": [text], "prompt_ids": [prompt_ids]}),
            processing_class=tokenizer, peft_config=peft,
        )  # fmt: skip
    gpu_suite.quiet(trainer)
    entry["after_trainer"] = _memory(suite)
    generate = trainer._generate_single_turn

    def timed_generate(*args: Any, _generate: Any = generate, **kwargs: Any) -> Any:
        suite.reset_peak()
        start = time.perf_counter()
        output = _generate(*args, **kwargs)
        suite.sync()
        entry["rollout_s"] = round(time.perf_counter() - start, 2)
        entry["rollout"] = _memory(suite)
        suite.reset_peak()  # what follows is the rest of the step: rewards, loss, backward, optimizer
        return output

    trainer._generate_single_turn = timed_generate
    start = time.perf_counter()
    trainer.train()
    suite.sync()
    entry["step_s"] = round(time.perf_counter() - start, 2)
    entry["rest_of_step"] = _memory(suite)
    released = weakref.ref(trainer)
    del trainer, model, generate, timed_generate
    gc.collect()
    suite.cleanup()
    entry["released"] = released() is None
    entry["after_release"] = _memory(suite)
    return entry


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory of perpo_memory.json")
    parser.add_argument("--order", nargs="+", default=["perpo", "grpo", "perpo"], choices=["perpo", "grpo"])
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (no memory figures)")
    parser.add_argument("--layers", type=int, default=None, help="override the number of layers (reported)")
    cli = parser.parse_args(argv)
    suite_args = (
        ["--out", cli.out] + (["--tiny"] if cli.tiny else []) + (["--layers", str(cli.layers)] if cli.layers else [])
    )
    suite = gpu_suite.Suite(gpu_suite.parse_args(suite_args))
    suite.release_base_model(keep_vocab=True)
    print(f"{suite.results['meta']['device_name']} | {suite.model_description()}", flush=True)
    entries = []
    for index, kind in enumerate(cli.order):
        entries.append(run_one(suite, kind, index))
        print(json.dumps(entries[-1]), flush=True)
        (Path(cli.out) / "perpo_memory.json").write_text(json.dumps(entries, indent=1))
    return entries


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # do not let CUDA teardown hold the device call
