"""The real-layout Anole fixture: the layout facts every user path depends on, read back through the core."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ChameleonProcessor

from trl_omni import ImageVocabulary, is_image_generation_enabled
from trl_omni.models import ImageEncoder, decode_images, load_vq_decoder
from trl_omni.testing import anole_layout_config, anole_layout_vocabulary, tiny_anole


def test_image_vocabulary_reads_anoles_layout(anole):
    vocab = ImageVocabulary.from_model(anole.model, anole.processor)
    assert vocab.vocab_size == 65_536 and anole.model.config.vocab_size == 65_536
    assert (vocab.boi_token_id, vocab.eoi_token_id, vocab.image_placeholder_id) == (8197, 8196, 8711)
    assert vocab.num_codes == 8192 and vocab.codebook_dim == 256
    assert vocab.grid_size == (32, 32) and vocab.tokens_per_image == 1024 and vocab.span_length == 1026
    # Monotonic like Anole's: code c is id c + 4, and the id decodes back to the code.
    assert torch.equal(vocab.image_token_ids, torch.arange(4, 8196))
    assert torch.equal(vocab.ids_to_codes(torch.tensor([3, 4, 8195, 8196, 8197])), torch.tensor([-1, 0, 8191, -1, -1]))
    assert is_image_generation_enabled(anole.model)


def test_vocabulary_map_is_complete_and_names_every_id_as_anole_does(anole):
    vocabulary_map = anole.model.config.vocabulary_map
    assert sorted(vocabulary_map.values()) == list(range(65_536))
    assert [vocabulary_map[name] for name in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert vocabulary_map["IMGIMGAZ"] == 4 and vocabulary_map["IMGIMGIBJBZ"] == 4 + 8191
    assert (vocabulary_map["<eoss>"], vocabulary_map["<racm3:break>"], vocabulary_map["<image>"]) == (8196, 8197, 8711)
    reserved = {name: index for name, index in vocabulary_map.items() if name.startswith("<reserved")}
    assert reserved and all(index == int(name[len("<reserved") : -1]) + 4 for name, index in reserved.items())
    assert "<reserved08707>" not in reserved  # renamed `<image>` by the conversion, as in the real checkpoint
    assert vocabulary_map == anole_layout_vocabulary()


def test_special_ids_follow_the_real_checkpoint(anole):
    tokenizer = anole.processor.tokenizer
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.sep_token_id == 8710
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<reserved12856>", "<reserved12867>")] == [12860, 12871]
    # The conversion leaves ChameleonConfig's defaults in the saved config: only the tokenizer knows BOS is 0 ...
    saved = json.loads((anole.path / "config.json").read_text())
    assert (saved["bos_token_id"], saved["eos_token_id"], saved.get("pad_token_id")) == (1, 2, None)
    # ... and load_omni_model takes the tokenizer's ids, for generation and the trainers.
    for config in (anole.model.config, anole.model.generation_config):
        assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 2, 1)
    # Like the real (Llama) tokenizer, BOS is prepended; special tokens are dropped when decoding.
    ids = tokenizer("Let me draw it. <reserved12856>").input_ids
    assert ids[0] == 0 and ids[-1] == 12860
    assert all(i >= 16_388 for i in ids[1:-1])  # text BPE tokens sit after the reserved block
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Let me draw it. "


def test_processor_expands_an_image_to_a_1026_token_span_and_resizes_to_512(anole):
    processor = anole.processor
    assert processor.image_seq_length == 1024
    image_processor = processor.image_processor
    assert image_processor.size["shortest_edge"] == 512
    assert (image_processor.crop_size["height"], image_processor.crop_size["width"]) == (512, 512)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (300, 700, 3), dtype=np.uint8))
    batch = processor(text="Look:<image>", images=[image], return_for_text_completion=True)
    ids = batch["input_ids"][0].tolist()
    start = ids.index(8197)
    assert ids[start + 1 : start + 1025] == [8711] * 1024 and ids[start + 1025] == 8196
    assert tuple(batch["pixel_values"].shape) == (1, 3, 512, 512)


def test_saved_processor_round_trips(anole):
    reloaded = ChameleonProcessor.from_pretrained(anole.path)
    assert reloaded.tokenizer.get_vocab() == anole_layout_vocabulary()
    text = ["What is shown? Let me draw it.", "<reserved12866>B<reserved12867>"]
    assert reloaded.tokenizer(text).input_ids == anole.processor.tokenizer(text).input_ids
    assert reloaded.image_processor.to_dict() == anole.processor.image_processor.to_dict()


def test_512_pixel_image_pretokenizes_to_1024_codes_and_decodes_to_512_pixels(anole):
    vocab = ImageVocabulary.from_model(anole.model, anole.processor)
    image = Image.fromarray(np.random.RandomState(1).randint(0, 256, (512, 512, 3), dtype=np.uint8))
    codes = ImageEncoder(anole.model, anole.processor, vocab).encode([image])
    assert codes.shape == (1, 1024) and 0 <= int(codes.min()) and int(codes.max()) < 8192
    span = vocab.image_span_ids(codes[0])
    assert span.numel() == 1026 and span[0] == 8197 and span[-1] == 8196
    assert torch.equal(span[1:-1], codes[0] + 4)

    # The checkpoint carries decoder weights under Anole's key names, so the real decoding path runs.
    decoder = load_vq_decoder(anole.model, anole.path, image_processor=anole.processor.image_processor)
    (decoded,) = decode_images(codes, decoder, vocab)
    assert decoded.size == (512, 512) and decoded.mode == "RGB"


def test_fixture_is_seeded_and_survives_save_and_load(anole):
    rebuilt, _ = tiny_anole(seed=0, enable_generation=False)
    loaded = anole.model.state_dict()
    for name, tensor in rebuilt.state_dict().items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)


def test_layout_config_defaults_to_anole_7b_and_keeps_the_layout_fixed():
    config = anole_layout_config()
    sizes = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size)
    assert sizes == (4096, 32, 32, 11008) and config.num_key_value_heads == 32
    vq = config.vq_config
    geometry = (vq.resolution, list(vq.channel_multiplier), vq.base_channels, vq.num_res_blocks)
    assert geometry == (512, [1, 1, 2, 2, 4], 128, 2)
    assert (vq.num_embeddings, vq.embed_dim, vq.latent_channels) == (8192, 256, 256)
    small = anole_layout_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, base_channels=32)
    assert small.vocabulary_map == config.vocabulary_map and small.vq_config.resolution == 512
    with pytest.raises(TypeError, match="vocab_size"):
        anole_layout_config(vocab_size=512)
    with pytest.raises(ValueError, match="multiple of 32"):
        anole_layout_config(base_channels=48)
