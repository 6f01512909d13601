"""Stage chaining: each stage's output is the next stage's input, and what an earlier stage trained is kept.

`trl-omni sft --use_peft` -> `trl-omni rl --use_peft` continues the PeSFT LoRA adapter (loaded trainable; no second
adapter), the perception head travels with it, and eval / bootstrap load any stage's output with `load_omni_model`.
The CLI stages run in this process (`TRL_OMNI_NO_LAUNCH=1`: the real entry point without `accelerate launch`) on the
real-layout Anole fixture.
"""

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from trl_omni import ImageVocabulary, load_omni_model
from trl_omni.cli import main
from trl_omni.testing_data import interleaved_rows
from trl_omni.trainers import get_perception_head


REPO_ROOT = Path(__file__).resolve().parents[1]
LORA = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["q_proj", "v_proj"]}
COMMON = {
    "dtype": "float32",
    "max_steps": 1,
    "bf16": False,
    "use_cpu": True,
    "report_to": "none",
    "save_strategy": "no",
    "logging_steps": 1,
    "disable_tqdm": True,
    "seed": 0,
    "gradient_checkpointing": False,
    "log_rendered_trajectories": 0,
}


def run_stage(command: str, config: dict, tmp_path: Path) -> None:
    path = tmp_path / f"{command}.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main([command, "--config", str(path)]) == 0


def adapter_tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "adapter_model.safetensors")


@pytest.fixture
def in_process(monkeypatch):
    monkeypatch.setenv("TRL_OMNI_NO_LAUNCH", "1")
    monkeypatch.syspath_prepend(str(REPO_ROOT))  # the dotted-path reward in tests/scripts/cli_rewards.py


def test_pesft_lora_then_perpo_continues_the_same_adapter_and_keeps_the_head(anole, tmp_path, in_process):
    vocab = ImageVocabulary.from_model(anole.model, anole.processor)
    rows = interleaved_rows(vocab, num_rows=2, prompt_images=0, completion_images=1, text_words=(3, 8), seed=0)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    sft_out = tmp_path / "pesft"
    sft = {**COMMON, **LORA, "model_name_or_path": str(anole.path), "dataset_name": str(data),
           "output_dir": str(sft_out), "per_device_train_batch_size": 1, "learning_rate": 1e-2}  # fmt: skip
    run_stage("sft", sft, tmp_path)
    pesft = adapter_tensors(sft_out)
    head_keys = [key for key in pesft if "perception_head" in key]
    lora_keys = [key for key in pesft if "lora_" in key]
    assert head_keys and lora_keys
    assert max(float(pesft[k].abs().max()) for k in lora_keys if "lora_B" in k) > 5e-3  # trained, not a fresh zero B

    prompts = tmp_path / "rl.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is shown in image {i}?", "answer": "A"}) + "\n"
                               for i in range(2)))  # fmt: skip
    rl_out = tmp_path / "perpo"
    rl = {**COMMON, **LORA, "model_name_or_path": str(sft_out), "dataset_name": str(prompts),
          "output_dir": str(rl_out), "num_generations": 2, "per_device_train_batch_size": 2,
          "max_completion_length": 16, "max_images_per_completion": 0, "learning_rate": 1e-4,
          "reward_funcs": ["tests.scripts.cli_rewards:token_sum_reward"]}  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_stage("rl", rl, tmp_path)
    assert not [w for w in caught if "second time" in str(w.message)], "a second adapter was stacked on the first"

    # The RL output is the PeSFT adapter, changed only by RL's one small step (Adam moves each weight by <= ~lr),
    # and the perception head exactly as PeSFT left it.
    perpo = adapter_tensors(rl_out)
    assert sorted(perpo) == sorted(pesft)
    steps = {key: float((perpo[key] - pesft[key]).abs().max()) for key in lora_keys}
    assert max(steps.values()) <= 2e-4, steps
    assert any(step > 0 for step in steps.values()), "RL did not train the adapter"
    for key in head_keys:
        assert torch.equal(perpo[key], pesft[key])
    pesft_config = json.loads((sft_out / "adapter_config.json").read_text())
    perpo_config = json.loads((rl_out / "adapter_config.json").read_text())
    for name in ("r", "lora_alpha", "target_modules", "modules_to_save", "base_model_name_or_path"):
        assert perpo_config[name] == pesft_config[name], name

    # Eval and bootstrap load any stage's output the same way: base + adapter + head, as saved.
    from peft import get_peft_model_state_dict

    model, processor = load_omni_model(rl_out)
    loaded = get_peft_model_state_dict(model)
    assert sorted(loaded) == sorted(perpo)
    assert all(torch.equal(loaded[key], tensor) for key, tensor in perpo.items())
    assert get_perception_head(model) is not None
    assert ImageVocabulary.from_model(model, processor).span_length == 1026


def test_full_fine_tuning_from_a_lora_output_merges_it_and_keeps_the_head(tmp_path, caplog):
    from peft import LoraConfig, PeftModel, get_peft_model
    from trl import ModelConfig

    from trl_omni.cli.common import load_model_and_processor, peft_config_for
    from trl_omni.testing import tiny_chameleon
    from trl_omni.trainers import add_perception_head

    model, processor = tiny_chameleon(seed=0, save_dir=tmp_path / "base")
    model.config._name_or_path = model.name_or_path = str(tmp_path / "base")
    add_perception_head(model, ImageVocabulary.from_model(model, processor), seed=3)
    lora = LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["perception_head"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = {name: p.detach().clone() for name, p in peft_model.merge_and_unload().named_parameters()}

    # The pre-launch check accepts the adapter (and checks its base), and names what an adapter directory lacks.
    from trl_omni.models import CheckpointError, check_checkpoint

    check_checkpoint(tmp_path / "adapter", load_processor=False)
    broken = tmp_path / "broken-adapter"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((tmp_path / "adapter" / "adapter_config.json").read_text())
    with pytest.raises(CheckpointError, match="no adapter weights"):
        check_checkpoint(broken)

    merged, _ = load_model_and_processor(ModelConfig(model_name_or_path=str(tmp_path / "adapter"), dtype="float32"))
    assert not isinstance(merged, PeftModel)
    actual = dict(merged.named_parameters())
    assert set(actual) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, msg=name)

    # With --use_peft the adapter is continued, trainable, and no new one is requested; other --lora_* are reported.
    args = ModelConfig(model_name_or_path=str(tmp_path / "adapter"), dtype="float32", use_peft=True, lora_r=8)
    continued, _ = load_model_and_processor(args)
    assert isinstance(continued, PeftModel)
    assert any(p.requires_grad for n, p in continued.named_parameters() if "lora_" in n)
    with caplog.at_level("WARNING", logger="trl_omni.cli.common"):
        assert peft_config_for(continued, args) is None
    assert "r=8 (the adapter has 2)" in caplog.text
