import logging

import pytest
import torch

from trl_omni.collators import InterleavedDataCollator
from trl_omni.data import InterleavedDataError, image_part, interleaved_features, text_part
from trl_omni.models import ImageVocabulary
from trl_omni.models.encoding import ImageEncoder
from trl_omni.testing import ANSWER_CLOSE, ANSWER_OPEN, BOI, EOI, IMAGE_PLACEHOLDER, REASONING_OPEN
from trl_omni.testing_data import interleaved_rows, make_image


CHAT_TEMPLATE = (
    "{% for m in messages %}{{ bos_token if loop.first else '' }}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TEMPLATES = ["plain", "templated", "chat"]


@pytest.fixture(scope="module")
def tiny_data():
    from trl_omni.testing import tiny_chameleon

    model, processor = tiny_chameleon(seed=0)
    processor.tokenizer.chat_template = CHAT_TEMPLATE
    return model, processor, ImageVocabulary.from_model(model, processor)


def _codes(vocab, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab.num_codes, (vocab.tokens_per_image,), generator=generator).tolist()


def _row(vocab, seed=0, prompt_images=1, completion_images=2, answer="B"):
    prompt = [text_part("Which cell is red?")] + [
        image_part(codes=_codes(vocab, seed + i)) for i in range(prompt_images)
    ]
    completion = [text_part("THOUGHT 0: I mark the cell.")]
    for k in range(completion_images):
        completion += [image_part(codes=_codes(vocab, seed + 100 + k)), text_part(f" THOUGHT {k + 1}: look.")]
    return {"id": f"r{seed}", "prompt": prompt, "completion": completion, "answer": answer}


def _image_codes(row, column):
    return [part["codes"] for part in row[column] if part["type"] == "image"]


@pytest.mark.parametrize("template", TEMPLATES)
def test_round_trip_codes_in_order(tiny_data, template):
    _, processor, vocab = tiny_data
    rows = [_row(vocab, seed=0), _row(vocab, seed=7, prompt_images=0, completion_images=1), _row(vocab, seed=3)]
    batch = InterleavedDataCollator(processor, vocab, template=template)(rows)
    segments = vocab.parse_segments(batch["input_ids"], batch["attention_mask"])
    assert bool(segments.complete.all())
    assert int(segments.stray_image_tokens.sum()) == 0
    per_row = segments.per_row(len(rows))
    for r, row in enumerate(rows):
        expected = _image_codes(row, "prompt") + _image_codes(row, "completion")
        assert [segment.codes.tolist() for segment in per_row[r]] == expected


@pytest.mark.parametrize("template", TEMPLATES)
def test_label_mask_prompt_images_never_trained(tiny_data, template):
    _, processor, vocab = tiny_data
    rows = [_row(vocab, seed=1, prompt_images=2, completion_images=1), _row(vocab, seed=2, completion_images=0)]
    collator = InterleavedDataCollator(processor, vocab, template=template)
    batch = collator(rows)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    for r, row in enumerate(rows):
        prompt_length = len(collator.encode_prompt(row))
        length = int(mask[r].sum())
        # Prompt (text and images) masked, completion trained through the final EOS, padding masked.
        assert bool((labels[r, :prompt_length] == -100).all())
        assert torch.equal(labels[r, prompt_length:length], ids[r, prompt_length:length])
        assert bool((labels[r, length:] == -100).all())
        assert int(ids[r, length - 1]) == processor.tokenizer.eos_token_id
        assert int(labels[r, length - 1]) == processor.tokenizer.eos_token_id
        # The prompt holds every prompt image; the labels hold exactly the completion's image codes.
        completion_mask = vocab.is_image_token(labels[r])
        assert int(vocab.is_image_token(ids[r, :prompt_length]).sum()) == vocab.tokens_per_image * len(
            _image_codes(row, "prompt")
        )
        expected = [code for codes in _image_codes(row, "completion") for code in codes]
        assert vocab.ids_to_codes(labels[r][completion_mask]).tolist() == expected


def test_right_padding_and_mixed_lengths(tiny_data):
    _, processor, vocab = tiny_data
    rows = interleaved_rows(vocab, num_rows=6, seed=4)
    batch = InterleavedDataCollator(processor, vocab)(rows)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1
    assert batch["input_ids"].shape[1] == int(lengths.max())
    for r, length in enumerate(lengths.tolist()):
        assert bool(batch["attention_mask"][r, :length].all()) and not bool(batch["attention_mask"][r, length:].any())
        assert bool((batch["input_ids"][r, length:] == processor.tokenizer.pad_token_id).all())
    padded = InterleavedDataCollator(processor, vocab, pad_to_multiple_of=64)(rows)
    assert padded["input_ids"].shape[1] % 64 == 0


def test_plain_layout_exact_tokens(tiny_data):
    _, processor, vocab = tiny_data
    tokenizer = processor.tokenizer
    codes = _codes(vocab, 5)
    row = {
        "prompt": [text_part("What is it?"), image_part(codes=codes)],
        "completion": [text_part("A box.")],
        "answer": "A",
    }
    batch = InterleavedDataCollator(processor, vocab, template="plain")([row])

    def tok(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    expected = (
        [tokenizer.bos_token_id]
        + tok("What is it?")
        + vocab.image_span_ids(codes).tolist()
        + tok("\n")
        + tok("A box.")
        + tok("\nFinal Answer: A")
        + [tokenizer.eos_token_id]
    )
    assert batch["input_ids"][0].tolist() == expected


def test_templated_layout_and_seeded_lead_phrases(tiny_data):
    _, processor, vocab = tiny_data
    tokenizer = processor.tokenizer
    rows = [_row(vocab, seed=s) for s in range(8)]
    first = InterleavedDataCollator(processor, vocab, template="templated", seed=3)(rows)
    second = InterleavedDataCollator(processor, vocab, template="templated", seed=3)(rows)
    other = InterleavedDataCollator(processor, vocab, template="templated", seed=4)(rows)
    assert torch.equal(first["input_ids"], second["input_ids"])
    assert not torch.equal(first["input_ids"], other["input_ids"])
    text = tokenizer.decode(first["input_ids"][0][first["attention_mask"][0].bool()])
    assert text.startswith(f"{tokenizer.bos_token}You are a helpful assistant.\nUser: Which cell is red?")
    assert "Think with images first." in text and text.count("\nAssistant: ") == 1
    assert text.endswith(f"{ANSWER_OPEN}B{ANSWER_CLOSE}{tokenizer.eos_token}")
    # Control tokens are single tokens, and configurable.
    assert tokenizer.convert_tokens_to_ids(REASONING_OPEN) in first["labels"][0].tolist()
    custom = InterleavedDataCollator(
        processor, vocab, template="templated", reasoning_tokens=("<think>", "</think>"), lead_phrases=["Go."]
    )([rows[0]])
    custom_text = tokenizer.decode(custom["input_ids"][0])
    assert "Go. <think>" in custom_text and "</think>" in custom_text and REASONING_OPEN not in custom_text


@pytest.mark.parametrize("template", TEMPLATES)
def test_question_text_is_the_prompt_as_written(tiny_data, template):
    _, processor, vocab = tiny_data
    row = _row(vocab, prompt_images=1)
    row["prompt"] = [
        text_part("  Which cell is red?\n"),
        image_part(codes=_codes(vocab, 0)),
        text_part("Answer A or B."),
    ]
    collator = InterleavedDataCollator(processor, vocab, template=template)
    assert collator.question_text(row) == "Which cell is red?\nAnswer A or B."
    with pytest.raises(InterleavedDataError, match="prompt"):
        collator.question_text({"prompt": [{"type": "text"}]})


def test_templated_requires_answer(tiny_data):
    _, processor, vocab = tiny_data
    row = _row(vocab, answer="  ")
    with pytest.raises(InterleavedDataError, match=r"Row 0 \(id='r0'\), field 'answer'.*Fix:"):
        InterleavedDataCollator(processor, vocab, template="templated")([row])


def test_chat_template_missing_raises(tiny_data):
    from trl_omni.testing import tiny_chameleon

    _, processor = tiny_chameleon(seed=0)
    vocab = tiny_data[2]
    with pytest.raises(ValueError, match="chat template"):
        InterleavedDataCollator(processor, vocab, template="chat")


def test_chat_template_layout(tiny_data):
    _, processor, vocab = tiny_data
    tokenizer = processor.tokenizer
    row = _row(vocab, seed=9, completion_images=1)
    batch = InterleavedDataCollator(processor, vocab, template="chat", system_prompt="Be brief.")([row])
    ids = batch["input_ids"][0]
    text = tokenizer.decode(ids[~vocab.is_image_token(ids)])
    assert text.startswith(f"{tokenizer.bos_token}<|system|>Be brief.\n<|user|>Which cell is red?{BOI}{EOI}")
    assert text.endswith(f"Final Answer: B\n{tokenizer.eos_token}")


@pytest.mark.parametrize("template", TEMPLATES)
def test_encode_prompt_is_prefix(tiny_data, template):
    _, processor, vocab = tiny_data
    rows = [_row(vocab, seed=11), _row(vocab, seed=12, prompt_images=2)]
    collator = InterleavedDataCollator(processor, vocab, template=template)
    batch = collator(rows)
    prompts = collator.encode_prompts(rows)
    for r, prompt_ids in enumerate(prompts):
        assert batch["input_ids"][r, : len(prompt_ids)].tolist() == prompt_ids
        assert int((batch["labels"][r] != -100).nonzero()[0]) == len(prompt_ids)
    # A prompt-only row (RL) works without completion / answer.
    assert collator.encode_prompt({"prompt": rows[0]["prompt"]}) == prompts[0]


def test_encode_prompt_batch_left_padded_generates(tiny_data):
    from transformers import LogitsProcessorList

    from trl_omni.models import ImageSpanLogitsProcessor

    model, processor, vocab = tiny_data
    rows = [_row(vocab, seed=13, prompt_images=0), _row(vocab, seed=14, prompt_images=2)]
    collator = InterleavedDataCollator(processor, vocab, template="templated")
    inputs = collator.encode_prompt_batch(rows)
    prompts = collator.encode_prompts(rows)
    for r, prompt_ids in enumerate(prompts):
        assert int(inputs["attention_mask"][r].sum()) == len(prompt_ids)
        assert inputs["input_ids"][r, -len(prompt_ids) :].tolist() == prompt_ids  # left padded
    right = collator.encode_prompt_batch(rows, padding_side="right")
    assert right["input_ids"][0, : len(prompts[0])].tolist() == prompts[0]
    out = model.generate(
        **inputs,
        max_new_tokens=4,
        do_sample=False,
        logits_processor=LogitsProcessorList([ImageSpanLogitsProcessor(vocab, max_new_tokens=4)]),
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    assert out.shape == (2, inputs["input_ids"].shape[1] + 4)


def test_length_policy_drop_counts_and_warns(tiny_data, caplog):
    _, processor, vocab = tiny_data
    short = {"id": "short", "prompt": "Hi", "completion": "Ok", "answer": "A"}
    long = _row(vocab, seed=1, completion_images=2)
    collator = InterleavedDataCollator(processor, vocab, max_length=100)
    with caplog.at_level(logging.WARNING):
        batch = collator([short, long, short])
    assert batch["input_ids"].shape[0] == 2
    assert collator.stats["dropped"] == 1 and collator.stats["rows"] == 3
    assert "id='r1'" in caplog.text and "max_length=100" in caplog.text
    with pytest.raises(ValueError, match="Every row of this batch"):
        collator([long])
    assert collator.stats["dropped"] == 2


def test_length_policy_truncate_never_cuts_an_image(tiny_data):
    _, processor, vocab = tiny_data
    row = _row(vocab, seed=2, prompt_images=1, completion_images=2)
    full = InterleavedDataCollator(processor, vocab)([row])["input_ids"][0]
    segments = vocab.parse_segments(full)
    second_start, second_end = int(segments.start[1]), int(segments.end[1])
    for max_length in (second_start + 1, second_start + 30, second_end - 1):
        collator = InterleavedDataCollator(processor, vocab, max_length=max_length, length_policy="truncate")
        batch = collator([row])
        assert batch["input_ids"].shape[1] == second_start  # cut before the BOI of the straddling image
        assert torch.equal(batch["input_ids"][0], full[:second_start])
        assert bool(vocab.parse_segments(batch["input_ids"]).complete.all())
        assert collator.stats["truncated"] == 1
    collator = InterleavedDataCollator(processor, vocab, max_length=second_end + 3, length_policy="truncate")
    assert collator([row])["input_ids"].shape[1] == second_end + 3  # text may be cut anywhere
    # Nothing trainable left before the cut: the row is dropped (counted).
    prompt_only = len(InterleavedDataCollator(processor, vocab).encode_prompt(row))
    collator = InterleavedDataCollator(processor, vocab, max_length=prompt_only, length_policy="truncate")
    with pytest.raises(ValueError, match="Every row"):
        collator([row])
    assert collator.stats["dropped"] == 1


@pytest.mark.parametrize("literal", [BOI, EOI, IMAGE_PLACEHOLDER, "IMGIMGBZ"])
def test_text_with_image_token_strings_rejected(tiny_data, literal):
    _, processor, vocab = tiny_data
    row = _row(vocab, seed=3)
    row["completion"][0] = text_part(f"THOUGHT 0: {literal} here")
    with pytest.raises(InterleavedDataError, match=r"Row 0 \(id='r3'\), field 'completion\[0\]\.text'.*Fix:"):
        InterleavedDataCollator(processor, vocab)([row])


def test_bad_codes_rejected(tiny_data):
    _, processor, vocab = tiny_data
    collator = InterleavedDataCollator(processor, vocab)
    row = _row(vocab, seed=4)
    row["completion"][1] = image_part(codes=_codes(vocab, 1)[:-1])
    with pytest.raises(InterleavedDataError, match=r"field 'completion\[1\]\.codes'.*exactly 64.*pretokenize_images"):
        collator([row])
    row["completion"][1] = image_part(codes=[vocab.num_codes] * vocab.tokens_per_image)
    with pytest.raises(InterleavedDataError, match=r"field 'completion\[1\]\.codes'"):
        collator([row])


def test_empty_question_and_unencoded_image_rejected(tiny_data):
    _, processor, vocab = tiny_data
    collator = InterleavedDataCollator(processor, vocab)
    with pytest.raises(InterleavedDataError, match=r"field 'prompt': the prompt \(question\) is empty"):
        collator([{"prompt": [text_part("  ")], "completion": "x"}])
    with pytest.raises(InterleavedDataError, match=r"nothing to train"):
        collator([{"prompt": "Q?", "completion": [], "answer": None}])
    row = {"prompt": [image_part(image=make_image())], "completion": "x"}
    with pytest.raises(InterleavedDataError, match=r"field 'prompt\[0\]'.*not pre-tokenized.*pretokenize_images"):
        collator([row])


def test_on_the_fly_encoding_matches_codes(tiny_data):
    model, processor, vocab = tiny_data
    images = [make_image((40, 30), seed=1), make_image((32, 32), mode="L", seed=2)]
    codes = ImageEncoder(model, processor).encode(images)
    raw = {"prompt": [text_part("Q"), image_part(image=images[0])], "completion": [image_part(image=images[1])]}
    pre = {"prompt": [text_part("Q"), image_part(codes=codes[0])], "completion": [image_part(codes=codes[1])]}
    collator = InterleavedDataCollator(processor, vocab, image_encoder=ImageEncoder(model, processor))
    assert torch.equal(collator([raw])["input_ids"], InterleavedDataCollator(processor, vocab)([pre])["input_ids"])
    assert collator.stats["images_encoded"] == 2


def test_batches_from_arrow_dataset(tiny_data, tmp_path):
    from datasets import Dataset, load_from_disk

    _, processor, vocab = tiny_data
    rows = interleaved_rows(vocab, num_rows=5, seed=8)
    dataset = Dataset.from_list(rows, features=interleaved_features())
    dataset = dataset.map(lambda row: {"answer": row["answer"].lower()})
    dataset.save_to_disk(str(tmp_path / "ds"))
    loaded = load_from_disk(str(tmp_path / "ds"))
    assert "image" not in loaded.column_names and "images" not in loaded.column_names
    collator = InterleavedDataCollator(processor, vocab)
    from_arrow = collator(list(loaded))
    expected_rows = [{**row, "answer": row["answer"].lower()} for row in rows]
    assert torch.equal(from_arrow["input_ids"], InterleavedDataCollator(processor, vocab)(expected_rows)["input_ids"])


def test_sft_trainer_trains_on_collator_batches(tmp_path):
    import math

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from trl_omni.testing import tiny_chameleon

    model, processor = tiny_chameleon(seed=1)
    vocab = ImageVocabulary.from_model(model, processor)
    dataset = Dataset.from_list(interleaved_rows(vocab, num_rows=4, seed=1), features=interleaved_features())
    args = SFTConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=processor.tokenizer,
        data_collator=InterleavedDataCollator(processor, vocab),
    )
    loss = trainer.train().training_loss
    assert math.isfinite(loss)
    changed = [name for name, p in model.named_parameters() if name in before and not torch.equal(before[name], p)]
    assert "lm_head.weight" in changed and len(changed) > len(before) // 2
