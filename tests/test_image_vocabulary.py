import pytest
import torch

from trl_omni import ImageVocabulary
from trl_omni.testing import tiny_chameleon


def test_facts_read_from_model_and_processor(tiny, vocab):
    model, processor = tiny
    tokenizer = processor.tokenizer
    assert vocab.boi_token_id == tokenizer.convert_tokens_to_ids("<racm3:break>")
    assert vocab.eoi_token_id == tokenizer.convert_tokens_to_ids("<eoss>")
    assert vocab.image_placeholder_id == tokenizer.convert_tokens_to_ids("<image>")
    assert vocab.grid_size == (8, 8)
    assert vocab.tokens_per_image == processor.image_seq_length == 64
    assert vocab.span_length == 66
    assert vocab.num_codes == 64 and vocab.codebook_dim == 16
    torch.testing.assert_close(vocab.codebook, model.model.vqmodel.quantize.embedding.weight.detach().float())
    assert not vocab.codebook.requires_grad
    # A copy, not a view: changing the model later must not move the targets.
    assert vocab.codebook.data_ptr() != model.model.vqmodel.quantize.embedding.weight.data_ptr()


def test_ids_codes_round_trip_over_whole_codebook(tiny, vocab):
    model, _ = tiny
    mapping = model.model.vocabulary_mapping
    codes = torch.arange(vocab.num_codes)
    ids = vocab.codes_to_ids(codes)
    torch.testing.assert_close(vocab.ids_to_codes(ids), codes)
    # Agrees with the model's own tables in both directions.
    assert {int(i): int(c) for i, c in zip(ids, codes)} == mapping.bpe2img
    torch.testing.assert_close(ids, mapping.convert_img2bpe(codes).long())
    # The tiny model shuffles image ids, so no constant offset maps ids to codes.
    assert len(set((ids - codes).tolist())) > 1


def test_ids_to_codes_batched_any_shape_and_non_image_ids(vocab):
    ids = torch.stack([vocab.codes_to_ids(torch.arange(8)), torch.tensor([0, 1, 2, 3, vocab.boi_token_id, 7, 9, 11])])
    codes = vocab.ids_to_codes(ids)
    assert codes.shape == (2, 8)
    torch.testing.assert_close(codes[0], torch.arange(8))
    assert (codes[1] == -1).all()
    assert vocab.is_image_token(ids).tolist() == [[True] * 8, [False] * 8]
    # Out-of-vocabulary ids (e.g. -100 labels) are not image tokens and do not crash.
    assert vocab.ids_to_codes(torch.tensor([-100, 10**6])).tolist() == [-1, -1]


def test_codes_to_ids_rejects_out_of_range(vocab):
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        vocab.codes_to_ids(torch.tensor([0, 64]))
    with pytest.raises(ValueError):
        vocab.codes_to_ids(torch.tensor([-1]))


def test_image_span_ids(vocab):
    codes = torch.arange(64).reshape(8, 8) % vocab.num_codes
    span = vocab.image_span_ids(codes)
    assert span.shape == (66,)
    assert span[0] == vocab.boi_token_id and span[-1] == vocab.eoi_token_id
    torch.testing.assert_close(vocab.ids_to_codes(span[1:-1]), codes.flatten())
    with pytest.raises(ValueError, match="exactly 64 codes"):
        vocab.image_span_ids(torch.arange(10))


def test_image_token_mask(vocab):
    mask = vocab.image_token_mask(vocab.vocab_size)
    assert mask.sum() == vocab.num_codes
    assert mask[vocab.codes_to_ids(torch.arange(vocab.num_codes))].all()
    assert not mask[[vocab.boi_token_id, vocab.eoi_token_id, vocab.image_placeholder_id]].any()


def test_from_model_through_peft_wrapper(tiny, vocab):
    from peft import LoraConfig, get_peft_model

    model, processor = tiny_chameleon(seed=0)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    wrapped = ImageVocabulary.from_model(peft_model, processor)
    torch.testing.assert_close(wrapped.image_token_ids, vocab.image_token_ids)
    torch.testing.assert_close(wrapped.codebook, vocab.codebook)


def test_processor_model_mismatch_is_refused(tiny):
    model, processor = tiny
    other, other_processor = tiny_chameleon(image_size=16)  # 4x4 grid
    with pytest.raises(ValueError, match="image_seq_length"):
        ImageVocabulary.from_model(other, processor)


def test_non_chameleon_model_is_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=64))  # fmt: skip
    with pytest.raises(ValueError, match="model_type='llama'"):
        ImageVocabulary.from_model(llama)


def test_codebook_on_device_cached(vocab):
    a = vocab.codebook_on("cpu", torch.float64)
    assert a.dtype == torch.float64 and a is vocab.codebook_on("cpu", torch.float64)
