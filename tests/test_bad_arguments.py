"""Bad settings given in Python (the command line converts its strings itself): configs and rewards refuse a value of
the wrong type or range when they are built, naming the argument, instead of failing later inside a library."""

import re

import pytest
import torch

from trl_omni.collators import InterleavedDataCollator
from trl_omni.data import BootstrapConfig
from trl_omni.demo.ablation import AblationConfig
from trl_omni.evaluation import EvalConfig
from trl_omni.models import ImageSpanConstraint
from trl_omni.rewards import (
    PerceptionCalibratedReward,
    PerceptionReward,
    ReferenceImageReward,
    make_accuracy_reward,
)
from trl_omni.trainers import PeRPOConfig, PeSFTConfig, PeSFTTrainer


TRAINING = {"output_dir": "unused", "use_cpu": True, "bf16": False, "report_to": "none"}


@pytest.mark.parametrize(
    "build, field, found",
    [
        (lambda: PeSFTConfig(**TRAINING, perception_loss_weight="1"), "PeSFTConfig.perception_loss_weight", "str '1'"),
        (lambda: PeSFTConfig(**TRAINING, on_error=None), "PeSFTConfig.on_error", "NoneType None"),
        (lambda: PeRPOConfig(**TRAINING, max_images_per_completion=1.5), "max_images_per_completion", "float 1.5"),
        (lambda: PeRPOConfig(**TRAINING, max_images_per_completion=True), "max_images_per_completion", "bool True"),
        (lambda: BootstrapConfig(keep_columns="category"), "BootstrapConfig.keep_columns", "str 'category'"),
        (lambda: BootstrapConfig(keep_columns=["a", 1]), "BootstrapConfig.keep_columns", "list ['a', 1]"),
        (lambda: BootstrapConfig(top_k=2.0), "BootstrapConfig.top_k", "float 2.0"),
        (lambda: BootstrapConfig(quality_fn=0.5), "BootstrapConfig.quality_fn", "float 0.5"),
        (lambda: BootstrapConfig(step_splitter=None), "BootstrapConfig.step_splitter", "NoneType None"),
        (lambda: AblationConfig(seeds=[0, 0.5]), "AblationConfig.seeds", "list [0, 0.5]"),
        (lambda: EvalConfig(source_columns="source"), "EvalConfig.source_columns", "str 'source'"),
        (lambda: EvalConfig(max_new_tokens="64"), "EvalConfig.max_new_tokens", "str '64'"),
    ],
)
def test_configs_refuse_values_of_another_type(build, field, found):
    with pytest.raises(TypeError, match=rf"{field} must be .*, got {re.escape(found)}"):
        build()


def test_configs_accept_what_their_annotations_allow():
    # An int is a number where a float is expected; None where the field is optional; tuples for lists.
    assert PeSFTConfig(**TRAINING, perception_loss_weight=2).perception_loss_weight == 2
    assert PeRPOConfig(**TRAINING, max_images_per_completion=None).max_images_per_completion is None
    assert BootstrapConfig(keep_columns=("category",), top_k=None).keep_columns == ("category",)
    assert EvalConfig(task_groups={"charts": ["chartqa"]}).task_groups == {"charts": ["chartqa"]}  # its own check
    # Fields that TRL and transformers declare stay theirs to check.
    assert PeSFTConfig(**TRAINING, learning_rate=1).learning_rate == 1


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"answer_column": 5}, TypeError, "answer_column must be a column name, got 5"),
        ({"answer_style": "xml"}, ValueError, r"answer_style must be one of \('auto', 'tags', 'thought'\)"),
        ({"strict": "yes"}, TypeError, "strict must be True or False, got str 'yes'"),
        ({"math_timeout": 0}, ValueError, "math_timeout must be > 0 seconds, got 0"),
        ({"math_timeout": "5"}, TypeError, "math_timeout must be a number, got str '5'"),
        ({"similarity_threshold": "0.5"}, TypeError, "similarity_threshold must be a number, got str '0.5'"),
    ],
)
def test_accuracy_reward_settings_are_checked_when_it_is_built(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_accuracy_reward(**kwargs)


def test_classes_taking_the_image_vocabulary_refuse_anything_else(tiny, vocab):
    model, processor = tiny
    builders = {
        "PerceptionReward": PerceptionReward,
        "ReferenceImageReward": ReferenceImageReward,
        "PerceptionCalibratedReward": PerceptionCalibratedReward,
        "InterleavedDataCollator": lambda wrong: InterleavedDataCollator(processor, wrong),
        "ImageSpanConstraint": ImageSpanConstraint,
        "PeSFTTrainer": lambda wrong: PeSFTTrainer(model, args=PeSFTConfig(**TRAINING), image_vocabulary=wrong),
    }
    for owner, build in builders.items():
        for wrong in (processor, model.config):
            with pytest.raises(TypeError, match=rf"{owner} needs the model's ImageVocabulary, got "
                               rf"{type(wrong).__name__}\. Fix: pass ImageVocabulary.from_model"):  # fmt: skip
                build(wrong)


@pytest.mark.parametrize("method", ["codes_to_ids", "ids_to_codes", "image_span_ids"])
@pytest.mark.parametrize("values", [[0.5] * 64, [True] * 64])
def test_codes_and_ids_must_be_integers_not_truncated(vocab, method, values):
    with pytest.raises(TypeError, match=r"must be integers, got torch\.(float32|bool)"):
        getattr(vocab, method)(torch.tensor(values))


def test_image_rewards_check_their_numbers(vocab):
    with pytest.raises(TypeError, match="PerceptionReward: tau must be a number, got str '3'"):
        PerceptionReward(vocab, tau="3")
    with pytest.raises(TypeError, match="PerceptionCalibratedReward: format_weight must be a number, got bool True"):
        PerceptionCalibratedReward(vocab, format_weight=True)
    assert PerceptionReward(vocab, tau=2).tau == 2.0


def test_perpo_builds_registered_reward_names_and_refuses_what_is_no_reward(tmp_path):
    from datasets import Dataset

    from trl_omni.rewards import SafeReward
    from trl_omni.testing import tiny_chameleon
    from trl_omni.trainers import PeRPOTrainer

    model, processor = tiny_chameleon(seed=0)  # PeRPO lifts the image mask on the model: not the shared fixture
    args = PeRPOConfig(**{**TRAINING, "output_dir": str(tmp_path)}, max_completion_length=80, num_generations=2,
                       per_device_train_batch_size=2)  # fmt: skip
    rows = Dataset.from_dict({"prompt": ["a", "b"], "answer": ["x", "y"]})

    def build(reward_funcs, dataset=rows):
        return PeRPOTrainer(
            model, reward_funcs=reward_funcs, args=args, train_dataset=dataset, processing_class=processor
        )

    trainer = build(["accuracy", "perception"])
    accuracy, perception = trainer.reward_funcs
    assert isinstance(accuracy, SafeReward) and isinstance(perception.fn, PerceptionReward)
    assert perception.fn.image_vocabulary is trainer.image_vocabulary
    with pytest.raises(TypeError, match=r"reward_funcs\[1\] is int 5, not a reward: give a callable"):
        build(["accuracy", 5])
    with pytest.raises(ValueError, match=r"Unknown reward 'acuracy': not a registered reward \(accuracy, format"):
        build(["acuracy"])
    with pytest.raises(ValueError, match=r"train_dataset has no `prompt` column \(its columns are \['question'\]\)"):
        build("accuracy", Dataset.from_dict({"question": ["a", "b"]}))


@pytest.mark.parametrize(
    "columns, fix",
    [
        ({"question": ["a"], "answer": ["b"]}, r"rename the columns to one of these forms"),
        ({"prompt": ["a"], "answer": ["b"]}, r"a prompt-only dataset is for RL \(PeRPOTrainer\)"),
    ],
)
def test_pesft_names_a_dataset_in_no_form_it_trains_on(tmp_path, columns, fix):
    from datasets import Dataset

    from trl_omni.data import DatasetFormatError
    from trl_omni.testing import tiny_chameleon

    model, processor = tiny_chameleon(seed=0)  # the trainer freezes the VQ model: not the shared fixture
    args = PeSFTConfig(**{**TRAINING, "output_dir": str(tmp_path)})
    with pytest.raises(DatasetFormatError, match=rf"its columns are {re.escape(str(sorted(columns)))}\. Fix: {fix}"):
        PeSFTTrainer(model, args=args, train_dataset=Dataset.from_dict(columns), processing_class=processor)


def test_a_model_given_as_neither_path_nor_hub_id_is_named():
    from trl_omni.models import check_checkpoint, load_omni_model

    for load in (load_omni_model, check_checkpoint):
        with pytest.raises(TypeError, match=r"checkpoint directory or a Hub id \(str or os.PathLike\), got int 123"):
            load(123)


@pytest.mark.parametrize("rows", [[[1, 2.5]], [[1, "3"]], [[[1, 2], [3]]], torch.rand(2, 5)])
def test_token_ids_are_parsed_only_when_they_are_integers(vocab, rows):
    # Before: 2.5 became token 2 and "3" token 3 (a silent cast), a float tensor was truncated.
    with pytest.raises(TypeError, match="Token ids must be integers"):
        vocab.parse_completions(rows)


def test_rendering_refuses_ids_that_are_not_integers(tiny, vocab):
    from trl_omni.models import PaletteDecoder, uniform_palette
    from trl_omni.visualization import render_trajectory

    _, processor = tiny
    decoder = PaletteDecoder(uniform_palette(vocab.num_codes), patch_size=1, grid_size=vocab.grid_size[0])
    assert decoder.grid_size == tuple(vocab.grid_size)  # an int is a square grid, as for patch_size
    assert render_trajectory([1, 2, 3], processor, vocab, decoder).title is None
    for ids in ("abc", torch.rand(4), [1.5, 2]):
        with pytest.raises(TypeError, match="Token ids must be integers; row 0 holds"):
            render_trajectory(ids, processor, vocab, decoder)
    with pytest.raises(TypeError, match=r"grid_size must be an int or a pair \(height, width\) of ints, got '8'"):
        PaletteDecoder(uniform_palette(4), patch_size=1, grid_size="8")


def test_trainers_and_evaluate_name_a_config_of_another_type(tiny):
    from trl_omni.evaluation import evaluate
    from trl_omni.trainers import PeRPOTrainer

    model, processor = tiny  # refused before anything touches the model
    with pytest.raises(TypeError, match="evaluate takes an EvalConfig, got dict"):
        evaluate(model, processor, [{"prompt": "q", "answer": "a"}], {"output_dir": "eval"})
    with pytest.raises(TypeError, match="`args` must be a PeRPOConfig, got dict"):
        PeRPOTrainer(model, reward_funcs=[], args={"output_dir": "x"}, processing_class=processor)


def test_drawing_with_a_model_whose_image_logits_are_masked_is_refused(tmp_path, vocab):
    from trl_omni.models import generate_with_images, is_image_generation_enabled
    from trl_omni.testing import tiny_chameleon

    model, processor = tiny_chameleon(seed=0, enable_generation=False)
    prompt = torch.tensor([processor.tokenizer("Draw it.").input_ids])
    with pytest.raises(ValueError, match="has image generation disabled .* every image it drew would be flat"):
        generate_with_images(model, vocab, prompt, max_new_tokens=vocab.span_length + 2, max_images=1)
    with_boi = torch.cat([prompt, torch.tensor([[vocab.boi_token_id]])], dim=1)
    with pytest.raises(ValueError, match="has image generation disabled"):
        generate_with_images(model, vocab, with_boi, max_new_tokens=vocab.span_length + 2, max_images=0)
    assert len(generate_with_images(model, vocab, prompt, max_new_tokens=3, max_images=0)) == 1  # text only is fine
    # PeSFT enables it, as PeRPO does: the model learns to draw and its rendered evaluation answers draw.
    from datasets import Dataset

    from trl_omni.trainers import PeSFTTrainer

    rows = Dataset.from_dict({"prompt": ["q"], "completion": ["a"]})
    PeSFTTrainer(model, args=PeSFTConfig(**{**TRAINING, "output_dir": str(tmp_path)}), train_dataset=rows,
                 processing_class=processor)  # fmt: skip
    assert is_image_generation_enabled(model)


def test_images_to_encode_and_the_vq_decoder_source_are_named(tiny, tmp_path):
    from PIL import Image

    from trl_omni.models import ImageEncoder, load_vq_decoder

    model, processor = tiny
    encoder = ImageEncoder(model, processor)
    with pytest.raises(TypeError, match="from a list of PIL images, got Image. Fix: wrap a single image in a list"):
        encoder.encode(Image.new("RGB", (32, 32)))
    for image, found in (("photo.png", "str"), (torch.zeros(32, 32, 3), "Tensor")):
        with pytest.raises(TypeError, match=rf"Image 1 is {found}, not a PIL image. Fix: open files with PIL"):
            encoder.encode([Image.new("RGB", (32, 32)), image])
    assert encoder.encode([Image.new("RGB", (32, 32))]).shape == (1, 64)
    with pytest.raises(
        TypeError, match=r"built from a model or its config, not from a path .* is the second argument"
    ):
        load_vq_decoder(str(tmp_path))


def test_model_reward_checks_its_parts_when_built():
    from trl_omni.rewards import ModelReward

    helper = torch.nn.Linear(2, 1)

    def build(**changes):
        parts = {"model": helper, "build_inputs": lambda batch: None, "scores": lambda outputs, batch: [0.0]}
        return ModelReward(**{**parts, **changes})

    with pytest.raises(TypeError, match="scores must be a function `score\\(outputs, batch\\)` or a mapping"):
        build(scores=5)
    with pytest.raises(TypeError, match="ModelReward: build_inputs must be callable, got NoneType"):
        build(build_inputs=None)
    with pytest.raises(TypeError, match=r"ModelReward: scores\['aesthetic'\] must be callable, got str"):
        build(scores={"aesthetic": "clip"})
    with pytest.raises(TypeError, match="needs the frozen helper model it scores with, got None"):
        build(model=None)
    with pytest.raises(TypeError, match=r"ModelReward: weights\['score'\] must be a number, got str '1'"):
        build(weights={"score": "1"})
    assert build(weights={"score": 2}).weights == {"score": 2.0}


@pytest.mark.parametrize(
    "argument, value, expected",
    [
        ("lead_phrases", "Let me think.", r"Sequence\[str\] \(not a str\), got str 'Let me think.'"),
        ("reasoning_tokens", ("<think>",), r"tuple\[str, str\], got tuple \('<think>',\)"),
        ("add_bos", "no", "bool, got str 'no'"),
        ("seed", "0", "int, got str '0'"),
        ("image_root", 5, r"str \| os.PathLike \| None, got int 5"),
        ("max_length", "10", r"int \| None, got str '10'"),
    ],
)
def test_collator_arguments_are_checked_not_coerced(tiny, vocab, argument, value, expected):
    # Before: a string of lead phrases was used one character at a time, and "no" for add_bos was true.
    _, processor = tiny
    with pytest.raises(TypeError, match=rf"InterleavedDataCollator: {argument} must be {expected}"):
        InterleavedDataCollator(processor, vocab, template="templated", **{argument: value})
    with pytest.raises(ValueError, match="pad_to_multiple_of must be >= 1 or None, got 0"):
        InterleavedDataCollator(processor, vocab, pad_to_multiple_of=0)
    from pathlib import Path

    assert InterleavedDataCollator(processor, vocab, image_root=Path("."), lead_phrases=["Let me draw."]).image_root
