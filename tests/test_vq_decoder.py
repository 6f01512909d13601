import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from trl_omni.models.vq_decoder import (
    ChameleonVQDecoder,
    MissingVQDecoderWeightsError,
    PaletteDecoder,
    VQImageDecoder,
    decode_images,
    load_vq_decoder,
    palette_codebook,
    uniform_palette,
)


def _random_decoder(model, processor, seed=1):
    torch.manual_seed(seed)
    decoder = ChameleonVQDecoder(model.config.vq_config, processor.image_processor)
    # Non-trivial norms and biases, so a wrongly mapped key changes the output.
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return decoder


def _anole_state(decoder, prefix):
    return {prefix + key: value.clone().contiguous() for key, value in decoder.state_dict().items()}


def test_decoder_keys_follow_the_taming_layout(tiny):
    model, processor = tiny
    keys = set(ChameleonVQDecoder(model.config.vq_config).state_dict())
    # tiny vq_config: 3 levels, 1 res block (-> 2 decoder blocks per level), width 32 everywhere.
    expected_some = {
        "post_quant_conv.weight",
        "decoder.conv_in.weight",
        "decoder.mid.block_1.norm1.weight",
        "decoder.mid.attn_1.q.weight",
        "decoder.mid.attn_1.proj_out.bias",
        "decoder.mid.block_2.conv2.bias",
        "decoder.up.0.block.1.conv2.weight",
        "decoder.up.2.block.0.norm2.bias",
        "decoder.up.1.upsample.conv.weight",
        "decoder.up.2.upsample.conv.weight",
        "decoder.norm_out.weight",
        "decoder.conv_out.weight",
    }
    assert expected_some <= keys
    assert not any(k.startswith("decoder.up.0.upsample") for k in keys)  # full resolution level does not upsample
    assert not any("up.0.block.2" in k for k in keys)  # num_res_blocks + 1 = 2 blocks per level


def test_width_change_uses_nin_shortcut_and_output_size():
    config = {
        "embed_dim": 8,
        "num_embeddings": 16,
        "latent_channels": 8,
        "resolution": 16,
        "base_channels": 32,
        "channel_multiplier": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [8],
    }
    decoder = ChameleonVQDecoder(config)
    keys = set(decoder.state_dict())
    assert "decoder.up.0.block.0.nin_shortcut.weight" in keys  # 64 -> 32 channels at level 0
    assert "decoder.up.1.attn.0.q.weight" in keys  # resolution 8 is an attention resolution
    assert "decoder.up.0.attn.0.q.weight" not in keys
    pixels = decoder(torch.randn(2, 8, 8, 8))
    assert pixels.shape == (2, 3, 16, 16)


def test_attention_block_matches_reference_formula():
    decoder = ChameleonVQDecoder(
        {"embed_dim": 4, "latent_channels": 4, "resolution": 8, "base_channels": 32, "channel_multiplier": [1]}
    )
    block = decoder.decoder.mid.attn_1
    x = torch.randn(2, 32, 3, 5)
    h = block.norm(x)
    q, k, v = block.q(h).flatten(2), block.k(h).flatten(2), block.v(h).flatten(2)  # (B, C, N)
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / 32**0.5, dim=-1)
    reference = x + block.proj_out(torch.einsum("bij,bcj->bci", weights, v).reshape(2, 32, 3, 5))
    torch.testing.assert_close(block(x), reference, rtol=1e-4, atol=1e-5)


def test_sharded_hf_checkpoint_loads_and_decodes_right_size(tiny, vocab, tmp_path):
    model, processor = tiny
    reference = _random_decoder(model, processor)
    # An HF-format Anole checkpoint: LM weights in one shard, VQ decoder in another, an index json over both.
    lm_state = {"model.embed_tokens.weight": torch.zeros(4, 4), "lm_head.weight": torch.zeros(4, 4)}
    decoder_state = _anole_state(reference, "model.vqmodel.")
    save_file(lm_state, tmp_path / "model-00001-of-00002.safetensors")
    save_file(decoder_state, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in lm_state}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in decoder_state})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    decoder = load_vq_decoder(model, tmp_path, image_processor=processor.image_processor)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(decoder.state_dict()[key], value, msg=key)
    assert not decoder.training and not any(p.requires_grad for p in decoder.parameters())

    codes = torch.randint(0, vocab.num_codes, (3, *vocab.grid_size))
    images = decode_images(codes, decoder, vocab, batch_size=2)
    assert len(images) == 3
    assert all(image.size == (32, 32) and image.mode == "RGB" for image in images)
    # Same pixels as the reference decoder run by hand (codebook -> post_quant_conv -> decoder -> inverse norm).
    with torch.no_grad():
        latents = vocab.codebook[codes].permute(0, 3, 1, 2)
        pixels = reference(latents)
    # The authors' post-processing: unnormalise, scale, clamp, truncate.
    expected = ((pixels + 1.0) * (1.0 / processor.image_processor.rescale_factor)).clamp(0, 255).to(torch.uint8)
    # (off by one at most: a different batch size may pick another conv algorithm and flip a rounding)
    difference = np.asarray(images[1]).astype(int) - expected[1].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(difference).max() <= 1 and (difference == 0).mean() > 0.99
    # Distinct codes give distinct images (the decoder really reads the codes).
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))
    # Flat codes and ImageSegment-like lists decode the same.
    flat = decode_images(codes.reshape(3, -1), decoder, vocab, batch_size=2)
    np.testing.assert_array_equal(np.asarray(flat[2]), np.asarray(images[2]))
    wrapped = VQImageDecoder(decoder, vocab, batch_size=2).decode([c for c in codes])
    np.testing.assert_array_equal(np.asarray(wrapped[0]), np.asarray(images[0]))


def test_taming_layout_single_file_and_post_quant_conv_from_model(tiny, tmp_path):
    model, processor = tiny
    reference = _random_decoder(model, processor, seed=2)
    state = {k: v for k, v in _anole_state(reference, "").items() if not k.startswith("post_quant_conv")}
    save_file(state, tmp_path / "vqgan.safetensors")
    decoder = load_vq_decoder(model, tmp_path)
    for key in state:
        torch.testing.assert_close(decoder.state_dict()[key], state[key])
    # post_quant_conv comes from the model's vqmodel when the checkpoint lacks it.
    torch.testing.assert_close(decoder.post_quant_conv.weight, model.model.vqmodel.post_quant_conv.weight.float())


def test_original_release_vqgan_ckpt(tiny, tmp_path):
    model, processor = tiny
    reference = _random_decoder(model, processor, seed=3)
    os.makedirs(tmp_path / "tokenizer")
    state = _anole_state(reference, "")
    state["encoder.conv_in.weight"] = torch.zeros(1)  # other VQ keys are ignored
    torch.save({"state_dict": state}, tmp_path / "tokenizer" / "vqgan.ckpt")
    decoder = load_vq_decoder(model.config, tmp_path)
    torch.testing.assert_close(decoder.decoder.conv_out.weight, reference.decoder.conv_out.weight)


def test_missing_keys_raise_clear_error(tiny, tmp_path):
    model, processor = tiny
    state = _anole_state(_random_decoder(model, processor), "model.vqmodel.")
    dropped = ["model.vqmodel.decoder.conv_out.weight", "model.vqmodel.decoder.up.1.upsample.conv.bias"]
    for key in dropped:
        del state[key]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(MissingVQDecoderWeightsError) as info:
        load_vq_decoder(model, tmp_path)
    assert sorted(info.value.missing_keys) == sorted(dropped)
    message = str(info.value)
    assert all(key in message for key in dropped) and "2 of the" in message


def test_checkpoint_without_decoder_and_no_checkpoint(tiny, tmp_path):
    model, processor = tiny
    save_file({"model.embed_tokens.weight": torch.zeros(2, 2)}, tmp_path / "model.safetensors")
    with pytest.raises(MissingVQDecoderWeightsError, match="decoder.conv_in.weight"):
        load_vq_decoder(model, tmp_path)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        load_vq_decoder(model.config)


def test_shape_mismatch_is_reported(tiny, tmp_path):
    model, processor = tiny
    state = _anole_state(_random_decoder(model, processor), "model.vqmodel.")
    state["model.vqmodel.decoder.conv_out.weight"] = torch.zeros(3, 64, 3, 3)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="decoder.conv_out.weight.*do not match"):
        load_vq_decoder(model, tmp_path)


def test_decode_rejects_bad_codes(tiny, vocab):
    model, processor = tiny
    decoder = ChameleonVQDecoder(model.config.vq_config)
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        decode_images(torch.full((1, 8, 8), 64), decoder, vocab)
    with pytest.raises(ValueError, match="needs 64 codes"):
        decode_images(torch.zeros(1, 63, dtype=torch.long), decoder, vocab)


def test_saved_hf_model_dir_is_used_by_default(tmp_path):
    from trl_omni.testing import tiny_chameleon

    model, processor = tiny_chameleon(seed=0, save_dir=tmp_path)
    model.config._name_or_path = str(tmp_path)
    # The saved model has no decoder weights (stock transformers has no decoder): clear error, found the dir.
    with pytest.raises(MissingVQDecoderWeightsError, match=str(tmp_path)):
        load_vq_decoder(model)
    saved = load_file(tmp_path / "model.safetensors")
    saved.update(_anole_state(_random_decoder(model, processor), "model.vqmodel."))
    save_file(saved, tmp_path / "model.safetensors")
    assert load_vq_decoder(model).upsampling_factor == 4


# ---------------------------------------------------------------------------------------------------------- palette
def test_palette_round_trip_is_exact():
    palette = uniform_palette(64)
    assert len({tuple(c) for c in palette.tolist()}) == 64
    decoder = PaletteDecoder(palette, patch_size=4, grid_size=(8, 8))
    codes = torch.randint(0, 64, (5, 8, 8))
    images = decoder.decode(codes)
    assert all(image.size == (32, 32) for image in images)
    # The image is made of palette patches: every pixel of patch (i, j) is palette[code].
    array = np.asarray(images[0])
    np.testing.assert_array_equal(array[4:8, 8:12].reshape(-1, 3), np.tile(palette[int(codes[0, 1, 2])], (16, 1)))
    back = decoder.encode(images)
    torch.testing.assert_close(back, codes)
    again = decoder.decode(back)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, again))


def test_palette_encode_picks_nearest_colour_and_rectangular_patches():
    palette = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0]], dtype=np.uint8)
    decoder = PaletteDecoder(palette, patch_size=(2, 3))
    image = Image.fromarray(np.array([[[250, 10, 5]] * 6] * 2, dtype=np.uint8))  # 6x2 reddish
    assert decoder.encode(image).tolist() == [[[2, 2]]]
    assert decoder.decode(torch.tensor([[0, 1]]))[0].size == (6, 2)
    with pytest.raises(ValueError, match="multiple"):
        decoder.encode(Image.new("RGB", (5, 2)))
    with pytest.raises(ValueError, match="duplicate"):
        PaletteDecoder(np.zeros((2, 3), dtype=np.uint8), 2).encode(Image.new("RGB", (2, 2)))


def test_palette_codebook_distances_are_colour_distances():
    palette = uniform_palette(27)
    codebook = palette_codebook(palette, dim=16)
    assert codebook.shape == (27, 16) and torch.all(codebook[:, 3:] == 0)
    colours = torch.from_numpy(palette.astype(np.float32)) / 255
    torch.testing.assert_close(torch.cdist(codebook, codebook), torch.cdist(colours, colours))
    with pytest.raises(ValueError, match="dim >= 3"):
        palette_codebook(palette, dim=2)


def test_hub_repo_id_fetches_only_decoder_shards(tiny, tmp_path, monkeypatch):
    import fnmatch
    import shutil

    import huggingface_hub

    model, processor = tiny
    reference = _random_decoder(model, processor, seed=4)
    source, snapshot = tmp_path / "remote", tmp_path / "snapshot"
    source.mkdir()
    snapshot.mkdir()
    lm_state = {"model.embed_tokens.weight": torch.zeros(4, 4)}
    decoder_state = _anole_state(reference, "model.vqmodel.")
    save_file(lm_state, source / "model-00001-of-00002.safetensors")
    save_file(decoder_state, source / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in lm_state}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in decoder_state})
    (source / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    requests = []

    def fake_snapshot_download(repo_id, allow_patterns):
        requests.append((repo_id, sorted(allow_patterns)))
        for name in os.listdir(source):
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                shutil.copy(source / name, snapshot / name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    decoder = load_vq_decoder(model, "someone/Anole-hf")
    torch.testing.assert_close(decoder.decoder.conv_in.weight, reference.decoder.conv_in.weight)
    assert requests[-1] == ("someone/Anole-hf", ["*.safetensors.index.json", "model-00002-of-00002.safetensors"])
    assert not (snapshot / "model-00001-of-00002.safetensors").exists()  # the LM shard was never fetched


def test_unreachable_repo_id_gives_clear_error(tiny):
    model, processor = tiny
    with pytest.raises(FileNotFoundError, match="neither a local directory"):
        load_vq_decoder(model.config, "no-such-org/no-such-anole-repo")


def test_matches_reference_vqgan_decoder_outputs():
    # Golden values computed once with the reference Chameleon/taming VQModel.decode (GAIR-NLP/anole,
    # chameleon/inference/vqgan.py) on the same deterministic weights: pins the architecture and the key mapping.
    config = {
        "embed_dim": 8,
        "num_embeddings": 16,
        "latent_channels": 8,
        "resolution": 16,
        "base_channels": 32,
        "channel_multiplier": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [8],
    }
    decoder = ChameleonVQDecoder(config)
    state = {}
    for i, (key, value) in enumerate(sorted(decoder.state_dict().items())):
        pattern = torch.sin(torch.arange(value.numel(), dtype=torch.float64) * 0.37 + i).reshape(value.shape)
        is_norm_scale = key.endswith(("norm1.weight", "norm2.weight", "norm.weight", "norm_out.weight"))
        state[key] = ((1.0 if is_norm_scale else 0.0) + 0.1 * pattern).float()
    assert len(state) == 90
    decoder.load_state_dict(state)
    codebook = torch.cos(torch.arange(16 * 8, dtype=torch.float64) * 0.11).reshape(16, 8).float()
    codes = (torch.arange(64) * 7 % 16).reshape(1, 8, 8)
    with torch.no_grad():
        pixels = decoder(codebook[codes].permute(0, 3, 1, 2))
    assert pixels.shape == (1, 3, 16, 16)
    expected = [0.053003, 0.174439, -0.153774, -0.058844, 0.328254, 0.647550, 0.466539, 0.065432, 0.641171, 0.707619]
    torch.testing.assert_close(pixels[0, :, ::5, ::5].flatten()[:10], torch.tensor(expected), atol=1e-4, rtol=0)
    torch.testing.assert_close(pixels.mean(), torch.tensor(0.111163), atol=1e-4, rtol=0)
    torch.testing.assert_close(pixels.std(), torch.tensor(0.618036), atol=1e-4, rtol=0)
