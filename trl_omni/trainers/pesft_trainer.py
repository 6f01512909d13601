"""PeSFT: perception-aligned supervised fine-tuning (Omni-R1 stage 1) as a minimal `SFTTrainer` subclass."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase, ProcessorMixin
from trl import SFTTrainer
from trl.models.utils import unwrap_model_for_generation

from ..collators import InterleavedDataCollator
from ..data.lengths import drop_overlong_rows
from ..data.loading import check_not_empty
from ..data.pretokenize import check_interleaved_storage
from ..data.pretokenized import validate_pretokenized_rows
from ..data.report import SkipReport, SkipReportCallback
from ..data.schema import DatasetFormatError
from ..models import (
    ImageVocabulary,
    check_image_vocabulary,
    enable_image_generation,
    freeze_vq_model,
    generate_with_images,
    load_omni_model,
    unwrap_model,
)
from ..visualization import RenderedTrajectoriesCallback
from .perception import PERCEPTION_HEAD_NAME, add_perception_head, get_perception_head
from .pesft_config import PeSFTConfig


logger = logging.getLogger(__name__)


@dataclass
class _PerceptionCapture:
    """What one loss forward needs from the norm hook; lives only for the duration of `compute_loss`."""

    rows: torch.Tensor  # (N,) batch row of each completion image token
    hidden_positions: torch.Tensor  # (N,) position of the hidden state paired with it
    codes: torch.Tensor  # (N,) its ground-truth VQ code
    projection: torch.Tensor | None = None  # (N, D) W h, set by the norm hook
    fused_outputs: Any = None  # TRL's fused-LM-head output (per-token log-probs), set by the model hook


def _check_sft_columns(columns: list[str], args: PeSFTConfig, name: str) -> None:
    """Refuses, naming the columns present, a dataset in none of the forms PeSFT (through TRL's SFT) trains on."""
    forms = [{args.dataset_text_field}, {"messages"}, {"prompt", "completion"}, {"input_ids"}]
    if any(form <= set(columns) for form in forms):
        return
    hint = (
        "a prompt-only dataset is for RL (PeRPOTrainer); PeSFT needs a `completion` too"
        if "prompt" in columns
        else "rename the columns to one of these forms (e.g. `dataset.rename_column('question', 'prompt')`)"
    )
    raise DatasetFormatError(
        f"The {name} dataset has none of the column sets PeSFT trains on: `prompt` + `completion` (text or "
        f"interleaved parts), `messages`, `{args.dataset_text_field}` (language modelling) or `input_ids` "
        f"(pre-tokenized); its columns are {sorted(columns)}. Fix: {hint}."
    )


class PeSFTTrainer(SFTTrainer):
    r"""
    Perception-aligned SFT (PeSFT, Omni-R1 stage 1): `SFTTrainer` with `L = L_CE + lambda * L_Pe`.

    `L_Pe` pulls a linear projection of the final hidden state towards the frozen VQ codebook embedding of each
    image token of the completion (see [`PeSFTConfig`] for the alignment and reduction options). The projection is a
    [`PerceptionHead`] registered on the model before TRL wraps it, so it is optimised, checkpointed, restored by
    `resume_from_checkpoint`, sharded with the model and, under PEFT, saved in the adapter (it is added to
    `modules_to_save`). The final hidden states come from a forward hook on the decoder's final norm during TRL's own
    fused-LM-head forward: no `output_hidden_states`, no second forward.

    Besides TRL's metrics it logs `perception_loss` (mean squared error per image token, before `lambda`),
    `nll_text` / `nll_image` (mean negative log-likelihood of the labelled non-image / image tokens, BOI and EOI
    count as text), `image_token_accuracy` (top-1 accuracy on image tokens) and `image_tokens` (completion image
    tokens per micro-batch, summed over processes).

    Args:
        model: A Chameleon / Anole model (`ChameleonForConditionalGeneration`), a `PeftModel` around one that already
            carries a perception head, or a path / hub id loaded with [`~trl_omni.load_omni_model`] (with
            `args.model_init_kwargs`). Image generation is enabled on it ([`~trl_omni.enable_image_generation`]),
            as PeRPO does: the model learns to draw, and its rendered evaluation answers draw.
        args: A [`PeSFTConfig`].
        data_collator: Any collator returning `input_ids`, `attention_mask` and `labels` (`-100` on prompt, prompt
            images and padding). Without one, pre-tokenized datasets (`input_ids` + `completion_mask`, TRL's
            format) use TRL's language-modeling collator.
        train_dataset: Training rows. Pre-tokenized rows are checked once ([`validate_pretokenized_rows`]: cut
            image spans, stray image tokens, mask lengths, ids out of range) and refused, or dropped and counted
            under `args.on_error="skip"`. Rows that cannot be trained within `args.max_length` (pre-tokenized or
            interleaved) are dropped, counted and logged before batching, never cut inside an image (see
            [`~trl_omni.data.drop_overlong_rows`]), so any batch size trains.
        eval_dataset: Evaluation rows (checked the same way).
        processing_class: The `ChameleonProcessor` (or its tokenizer). Loaded with the model when `model` is a path.
        peft_config: Optional PEFT config; `"perception_head"` is added to (a copy of) its `modules_to_save`.
        image_vocabulary: The model's [`~trl_omni.ImageVocabulary`]; read from the model when not given.
        **kwargs: Forwarded to [`~trl.SFTTrainer`] (`callbacks`, `optimizers`, `quantization_config`, ...).

    Example:
        ```python
        >>> import torch
        >>> from datasets import Dataset
        >>> from trl_omni import ImageVocabulary
        >>> from trl_omni.testing import tiny_chameleon
        >>> from trl_omni.trainers import PeSFTConfig, PeSFTTrainer
        >>> model, processor = tiny_chameleon()
        >>> vocab = ImageVocabulary.from_model(model, processor)
        >>> prompt = processor.tokenizer("What is shown?").input_ids
        >>> image = vocab.image_span_ids(torch.arange(vocab.tokens_per_image) % vocab.num_codes).tolist()
        >>> answer = processor.tokenizer("I draw it. The answer is A.").input_ids
        >>> row = {"input_ids": prompt + image + answer, "completion_mask": [0] * len(prompt) + [1] * (len(image) + len(answer))}
        >>> args = PeSFTConfig("pesft-tiny", max_steps=2, bf16=False, use_cpu=True, report_to="none")
        >>> trainer = PeSFTTrainer(model, args=args, train_dataset=Dataset.from_list([row] * 4), processing_class=processor)
        >>> trainer.train()
        ```
    """

    _tag_names = ["trl", "sft", "trl-omni", "pesft"]

    def __init__(
        self,
        model: Any,
        args: PeSFTConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Any = None,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
        peft_config: Any = None,
        image_vocabulary: ImageVocabulary | None = None,
        **kwargs: Any,
    ):
        if args is None:
            args = PeSFTConfig("pesft")
        elif not isinstance(args, PeSFTConfig):
            raise TypeError(f"`args` must be a PeSFTConfig, got {type(args).__name__}.")
        else:
            # The settings derived below go to this trainer's copy: the caller's config is never changed.
            args = copy.copy(args)
        if image_vocabulary is not None:
            check_image_vocabulary(image_vocabulary, type(self).__name__)
        if isinstance(model, str):
            # transformers has no AutoModelForCausalLM mapping for Chameleon, so TRL's own loading cannot be used.
            model, loaded_processor = load_omni_model(
                model,
                quantization_config=kwargs.pop("quantization_config", None),
                **dict(args.model_init_kwargs or {}),
            )
            processing_class = processing_class or loaded_processor
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        check_not_empty(train_dataset, "the train dataset")

        # Read image-token facts and the codebook before any wrapping: under FSDP2 / ZeRO-3 the VQ weights would be
        # shards afterwards.
        processor = processing_class if isinstance(processing_class, ProcessorMixin) else None
        self.image_vocabulary = image_vocabulary or ImageVocabulary.from_model(model, processor)
        freeze_vq_model(model)
        # Stock Chameleon masks every image-token logit in its forward: generation would draw flat images and
        # logit-based metrics could never count an image token right.
        enable_image_generation(model)

        sample = next(iter(train_dataset), None)
        if sample is None:
            raise DatasetFormatError("The train dataset yields no rows. Fix: check the file, split and filters.")
        if "image" in sample or "images" in sample:
            raise ValueError(
                "The training dataset has an 'image'/'images' column, which switches SFTTrainer to its vision path "
                "(it would train the <image> placeholder, not image codes). Rename the column (for example "
                "'problem_images') and tokenize images into codes with the InterleavedDataCollator, or pass "
                "pre-tokenized rows."
            )
        # TRL only honours `completion_mask` for prompt-completion rows; a pre-tokenized interleaved row must still
        # exclude its prompt (and prompt images) from both losses.
        if args.completion_only_loss is None and "input_ids" in sample and "completion_mask" in sample:
            args.completion_only_loss = True
        if data_collator is None:
            data_collator = self._default_data_collator(sample, args, processing_class)
        # Rows skipped before training (conversion under `on_error="skip"`, bad pre-tokenized rows, rows too long for
        # `max_length`), summarised with the collator's length drops at the end of training. `trl-omni sft` merges
        # its own into it. Over-long rows go here, once per dataset, so no batch (of any size) is left empty and TRL
        # never truncates pre-tokenized rows (which could cut an image).
        self.skip_report = SkipReport()
        length_collator = data_collator if isinstance(data_collator, InterleavedDataCollator) else None
        train_dataset = self._check_and_bound_rows(train_dataset, args, "train", length_collator)
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                name: self._check_and_bound_rows(ds, args, name, length_collator) for name, ds in eval_dataset.items()
            }
        elif eval_dataset is not None:
            eval_dataset = self._check_and_bound_rows(eval_dataset, args, "eval", length_collator)

        if get_perception_head(model) is None:
            if unwrap_model(model) is not model and hasattr(model, "peft_config"):
                raise ValueError(
                    "The PeftModel passed to PeSFTTrainer has no perception head. Pass the base model with "
                    "`peft_config=...` instead, or call `trl_omni.trainers.add_perception_head(base_model, ...)` "
                    "before `get_peft_model` / `PeftModel.from_pretrained`, with 'perception_head' in "
                    "`modules_to_save`."
                )
            add_perception_head(model, self.image_vocabulary, seed=args.perception_head_seed)
        if peft_config is not None:
            modules_to_save = list(peft_config.modules_to_save or [])
            if PERCEPTION_HEAD_NAME not in modules_to_save:
                peft_config = copy.copy(peft_config)
                peft_config.modules_to_save = [*modules_to_save, PERCEPTION_HEAD_NAME]

        self._eval_generation_budget = self._rendered_answer_budget(args, self.image_vocabulary)
        self._perception_capture: _PerceptionCapture | None = None
        self._window_image_tokens: int | None = None
        super().__init__(
            model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        self.add_callback(SkipReportCallback(self.skip_report, self.data_collator))
        if args.log_rendered_trajectories > 0 and RenderedTrajectoriesCallback.find(self) is None:
            self.add_callback(
                RenderedTrajectoriesCallback(
                    self.image_vocabulary, processing_class, max_per_step=args.log_rendered_trajectories
                )
            )

        head = get_perception_head(self.model)
        if not any(parameter.requires_grad for parameter in head.parameters()):
            raise ValueError(
                "The perception head is frozen. With a PeftModel, list 'perception_head' in `modules_to_save`."
            )
        # The hooks stay registered for the trainer's lifetime but only act while `compute_loss` has armed a capture,
        # so generation, evaluation callbacks and user forwards are untouched.
        decoder_norm = unwrap_model(self.model).get_decoder().norm
        self._hook_handles = [
            decoder_norm.register_forward_hook(self._capture_final_hidden_states),
            self.model.register_forward_hook(self._capture_fused_outputs),
        ]

    # ------------------------------------------------------------------ construction helpers
    def _default_data_collator(self, sample: dict, args: PeSFTConfig, processing_class: Any) -> Callable | None:
        """Collator used when none is passed; None lets TRL pick its language-modeling collator.

        Called before `super().__init__()`, with `self.image_vocabulary` set. Pre-tokenized rows (`input_ids` +
        `completion_mask` or `labels`) need nothing more. Interleaved rows (text pieces and images) are the
        `InterleavedDataCollator`'s, which also needs `args.dataset_kwargs={"skip_prepare_dataset": True}` and
        `args.remove_unused_columns=False`.
        """
        if "input_ids" in sample or not _is_interleaved_row(sample):
            return None
        # The collator tokenizes the parts itself: TRL must neither prepare the dataset nor drop its columns.
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        args.remove_unused_columns = False
        return InterleavedDataCollator(
            processing_class,
            self.image_vocabulary,
            template=args.interleaved_template,
            max_length=args.max_length,
            length_policy=args.length_policy,
            image_root=args.image_root,
            seed=args.seed,
        )

    def _check_and_bound_rows(self, dataset: Any, args: PeSFTConfig, name: str, collator: Any) -> Any:
        """Checks pre-tokenized rows (refused, or dropped and counted under `on_error="skip"`; interleaved datasets get
        the checks their column types allow, the collator checks each row), then drops the rows that cannot be trained
        within `max_length` (see [`~trl_omni.data.drop_overlong_rows`])."""
        columns = getattr(dataset, "column_names", None) or []
        user_prepared = (args.dataset_kwargs or {}).get("skip_prepare_dataset") and collator is None
        if columns and not user_prepared:
            _check_sft_columns(columns, args, name)
        if "input_ids" in columns:
            dataset = validate_pretokenized_rows(
                dataset, self.image_vocabulary, on_error=args.on_error, what=name, skip_report=self.skip_report
            )
        elif isinstance(dataset, Dataset) and "prompt" in columns:
            check_interleaved_storage(dataset)
        return drop_overlong_rows(dataset, args.max_length, collator, name, skip_report=self.skip_report)

    @staticmethod
    def _rendered_answer_budget(args: PeSFTConfig, vocab: ImageVocabulary) -> int:
        """`eval_generation_max_new_tokens`, or room for one image of this model plus 256 text tokens."""
        budget = args.eval_generation_max_new_tokens
        if budget is None:
            return vocab.generation_budget(num_images=1, text_tokens=256)
        if args.log_rendered_trajectories > 0 and budget < vocab.span_length:
            raise ValueError(
                f"eval_generation_max_new_tokens={budget} cannot hold one image of this model: an image takes "
                f"{vocab.span_length} tokens (BOI + {vocab.grid_size[0]}x{vocab.grid_size[1]} codes + EOI), so the "
                f"rendered eval answers could never draw. Set it to at least {vocab.span_length} plus room for text "
                f"(e.g. {vocab.generation_budget(1, 256)}), leave it unset to derive it, or set "
                "log_rendered_trajectories=0."
            )
        return budget

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        # Submitted before the loss evaluation, so the callback renders them at the `log` that evaluation ends with.
        self._submit_rendered_answers(eval_dataset if eval_dataset is not None else self.eval_dataset)
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def _submit_rendered_answers(self, dataset: Any) -> None:
        """Answers a few eval prompts with constrained drawing and hands them to the rendering callback."""
        count = self.args.log_rendered_trajectories
        callback = RenderedTrajectoriesCallback.find(self)
        collator = self.data_collator
        if count == 0 or callback is None or not isinstance(collator, InterleavedDataCollator):
            return
        if not isinstance(dataset, Dataset) or len(dataset) == 0:
            return
        rows = [dataset[i] for i in range(min(count, len(dataset)))]
        inputs = collator.encode_prompt_batch(rows)
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped:
            completions = generate_with_images(
                unwrapped,
                self.image_vocabulary,
                **inputs,
                max_new_tokens=self._eval_generation_budget,
                do_sample=False,
                pad_token_id=collator.pad_token_id,
            )
        if self.accelerator.is_main_process:
            # Shown with the question as written and the prompt's images (the template's text left out).
            prompt_ids = [
                ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])
            ]
            callback.submit(
                completions,
                titles=[f"eval row {row.get('id', i)}: {collator.question_text(row)}" for i, row in enumerate(rows)],
                metadata=[{"answer": row.get("answer")} for row in rows],
                prompt_ids=prompt_ids,
            )

    # ------------------------------------------------------------------ hooks
    def _capture_final_hidden_states(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        capture = self._perception_capture
        if capture is None or capture.projection is not None:  # not armed, or a checkpoint recomputation
            return
        hidden_states = output[0] if isinstance(output, tuple) else output
        # Projecting here, inside the model's forward, keeps the head's weights gathered under FSDP2 / ZeRO-3; only
        # the N image positions are projected, never the whole sequence.
        device = hidden_states.device  # with a `device_map` split, the last layer may sit apart from the labels
        selected = hidden_states[capture.rows.to(device), capture.hidden_positions.to(device)]
        capture.projection = get_perception_head(self.model)(selected)

    def _capture_fused_outputs(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        capture = self._perception_capture
        if capture is None:
            return None
        if capture.fused_outputs is None and getattr(output, "label_mask", None) is not None:
            capture.fused_outputs = output
        loss = getattr(output, "loss", None)
        if capture.projection is not None and loss is not None:
            # DDP with `find_unused_parameters` (which SFT turns on for processors) walks the forward's outputs to
            # find the parameters that will get gradients. The projection must be reachable from them, or the head is
            # declared unused and then marked ready a second time by its real gradient. Adding an exact zero to the
            # fused output's `loss` (which SFT's NLL does not read) links it without changing any value.
            output.loss = loss + 0.0 * capture.projection.sum()
        return output

    # ------------------------------------------------------------------ loss
    def _perception_positions(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(mask, hidden_offset)`: completion image tokens that enter `L_Pe`, and the offset of their hidden state."""
        mask = self.image_vocabulary.is_image_token(labels)
        if self.args.perception_alignment == "next_token":
            # Position 0 has no preceding hidden state (and is never a prediction target in causal LM).
            mask[:, 0] = False
            return mask, -1
        return mask, 0

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        # Count the image tokens of the whole accumulation window (on this process), so that L_Pe is the mean over
        # the window's image tokens, exactly like TRL's NLL is the mean over the window's labelled tokens.
        self._window_image_tokens = None
        if batch_samples and all("labels" in batch for batch in batch_samples):
            self._window_image_tokens = sum(
                int(self._perception_positions(batch["labels"])[0].sum()) for batch in batch_samples
            )
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        labels = inputs.get("labels")
        if labels is None:
            raise ValueError("PeSFTTrainer needs `labels` in every batch (-100 on prompt, prompt images and padding).")
        if "shift_labels" in inputs:
            raise ValueError("PeSFTTrainer does not support pre-shifted labels (context / sequence parallelism).")

        mask, offset = self._perception_positions(labels)
        rows, positions = mask.nonzero(as_tuple=True)
        capture = _PerceptionCapture(
            rows=rows, hidden_positions=positions + offset, codes=self.image_vocabulary.ids_to_codes(labels[mask])
        )
        self._perception_capture = capture
        try:
            result = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        finally:
            # Disarm even on error, so no graph is kept alive across steps.
            self._perception_capture = None
        loss, outputs = result if return_outputs else (result, None)
        if capture.projection is None:
            raise RuntimeError(
                "The decoder's final norm did not run during the loss forward, so the perception loss has no hidden "
                "states. Is the model a Chameleon / Anole model?"
            )

        device = capture.projection.device
        targets = self.image_vocabulary.codebook_on(device)[capture.codes.to(device)]
        squared_error = (capture.projection.float() - targets).pow(2)
        per_token = squared_error.sum(-1) if self.args.perception_reduction == "paper" else squared_error.mean(-1)
        error_sum = per_token.sum()  # an exact, graph-connected zero when there are no image tokens
        num_local = per_token.numel()
        if num_items_in_batch is not None and self._window_image_tokens is not None:
            # TRL normalised the NLL by the window's token count and `Trainer` will not divide by the accumulation
            # steps: dividing by the window's image-token count makes the accumulated sum the window mean, so 1x4 and
            # 4x1 give the same update. No process-count factor: DDP averages the per-process means, and the count is
            # local (unlike `num_items_in_batch`, which TRL multiplies back by the process count).
            denominator = self._window_image_tokens
        else:
            # Unscaled path: `Trainer` divides the whole loss by the accumulation steps itself.
            denominator = num_local
        perception_loss = error_sum / max(denominator, 1)
        loss = loss + self.args.perception_loss_weight * perception_loss

        self._log_perception_metrics(mode, labels, capture, error_sum.detach(), num_local)
        return (loss, outputs) if return_outputs else loss

    def _log_perception_metrics(
        self, mode: str, labels: torch.Tensor, capture: _PerceptionCapture, error_sum: torch.Tensor, num_local: int
    ) -> None:
        device = error_sum.device
        stats = torch.zeros(7, device=device, dtype=torch.float32)
        stats[0] = error_sum.float()
        stats[1] = num_local
        fused = capture.fused_outputs
        if fused is not None:
            # TRL's fused head already returned log p(label) at every labelled position (aligned with labels[:, 1:]):
            # split it by modality instead of recomputing logits over the vocabulary.
            label_mask = fused.label_mask
            is_image = self.image_vocabulary.is_image_token(labels[:, 1:].to(label_mask.device)) & label_mask
            is_text = label_mask & ~is_image
            negative_log_probs = -fused.log_probs.detach().float()
            stats[2] = negative_log_probs[is_text].sum()
            stats[3] = is_text.sum()
            stats[4] = negative_log_probs[is_image].sum()
            stats[5] = is_image.sum()
            if fused.is_top1 is not None:
                stats[6] = fused.is_top1.detach()[is_image].float().sum()
        totals = self.accelerator.gather(stats[None]).reshape(-1, stats.numel()).sum(0).tolist()
        error, num_perception, nll_text, num_text, nll_image, num_image, correct_image = totals
        metrics = self._metrics[mode]
        metrics["image_tokens"].append(num_perception)
        if num_perception > 0:
            metrics["perception_loss"].append(error / num_perception)
        if num_text > 0:
            metrics["nll_text"].append(nll_text / num_text)
        if num_image > 0:
            metrics["nll_image"].append(nll_image / num_image)
            metrics["image_token_accuracy"].append(correct_image / num_image)


def _is_interleaved_row(sample: dict) -> bool:
    """Whether a dataset row is in the interleaved schema (prompt / completion as lists of text and image parts)."""
    completion = sample.get("completion")
    return isinstance(completion, list) and all(isinstance(part, dict) and "type" in part for part in completion)
