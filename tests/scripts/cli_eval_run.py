"""Evaluation fixture shared by tests/test_evaluation.py (in-process) and its killed subprocess.

`python tests/scripts/cli_eval_run.py OUT_DIR [DELAY]` evaluates 20 Omni-Bench-schema rows with the tiny model;
DELAY seconds are spent per generation step so that the test can kill the run between two batches.
"""

import json
import sys
import time
from pathlib import Path

import torch
from transformers import LogitsProcessor


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trl_omni.evaluation import EvalConfig, evaluate  # noqa: E402
from trl_omni.models import ImageVocabulary  # noqa: E402
from trl_omni.testing import ANSWER_CLOSE, ANSWER_OPEN, tiny_chameleon  # noqa: E402
from trl_omni.testing_data import omni_bench_rows  # noqa: E402


class ScriptedAnswer(LogitsProcessor):
    """Makes the random tiny model draw one image, then answer `<answer_open> 10 <answer_close>` and stop.

    The image's codes are left to the model (and the sampler); the image-span constraint applied after this
    processor forces the span itself. `delay` slows every step down (for the kill-and-resume test).
    """

    def __init__(self, processor, vocab, delay: float = 0.0):
        tokenizer = processor.tokenizer
        vocab_size = len(tokenizer)
        answer = tokenizer(" 10", add_special_tokens=False)["input_ids"]
        after_image = tokenizer.convert_tokens_to_ids([ANSWER_OPEN]) + answer
        after_image += tokenizer.convert_tokens_to_ids([ANSWER_CLOSE]) + [tokenizer.eos_token_id]
        self.boi = vocab.boi_token_id
        self.span_length = vocab.span_length
        self.after_image = after_image
        self.vocab_size = vocab_size
        self.delay = delay
        self.last_length = None
        self.prompt_length = None

    def __call__(self, input_ids, scores):
        length = input_ids.shape[1]
        if self.last_length is None or length != self.last_length + 1:
            self.prompt_length = length  # a new generate call
        self.last_length = length
        step = length - self.prompt_length
        if self.delay:
            time.sleep(self.delay)
        forced = None
        if step == 0:
            forced = self.boi
        elif 0 <= step - self.span_length < len(self.after_image):  # after BOI + codes + EOI
            forced = self.after_image[step - self.span_length]
        if forced is not None:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, forced] = 0.0
        return scores


def rows(num_rows: int = 20) -> list[dict]:
    data = omni_bench_rows(num_rows, seed=0)
    for i, row in enumerate(data):
        if i % 2 == 0:
            row["answer"] = "10"  # the scripted answer: these rows score 1, the others 0
    return data


def run(out_dir: str, delay: float = 0.0, **config_overrides):
    model, processor = tiny_chameleon(seed=0)
    vocab = ImageVocabulary.from_model(model, processor)
    torch.set_num_threads(1)
    config = dict(
        output_dir=out_dir, batch_size=4, max_new_tokens=80, max_images=1, do_sample=True, seed=0, progress=False,
        print_table=False, report_max_rows=8,
    )  # fmt: skip
    config.update(config_overrides)
    return evaluate(
        model, processor, rows(), EvalConfig(**config), dataset_format="omni_bench",
        logits_processors=[ScriptedAnswer(processor, vocab, delay)],
    )  # fmt: skip


if __name__ == "__main__":
    result = run(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
    print(json.dumps({"num_generated": result.num_generated}))
