"""Step time and peak memory of PeSFTTrainer against plain SFTTrainer (and the naive second-forward variant).

The three trainers get identical models (same seed, same perception-head init) and the same batches; their steps
alternate in one process (the order rotates every round), so machine noise hits all of them alike. A step is
`training_step` (forward + backward, gradient checkpointing on, as TRL's default) + `optimizer.step()` +
`zero_grad()`.

- time: median wall-clock over the measured rounds (after warm-up rounds); the ratio of the fastest steps is printed
  too, since on a shared machine other jobs inflate single steps.
- peak memory: CPU has no `max_memory_allocated`, so one extra step per trainer runs under
  `torch.profiler.profile(profile_memory=True)`; its allocation / free events (every tensor the step allocates,
  activations, gradients and temporaries alike) are summed in time order, and the peak of that running sum is the
  step's peak memory above what was alive before it (weights and optimizer states). RSS is not used: the allocator
  keeps freed pages, so RSS deltas under-report.
- naive: `SFTTrainer` plus a second forward with `output_hidden_states=True` to get the final hidden state (what the
  authors' release does), with the same perception head and loss.

Run: `python benchmarks/bench_pesft.py` (about 1.5 minutes on 2 CPU cores). Options: `--hidden 256 --layers 4
--image-size 48 --images 2 --batch 2 --rounds 20 --threads 1`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from trl_omni import ImageVocabulary  # noqa: E402
from trl_omni.testing import tiny_chameleon  # noqa: E402
from trl_omni.trainers import PeSFTConfig, PeSFTTrainer, add_perception_head, get_perception_head  # noqa: E402


class NaivePeSFTTrainer(SFTTrainer):
    """The naive baseline: TRL's NLL, then a second full forward with `output_hidden_states=True` for L_Pe."""

    def __init__(self, *args, image_vocabulary, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_vocabulary = image_vocabulary

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        labels = inputs["labels"]
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            output_hidden_states=True,
            use_cache=False,
        )
        hidden = outputs.hidden_states[-1]
        mask = self.image_vocabulary.is_image_token(labels)
        mask[:, 0] = False
        rows, positions = mask.nonzero(as_tuple=True)
        projection = get_perception_head(model)(hidden[rows, positions - 1])
        targets = self.image_vocabulary.codebook_on(projection.device)[
            self.image_vocabulary.ids_to_codes(labels[mask])
        ]
        perception = (projection.float() - targets).pow(2).sum(-1).mean()
        return loss + perception


def build_rows(vocab, tokenizer, num_rows, images_per_row, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(num_rows):
        prompt = tokenizer("User: What is shown? Think with images first. Assistant:").input_ids
        completion = tokenizer(" Let me draw it.").input_ids
        for k in range(images_per_row):
            codes = torch.randint(0, vocab.num_codes, (vocab.tokens_per_image,), generator=generator)
            completion += (
                vocab.image_span_ids(codes).tolist() + tokenizer(f" THOUGHT {k}: I mark the object.").input_ids
            )
        completion += tokenizer(" The answer is A.").input_ids + [tokenizer.eos_token_id]
        rows.append({"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)})
    return rows


def peak_step_memory(step) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=48, help="image side in pixels; grid side = size / 4")
    parser.add_argument("--codebook-dim", type=int, default=64)
    parser.add_argument("--images", type=int, default=2, help="completion images per row")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a shared machine steady)")
    parser.add_argument("--warmup", type=int, default=2)
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    torch.manual_seed(0)

    def model_and_processor():
        return tiny_chameleon(
            seed=0,
            hidden_size=cli.hidden,
            num_hidden_layers=cli.layers,
            num_attention_heads=cli.heads,
            image_size=cli.image_size,
            codebook_dim=cli.codebook_dim,
        )

    model, processor = model_and_processor()
    vocab = ImageVocabulary.from_model(model, processor)
    dataset = Dataset.from_list(build_rows(vocab, processor.tokenizer, cli.batch * 2, cli.images))
    output_dir = tempfile.mkdtemp(prefix="bench-pesft-")
    common = dict(
        per_device_train_batch_size=cli.batch,
        bf16=False,
        use_cpu=True,
        report_to="none",
        seed=0,
        max_length=None,
        completion_only_loss=True,
        gradient_checkpointing=True,
        learning_rate=1e-4,
    )

    trainers = {}
    trainers["sft"] = SFTTrainer(
        model, args=SFTConfig(f"{output_dir}/sft", **common), train_dataset=dataset, processing_class=processor
    )
    pe_model, _ = model_and_processor()
    trainers["pesft"] = PeSFTTrainer(
        pe_model, args=PeSFTConfig(f"{output_dir}/pesft", **common), train_dataset=dataset, processing_class=processor
    )
    naive_model, _ = model_and_processor()
    add_perception_head(naive_model, vocab, seed=0)
    trainers["naive"] = NaivePeSFTTrainer(
        naive_model,
        args=SFTConfig(f"{output_dir}/naive", **common),
        train_dataset=dataset,
        processing_class=processor,
        image_vocabulary=vocab,
    )

    batches = []
    for start in range(0, len(dataset), cli.batch):
        rows = [trainers["sft"].train_dataset[i] for i in range(start, start + cli.batch)]
        batches.append(trainers["sft"].data_collator(rows))
    labels = torch.cat([b["labels"][:, 1:].reshape(-1) for b in batches])
    image_fraction = vocab.is_image_token(labels).sum().item() / (labels != -100).sum().item()
    seq_len = batches[0]["input_ids"].shape[1]

    for trainer in trainers.values():
        trainer.create_optimizer()
        trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        trainer.model.train()

    def make_step(trainer, batch):
        def step():
            inputs = {k: v.clone() for k, v in batch.items()}
            num_items = (inputs["labels"][:, 1:] != -100).sum()
            trainer.training_step(trainer.model, inputs, num_items)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)

        return step

    names = list(trainers)
    times = {name: [] for name in names}
    for round_index in range(cli.warmup + cli.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        batch = batches[round_index % len(batches)]
        for name in order:
            step = make_step(trainers[name], batch)
            start = time.perf_counter()
            step()
            if round_index >= cli.warmup:
                times[name].append(time.perf_counter() - start)
    memory = {name: peak_step_memory(make_step(trainers[name], batches[0])) for name in names}

    median = {name: statistics.median(values) for name, values in times.items()}
    fastest = {name: min(values) for name, values in times.items()}
    print(
        f"model: hidden {cli.hidden}, {cli.layers} layers, vocab {model.config.vocab_size}, codebook "
        f"{vocab.num_codes}x{vocab.codebook_dim}; batch {cli.batch} x {seq_len} tokens, "
        f"{image_fraction:.0%} of the labelled tokens are image tokens; {cli.rounds} measured rounds"
    )
    print(
        f"{'variant':<8} {'step s (median)':>16} {'time ratio':>11} {'min ratio':>10} {'peak MiB':>10} "
        f"{'memory ratio':>13}"
    )
    for name in names:
        print(
            f"{name:<8} {median[name]:>16.4f} {median[name] / median['sft']:>11.3f} "
            f"{fastest[name] / fastest['sft']:>10.3f} {memory[name] / 2**20:>10.1f} "
            f"{memory[name] / memory['sft']:>13.3f}"
        )


if __name__ == "__main__":
    main()
