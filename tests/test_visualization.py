import base64
import io
import os
import re
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from trl_omni.models.vq_decoder import PaletteDecoder, uniform_palette
from trl_omni.visualization import (
    FalseColorDecoder,
    RenderedTrajectoriesCallback,
    TrajectoryLogger,
    render_html_page,
    render_trajectories,
    render_trajectory,
)


@pytest.fixture(scope="module")
def palette_decoder(vocab):
    return PaletteDecoder(uniform_palette(vocab.num_codes), patch_size=4, grid_size=vocab.grid_size)


def _text_ids(processor, text):
    return processor.tokenizer(text, add_special_tokens=False).input_ids


def _trajectory_ids(processor, vocab, generator_seed=0):
    generator = torch.Generator().manual_seed(generator_seed)
    codes = [torch.randint(0, vocab.num_codes, vocab.grid_size, generator=generator) for _ in range(2)]
    incomplete = [vocab.boi_token_id] + vocab.codes_to_ids(torch.arange(10)).tolist()
    ids = (
        _text_ids(processor, "Let me draw it. <b>bold</b> & more")
        + vocab.image_span_ids(codes[0]).tolist()
        + _text_ids(processor, " I mark the object.")
        + vocab.image_span_ids(codes[1]).tolist()
        + _text_ids(processor, " The answer is A.")
        + incomplete
    )
    return ids, codes


class _CountingDecoder:
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def decode(self, codes):
        self.calls.append(len(codes))
        return self.inner.decode(codes)


def test_render_trajectory_pieces_and_html(tiny, vocab, palette_decoder):
    model, processor = tiny
    ids, codes = _trajectory_ids(processor, vocab)
    rendered = render_trajectory(ids, processor, vocab, palette_decoder, title="sample <0>", metadata={"reward": 0.75})
    assert [p.kind for p in rendered.pieces] == ["text", "image", "text", "image", "text", "incomplete_image"]
    assert rendered.pieces[0].text == "Let me draw it. <b>bold</b> & more"
    assert rendered.num_images == 2 and rendered.num_incomplete_images == 1
    assert rendered.pieces[5].num_image_tokens == 10 and rendered.pieces[5].tokens_per_image == 64
    assert "IMGIMG" not in rendered.text

    page = rendered.to_html()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert len(re.findall(r"<img ", page)) == 2  # one per complete image, the incomplete one is a placeholder
    assert "Let me draw it. &lt;b&gt;bold&lt;/b&gt; &amp; more" in page and "<b>bold" not in page
    assert "sample &lt;0&gt;" in page and "reward: 0.75" in page
    assert "incomplete image: 10 of 64 image tokens" in page
    assert "http" not in page  # self-contained
    # The inline images are exactly the decoded palette images.
    sources = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    for source, grid in zip(sources, codes):
        image = Image.open(io.BytesIO(base64.b64decode(source)))
        np.testing.assert_array_equal(np.asarray(image), np.asarray(palette_decoder.decode(grid)[0]))


def test_png_strip_size(tiny, vocab, palette_decoder):
    model, processor = tiny
    images_only = vocab.image_span_ids(torch.zeros(vocab.grid_size, dtype=torch.long)).tolist() * 3
    rendered = render_trajectory(images_only, processor, vocab, palette_decoder, image_display_size=128)
    strip = rendered.to_png(width=300, margin=10, gap=6)
    assert strip.size == (300, 2 * 10 + 3 * 128 + 2 * 6)
    # The images are the nearest-neighbour enlargements of the decoded 32x32 images.
    expected = np.asarray(
        palette_decoder.decode(torch.zeros(1, *vocab.grid_size, dtype=torch.long))[0].resize((128, 128), Image.NEAREST)
    )
    np.testing.assert_array_equal(np.asarray(strip)[10 : 10 + 128, 10 : 10 + 128], expected)

    # One line of text adds one line block and one gap.
    with_text = render_trajectory(
        _text_ids(processor, "yes") + images_only, processor, vocab, palette_decoder, image_display_size=128
    )
    font = ImageFont.load_default()
    box = font.getbbox("Ag|")
    line_height = int(box[3] - min(box[1], 0)) + 4
    assert with_text.to_png(width=300, margin=10, gap=6).size == (300, strip.height + line_height + 6)
    # Long text wraps within the width and the strip is capped at max_height.
    long_text = render_trajectory(_text_ids(processor, "the answer is " * 200), processor, vocab, palette_decoder)
    cut = long_text.to_png(width=200, max_height=300)
    assert cut.size == (200, 300)
    # The long text is drawn down to the "truncated" line, not dropped as a whole.
    ink_rows = (np.asarray(cut.convert("L")) < 128).any(axis=1)
    assert ink_rows[200:280].any() and ink_rows[:50].any()


def test_batch_rendering_with_padding_decodes_once(tiny, vocab, palette_decoder):
    model, processor = tiny
    rows = [_trajectory_ids(processor, vocab, seed)[0] for seed in range(3)]
    rows[1] = rows[1][:40]  # cut inside the first image: incomplete
    length = max(len(r) for r in rows)
    pad = processor.tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    counting = _CountingDecoder(palette_decoder)
    batch = render_trajectories(ids, processor, vocab, counting, attention_mask=mask, titles=["a", "b", "c"])
    assert counting.calls == [4]  # all complete images of the batch in one decode call
    assert [t.num_images for t in batch] == [2, 0, 2] and batch[1].num_incomplete_images == 1
    single = render_trajectory(rows[2], processor, vocab, palette_decoder, title="c")
    assert batch[2].to_html() == single.to_html()


def test_stray_image_tokens_are_dropped_and_counted(tiny, vocab, palette_decoder):
    model, processor = tiny
    strays = vocab.codes_to_ids(torch.tensor([1, 2, 3])).tolist()
    ids = _text_ids(processor, "Let me") + strays + _text_ids(processor, " draw it.")
    rendered = render_trajectory(ids, processor, vocab, palette_decoder)
    assert [p.kind for p in rendered.pieces] == ["text"]
    assert rendered.pieces[0].text == "Let me draw it." and rendered.pieces[0].num_image_tokens == 3
    assert "3 stray image token(s)" in rendered.to_html()


def test_false_color_decoder_needs_no_weights(tiny, vocab):
    decoder = FalseColorDecoder(vocab, cell_size=3)
    codes = torch.tensor([[[0] * 8] * 4 + [[5] * 8] * 4])
    image = decoder.decode(codes)[0]
    assert image.size == (24, 24)
    array = np.asarray(image)
    assert (array[:12] == decoder.palette[0]).all() and (array[12:] == decoder.palette[5]).all()
    # Nearby codebook entries get nearby colours: the PCA projection preserves the nearest neighbour ordering here.
    codebook = torch.zeros(4, 6)
    codebook[1, 0], codebook[2, 0], codebook[3, 1] = 0.01, 1.0, 1.0
    colors = FalseColorDecoder.codebook_colors(codebook).astype(int)
    assert np.abs(colors[0] - colors[1]).sum() < np.abs(colors[0] - colors[2]).sum()
    # Default rendering (no decoder given) works without any checkpoint.
    model, processor = tiny
    ids = vocab.image_span_ids(torch.arange(64).reshape(8, 8)).tolist()
    assert render_trajectory(ids, processor, vocab).images[0].size == (256, 256)


def _rendered(tiny, vocab, palette_decoder, count):
    model, processor = tiny
    rows = [_trajectory_ids(processor, vocab, seed)[0] for seed in range(count)]
    return render_trajectories(rows, processor, vocab, palette_decoder, titles=[f"t{i}" for i in range(count)])


def test_logger_bounds_count_and_bytes(tiny, vocab, palette_decoder, tmp_path):
    trajectories = _rendered(tiny, vocab, palette_decoder, 7)
    log = TrajectoryLogger(output_dir=tmp_path, max_per_step=3)
    report = log.log(trajectories, step=5)
    assert report.logged == 3 and report.skipped_for_count == 4 and report.skipped_for_size == 0
    files = sorted(os.listdir(tmp_path / "step_00000005"))
    assert files == [f"trajectory_{i:02d}.{ext}" for i in range(3) for ext in ("html", "png")]
    assert report.bytes == sum(os.path.getsize(tmp_path / "step_00000005" / f) for f in files)

    one = report.bytes // 3
    tight = TrajectoryLogger(output_dir=tmp_path / "tight", max_per_step=3, max_bytes_per_step=int(one * 1.5))
    report = tight.log(trajectories, step=1)
    assert report.logged == 1 and report.skipped_for_size == 2 and report.bytes <= int(one * 1.5)

    small = TrajectoryLogger(output_dir=tmp_path / "small", max_per_step=2, max_bytes_per_item=2000)
    report = small.log(trajectories, step=2)
    pngs = [f for f in report.files if f.endswith(".png")]
    assert report.logged == 2 and report.downscaled == 2 and len(pngs) == 2
    assert all(os.path.getsize(f) <= 2000 for f in pngs)
    # A page is written only when it fits the per-item budget on its own.
    htmls = [f for f in report.files if f.endswith(".html")]
    fitting = [len(t.to_html().encode()) <= 2000 for t in trajectories[:2]]
    assert len(htmls) == sum(fitting) and not any(fitting)  # both pages (~2.1 kB) are dropped, the strips kept
    assert TrajectoryLogger(output_dir=tmp_path, max_per_step=0).log(trajectories, step=3).logged == 0
    with pytest.raises(ValueError, match="Unknown trackers"):
        TrajectoryLogger(output_dir=tmp_path, trackers=["mlflow"])


def test_logger_wandb_path_with_stub(tiny, vocab, palette_decoder, tmp_path, monkeypatch):
    logged = []
    stub = types.SimpleNamespace(
        run=object(),
        Image=lambda image, caption=None: ("image", image.size, caption),
        Html=lambda page: ("html", len(page)),
        log=lambda payload: logged.append(payload),
    )
    monkeypatch.setitem(sys.modules, "wandb", stub)
    log = TrajectoryLogger(trackers=["wandb"], max_per_step=2)
    report = log.log(_rendered(tiny, vocab, palette_decoder, 5), step=7)
    assert report.trackers == ["wandb"] and report.logged == 2 and report.files == []
    assert len(logged) == 1
    images = logged[0]["rendered_trajectories"]
    assert [caption for _, _, caption in images] == ["t0", "t1"]
    assert logged[0]["rendered_trajectories_html"][0] == "html"
    stub.run = None  # no active run: nothing logged, no error
    log.log(_rendered(tiny, vocab, palette_decoder, 1), step=8)
    assert len(logged) == 1


def test_missing_tracker_falls_back_to_files(tiny, vocab, palette_decoder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "trackio", None)  # import trackio -> ImportError
    log = TrajectoryLogger(output_dir=tmp_path, trackers=["trackio"])
    assert log.trackers == ["files"]
    assert log.log(_rendered(tiny, vocab, palette_decoder, 1), step=1).logged == 1


def test_logger_tensorboard_path_with_stub(tiny, vocab, palette_decoder, tmp_path, monkeypatch):
    calls = []

    class StubWriter:
        def __init__(self, log_dir):
            calls.append(("init", log_dir))

        def add_image(self, tag, array, step, dataformats):
            calls.append(("image", tag, array.shape, step, dataformats))

        def add_text(self, tag, text, step):
            calls.append(("text", tag, "IMGIMG" in text, step))

        def flush(self):
            calls.append(("flush",))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=StubWriter))
    log = TrajectoryLogger(trackers=["tensorboard"], tensorboard_dir=tmp_path / "tb", max_per_step=2, png_width=320)
    log.log(_rendered(tiny, vocab, palette_decoder, 3), step=9)
    log.log(_rendered(tiny, vocab, palette_decoder, 1), step=10)
    log.close()
    assert calls[0] == ("init", str(tmp_path / "tb")) and [c[0] for c in calls].count("init") == 1
    images = [c for c in calls if c[0] == "image"]
    assert [(tag, step) for _, tag, _, step, _ in images] == [
        ("rendered_trajectories/0", 9),
        ("rendered_trajectories/1", 9),
        ("rendered_trajectories/0", 10),
    ]
    assert all(shape[1] == 320 and shape[2] == 3 and fmt == "HWC" for _, _, shape, _, fmt in images)
    assert not any(c[2] for c in calls if c[0] == "text") and calls[-1] == ("close",)


def test_logger_tensorboard(tiny, vocab, palette_decoder, tmp_path):
    pytest.importorskip("tensorboard")
    log = TrajectoryLogger(trackers=["tensorboard"], tensorboard_dir=tmp_path / "tb", max_per_step=2)
    report = log.log(_rendered(tiny, vocab, palette_decoder, 3), step=1)
    log.close()
    assert report.logged == 2 and any(name.startswith("events") for name in os.listdir(tmp_path / "tb"))


def test_render_html_page_holds_several(tiny, vocab, palette_decoder):
    trajectories = _rendered(tiny, vocab, palette_decoder, 3)
    page = render_html_page(trajectories, title="step 3")
    assert page.count('<section class="trajectory">') == 3 and page.count("<img ") == 6


# ---------------------------------------------------------------------------------------------------------- callback
def test_callback_buffers_latest_and_logs_on_main_process(tiny, vocab, palette_decoder, tmp_path):
    from transformers import TrainerControl, TrainerState

    model, processor = tiny
    callback = RenderedTrajectoriesCallback(vocab, processor, palette_decoder, max_per_step=2, output_dir=tmp_path)
    rows = [_trajectory_ids(processor, vocab, seed)[0] for seed in range(5)]
    callback.submit(rows, metadata=[{"reward": float(i)} for i in range(5)])
    assert callback.num_pending == 2  # only the latest max_per_step are kept
    args = types.SimpleNamespace(output_dir=str(tmp_path), report_to=["none"])
    state = TrainerState(global_step=4)
    callback.on_log(args, state, TrainerControl(), logs={"loss": 1.0})
    assert callback.num_pending == 0 and callback.last_report.logged == 2
    page = open(tmp_path / "step_00000004" / "trajectory_00.html", encoding="utf-8").read()
    assert "reward: 3.0" in page and "step: 4" in page
    # Padding given by a mask is dropped before rendering.
    pad = processor.tokenizer.pad_token_id
    callback.submit(torch.tensor([rows[0] + [pad] * 3]), attention_mask=torch.tensor([[1] * len(rows[0]) + [0] * 3]))
    assert callback._pending[-1][0] == rows[0]
    # Other processes drop their buffer without writing.
    callback.submit(rows[:1])
    state.is_world_process_zero, state.global_step = False, 5
    callback.on_log(args, state, TrainerControl())
    assert callback.num_pending == 0 and not (tmp_path / "step_00000005").exists()


def test_callback_inside_a_real_trainer(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from trl_omni.models import ImageVocabulary
    from trl_omni.testing import tiny_chameleon

    model, processor = tiny_chameleon(seed=1)
    vocab = ImageVocabulary.from_model(model, processor)
    row = (
        _text_ids(processor, "Let me draw it.")
        + vocab.image_span_ids(torch.arange(64).reshape(8, 8) % vocab.num_codes).tolist()
        + _text_ids(processor, " The answer is A.")
    )
    dataset = Dataset.from_dict({"input_ids": [row] * 4, "labels": [row] * 4})

    class DrawingTrainer(Trainer):  # stands in for a trainer that hands its completions over
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            callback = RenderedTrajectoriesCallback.find(self)
            if callback is not None:
                callback.submit(inputs["input_ids"], metadata=[{"reward": 1.0}] * len(inputs["input_ids"]))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    callback = RenderedTrajectoriesCallback(max_per_step=1)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=2,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
    )
    trainer = DrawingTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=processor, callbacks=[callback]
    )
    assert RenderedTrajectoriesCallback.find(trainer) is callback
    trainer.train()
    out = tmp_path / "rendered_trajectories"
    assert sorted(os.listdir(out)) == ["step_00000001", "step_00000002"]
    page = open(out / "step_00000002" / "trajectory_00.html", encoding="utf-8").read()
    assert page.count("<img ") == 1 and "Let me draw it." in page and "The answer is A." in page


def test_incomplete_segment_shows_other_tokens_inside(tiny, vocab, palette_decoder):
    model, processor = tiny
    inside = vocab.codes_to_ids(torch.arange(5)).tolist() + _text_ids(processor, "oops <x>")
    ids = _text_ids(processor, "Let me draw it.") + [vocab.boi_token_id] + inside + [vocab.eoi_token_id]
    ids += _text_ids(processor, " The answer is A.")
    rendered = render_trajectory(ids, processor, vocab, palette_decoder)
    assert [p.kind for p in rendered.pieces] == ["text", "incomplete_image", "text"]
    assert rendered.pieces[1].num_image_tokens == 5 and rendered.pieces[1].text == "oops <x>"
    assert (
        "incomplete image: 5 of 64 image tokens; other tokens inside: &#x27;oops &lt;x&gt;&#x27;" in rendered.to_html()
    )
    assert rendered.pieces[2].text == " The answer is A."


def test_prompt_images_are_shown_and_an_image_the_prompt_opened_is_the_first_drawing(tiny, vocab, palette_decoder):
    model, processor = tiny
    generator = torch.Generator().manual_seed(5)
    problem, drawn = (torch.randint(0, vocab.num_codes, vocab.grid_size, generator=generator) for _ in range(2))
    prompt = (
        _text_ids(processor, "You are a helpful assistant. Which cell is red?")
        + vocab.image_span_ids(problem).tolist()
        + [vocab.boi_token_id]  # the prompt asks for a drawing
    )
    completion = vocab.codes_to_ids(drawn.flatten()).tolist() + [vocab.eoi_token_id] + _text_ids(processor, " B")
    counting = _CountingDecoder(palette_decoder)
    (rendered,) = render_trajectories([completion], processor, vocab, counting, prompt_ids=[prompt], titles=["q"])
    assert counting.calls == [2]  # the drawing and the problem image, in one decode call
    assert [p.kind for p in rendered.pieces] == ["image", "text"] and rendered.pieces[1].text == " B"
    assert rendered.pieces[1].num_image_tokens == 0  # no stray tokens: the codes belong to the opened image
    np.testing.assert_array_equal(np.asarray(rendered.images[0]), np.asarray(palette_decoder.decode(drawn)[0]))
    np.testing.assert_array_equal(
        np.asarray(rendered.prompt_images[0]), np.asarray(palette_decoder.decode(problem)[0])
    )
    page = rendered.to_html()
    assert page.count("<img ") == 2 and 'alt="prompt image 1"' in page and 'alt="image 1"' in page
    assert page.index("prompt image 1") < page.index('alt="image 1"')
    assert "helpful assistant" not in page  # the prompt's text is the caller's to show (title / metadata)
    # The PNG strip holds both images (label lines for the prompt and the answer).
    without_prompt = render_trajectory(completion, processor, vocab, palette_decoder, image_display_size=64)
    with_prompt = render_trajectory(
        completion, processor, vocab, palette_decoder, prompt_ids=prompt, image_display_size=64
    )
    assert without_prompt.num_images == 1 and without_prompt.prompt_images == []  # the drawing needs no prompt
    assert with_prompt.to_png().height > without_prompt.to_png().height + 64


def test_callback_renders_submitted_prompts(tiny, vocab, palette_decoder, tmp_path):
    from transformers import TrainerControl, TrainerState

    model, processor = tiny
    callback = RenderedTrajectoriesCallback(vocab, processor, palette_decoder, max_per_step=2, output_dir=tmp_path)
    problem = vocab.image_span_ids(torch.zeros(vocab.grid_size, dtype=torch.long)).tolist()
    completion = vocab.codes_to_ids(torch.ones(vocab.tokens_per_image, dtype=torch.long)).tolist()
    callback.submit([completion + [vocab.eoi_token_id]], prompt_ids=[problem + [vocab.boi_token_id]])
    args = types.SimpleNamespace(output_dir=str(tmp_path), report_to=["none"])
    callback.on_log(args, TrainerState(global_step=1), TrainerControl())
    page = open(tmp_path / "step_00000001" / "trajectory_00.html", encoding="utf-8").read()
    assert 'alt="prompt image 1"' in page and 'alt="image 1"' in page and "stray" not in page


def test_callback_checks_its_log_budget_when_made():
    import pytest

    from trl_omni.visualization import RenderedTrajectoriesCallback

    callback = RenderedTrajectoriesCallback(max_per_step=3, max_bytes_per_item=1000)
    assert callback.log_budget == {
        "max_per_step": 3, "max_bytes_per_step": 4 * 2**20, "max_bytes_per_item": 1000, "png_width": 512,
    }  # fmt: skip
    with pytest.raises(ValueError, match="max_bytes_per_item=0"):
        RenderedTrajectoriesCallback(max_bytes_per_item=0)
