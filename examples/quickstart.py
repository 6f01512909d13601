"""trl-omni quickstart: perception-aligned SFT on a tiny Chameleon, then drawing with exact image spans.

Runs offline on a CPU in well under a minute: it builds a tiny random Chameleon in code (no download), trains it
with `PeSFTTrainer` on interleaved rows whose completions contain images, samples completions that draw, and
renders one trajectory to HTML + PNG.

    python examples/quickstart.py --output_dir quickstart-output

For a real model, replace `tiny_chameleon()` with
`load_omni_model("leloy/Anole-7b-v0.1-hf", dtype=torch.bfloat16, device_map={"": 0})` (see docs/pesft.md).
"""

import argparse
import os

import torch
from datasets import Dataset
from transformers import LogitsProcessorList

from trl_omni import (
    ImageSpanLogitsProcessor,
    ImageVocabulary,
    InterleavedDataCollator,
    PeSFTConfig,
    PeSFTTrainer,
    image_part,
    render_trajectory,
    text_part,
)
from trl_omni.testing import tiny_chameleon


def striped_image(vocab: ImageVocabulary, color: int) -> list[int]:
    """An image whose rows alternate between two codes: something simple enough to learn in a few steps."""
    height, width = vocab.grid_size
    return [(color if row % 2 == 0 else color + 1) % vocab.num_codes for row in range(height) for _ in range(width)]


def make_rows(vocab: ImageVocabulary, count: int) -> list[dict]:
    rows = []
    for i in range(count):
        color = 2 * (i % 4)
        rows.append(
            {
                "prompt": [text_part(f"Draw pattern {i % 4}, then count the stripes.")],
                "completion": [
                    text_part("Let me draw it."),
                    image_part(codes=striped_image(vocab, color)),
                    text_part(f"There are {vocab.grid_size[0]} stripes."),
                ],
                "answer": str(vocab.grid_size[0]),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="quickstart-output")
    parser.add_argument("--max_steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    model, processor = tiny_chameleon(seed=args.seed)
    vocab = ImageVocabulary.from_model(model, processor)
    print(f"model: tiny Chameleon, {sum(p.numel() for p in model.parameters()):,} parameters; {vocab}")

    train_dataset = Dataset.from_list(make_rows(vocab, 32))
    config = PeSFTConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=True,
        seed=args.seed,
        interleaved_template="plain",
        perception_loss_weight=1.0,
        disable_tqdm=True,
    )
    trainer = PeSFTTrainer(model, args=config, train_dataset=train_dataset, processing_class=processor)
    print(f"PeSFT: {args.max_steps} steps, loss = NLL + {config.perception_loss_weight} * perception loss")
    trainer.train()
    for entry in trainer.state.log_history:
        if "loss" in entry:
            print(
                f"  step {entry['step']:>3}: loss {entry['loss']:.3f}  nll_text {entry['nll_text']:.3f}  "
                f"nll_image {entry['nll_image']:.3f}  perception_loss {entry['perception_loss']:.4f}  "
                f"image_token_accuracy {entry['image_token_accuracy']:.2f}"
            )

    # Sample completions that draw: the logits processor keeps every image an exact BOI + H*W codes + EOI span.
    collator: InterleavedDataCollator = trainer.data_collator
    prompts = collator.encode_prompt_batch(make_rows(vocab, 4))
    model.eval()
    max_new_tokens = vocab.span_length + 16
    with torch.no_grad():
        out = model.generate(
            **prompts,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            logits_processor=LogitsProcessorList(
                [ImageSpanLogitsProcessor(vocab, max_images=1, max_new_tokens=max_new_tokens)]
            ),
        )
    completions = out[:, prompts["input_ids"].shape[1] :]
    segments = vocab.parse_segments(completions)
    print(
        f"generated {completions.shape[0]} completions: {int(segments.complete.sum())} complete images, "
        f"{int((~segments.complete).sum())} incomplete, {int(segments.stray_image_tokens.sum())} stray image tokens"
    )

    os.makedirs(args.output_dir, exist_ok=True)
    rendered = render_trajectory(completions[0], processor, vocab, title="quickstart sample 0")
    html_path, png_path = rendered.save(os.path.join(args.output_dir, "trajectory"))
    print(f"rendered trajectory: {html_path}, {png_path}")


if __name__ == "__main__":
    main()
