import logging

import torch
from transformers import BitsAndBytesConfig, LogitsProcessorList

from trl_omni import ImageSpanLogitsProcessor, ImageVocabulary, is_image_generation_enabled, load_omni_model
from trl_omni.testing import tiny_chameleon


def test_saved_and_reloaded_model_behaves_identically(tmp_path):
    model, processor = tiny_chameleon(seed=3, save_dir=tmp_path)
    loaded, loaded_processor = load_omni_model(tmp_path, dtype=torch.float32)
    loaded.eval()
    assert type(loaded).__name__ == "ChameleonForConditionalGeneration"
    assert is_image_generation_enabled(loaded)
    assert not any(p.requires_grad for p in loaded.model.vqmodel.parameters())

    vocab = ImageVocabulary.from_model(model, processor)
    reloaded_vocab = ImageVocabulary.from_model(loaded, loaded_processor)
    assert reloaded_vocab.image_token_ids.tolist() == vocab.image_token_ids.tolist()
    assert (reloaded_vocab.boi_token_id, reloaded_vocab.eoi_token_id) == (vocab.boi_token_id, vocab.eoi_token_id)
    torch.testing.assert_close(reloaded_vocab.codebook, vocab.codebook)

    text = ["draw a red square", "hello"]
    assert loaded_processor.tokenizer(text).input_ids == processor.tokenizer(text).input_ids
    ids = torch.cat(
        [processor.tokenizer("zoom", return_tensors="pt").input_ids[0], vocab.image_span_ids(torch.arange(64))]
    )
    torch.testing.assert_close(loaded(input_ids=ids[None]).logits, model(input_ids=ids[None]).logits)

    processors = [ImageSpanLogitsProcessor(v, max_new_tokens=30) for v in (vocab, reloaded_vocab)]
    outs = []
    for m, proc in zip((model, loaded), processors):
        torch.manual_seed(0)
        outs.append(m.generate(input_ids=ids[None, :3], max_new_tokens=30, do_sample=True,
                               logits_processor=LogitsProcessorList([proc])))  # fmt: skip
    torch.testing.assert_close(outs[0], outs[1])


def test_quantized_load_keeps_image_modules_in_full_precision(tmp_path):
    tiny_chameleon(seed=0, save_dir=tmp_path)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model, processor = load_omni_model(tmp_path, dtype=torch.float32, quantization_config=quant)
    import bitsandbytes as bnb

    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.model.vqmodel.modules())
    vocab = ImageVocabulary.from_model(model, processor)
    assert vocab.codebook.dtype == torch.float32 and vocab.codebook.shape == (64, 16)
    ids = vocab.image_span_ids(torch.arange(64))[None]
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_loading_an_anole_checkpoint_with_decoder_weights_is_quiet(anole):
    # Anole checkpoints carry `model.vqmodel.decoder.*`, which transformers' Chameleon has no module for.
    from safetensors import safe_open
    from transformers import ChameleonForConditionalGeneration

    with safe_open(str(anole.path / "model.safetensors"), framework="pt") as f:
        assert any(key.startswith("model.vqmodel.decoder.") for key in f.keys())
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(handler)
    try:
        model, _ = load_omni_model(anole.path)
    finally:
        transformers_logger.removeHandler(handler)
    assert not [r for r in records if "UNEXPECTED" in r.getMessage() or "LOAD REPORT" in r.getMessage()]
    assert "_keys_to_ignore_on_load_unexpected" not in ChameleonForConditionalGeneration.__dict__  # restored
    torch.testing.assert_close(model.lm_head.weight, anole.model.lm_head.weight)


def test_one_loading_path_takes_dtype_names_and_a_device(tmp_path):
    import pytest

    from trl_omni.models import resolve_device

    tiny_chameleon(seed=0, save_dir=tmp_path)
    model, _ = load_omni_model(tmp_path, dtype="bfloat16", device="auto", load_processor=False)
    assert model.dtype == torch.bfloat16 and next(model.parameters()).device == resolve_device("auto")
    assert resolve_device(None) == resolve_device("auto") and resolve_device("cpu") == torch.device("cpu")
    if not torch.accelerator.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="either `device` or a quantization config / `device_map`"):
        load_omni_model(tmp_path, device="cpu", device_map={"": "cpu"}, load_processor=False)
