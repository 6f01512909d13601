"""PeRPO: GRPO whose rollouts draw images (Omni-R1 stage 2), as a minimal subclass of TRL's `GRPOTrainer`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessorList, ProcessorMixin
from trl import GRPOTrainer
from trl.data_utils import is_conversational
from trl.trainer.utils import nanstd

from ..collators import InterleavedDataCollator
from ..models import (
    ImageSegment,
    ImageSpanLogitsProcessor,
    ImageVocabulary,
    enable_image_generation,
    freeze_vq_model,
    load_omni_model,
)
from ..rewards import PerceptionCalibratedReward, PerceptionReward, ReferenceImageReward, safe_reward_funcs
from ..visualization import RenderedTrajectoriesCallback
from .perception import get_perception_head
from .perpo_config import PeRPOConfig


logger = logging.getLogger(__name__)

# Loss types whose objective clips the importance ratio to [1 - epsilon, 1 + epsilon_high] (TRL's clip metrics).
_CLIPPED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")


class PeRPOTrainer(GRPOTrainer):
    r"""
    Trainer for PeRPO (perception-calibrated relative policy optimization), the second stage of Omni-R1: GRPO whose
    rollouts interleave text and exact image segments from a unified-token model (Chameleon / Anole).

    It changes only what drawing needs and otherwise is [`~trl.GRPOTrainer`]:

    - rollouts are sampled by `model.generate` (KV cache, inside TRL's unwrap / ZeRO-3 / FSDP contexts) through
      [`~trl_omni.ImageSpanLogitsProcessor`], so every image is `BOI + H*W codes + EOI` (the grid is read from the
      model);
    - reward functions receive, besides TRL's arguments, `completions` decoded with image spans removed,
      `completion_ids`, and `image_segments` (per completion, a list of [`~trl_omni.ImageSegment`] with positions
      relative to the completion; a segment opened by the prompt has a negative `start`);
    - every reward is wrapped by [`~trl_omni.rewards.safe_reward`]: its output is validated (one finite float or
      None per completion; NaN, strings, a None instead of a list raise a `RewardError` naming the reward and the
      sample), and an exception names the sample that raises it;
    - prompts may be text (the `prompt` column) or token ids (a `prompt_ids` column whose images were built with
      [`~trl_omni.ImageVocabulary.image_span_ids`]); see [`PeRPOTrainer.encode_prompts`];
    - modality-aware metrics: `images/token_share`, `images/per_completion`, `images/complete_rate`,
      `images/stray_tokens`, `entropy/text|image`, `clip_ratio/text|image/{low,high,region}_mean` and
      `perception/score_mean|score_min|scored_frac`;
    - optional degenerate-group filtering (`filter_degenerate_groups`);
    - a PeSFT perception head on the model (a PeSFT output loaded with [`~trl_omni.load_omni_model`]) is frozen and
      kept: the output still carries it. To continue a PeSFT LoRA adapter, load it with
      `load_omni_model(path, is_trainable=True)` and pass no `peft_config` (a new adapter would leave it frozen).

    The training log-probabilities are those of the full vocabulary (the constraint only shapes sampling), as in
    TRL for any logits processor.

    Args:
        model (`str`, `PreTrainedModel` or `PeftModel`):
            A Chameleon / Anole model, or a path loaded with [`~trl_omni.load_omni_model`]. Image generation is
            enabled on it ([`~trl_omni.enable_image_generation`]) and its VQ model is frozen.
        reward_funcs (`RewardFunc | list[RewardFunc]`, *optional*):
            TRL reward functions. `None` builds the perception-calibrated reward
            (`trl_omni.rewards.PerceptionCalibratedReward`) from the config's `perception_*` settings.
        args ([`PeRPOConfig`], *optional*):
            Configuration.
        train_dataset, eval_dataset, processing_class, reward_processing_classes, callbacks, optimizers,
        quantization_config, peft_config, **kwargs:
            As in [`~trl.GRPOTrainer`]. `processing_class` may be the `ChameleonProcessor` or its tokenizer.

    Example:
        ```python
        >>> from datasets import Dataset
        >>> from trl_omni.testing import tiny_chameleon
        >>> from trl_omni.trainers import PeRPOConfig, PeRPOTrainer
        >>> model, processor = tiny_chameleon()
        >>> def draws(completions, image_segments, **kwargs):
        ...     return [float(sum(s.complete for s in segments)) for segments in image_segments]
        >>> args = PeRPOConfig(output_dir="out", max_completion_length=80, num_generations=2,
        ...                    per_device_train_batch_size=2, max_steps=1, bf16=False, report_to="none")
        >>> trainer = PeRPOTrainer(model, reward_funcs=draws, args=args, processing_class=processor,
        ...                        train_dataset=Dataset.from_dict({"prompt": ["Let me draw it."] * 4}))
        >>> trainer.train()
        ```
    """

    _tag_names = ["trl", "grpo", "trl-omni", "perpo"]
    _name = "PeRPO"

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: PeRPOConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_processing_classes: Any = None,
        callbacks: Any = None,
        optimizers: tuple = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
        **kwargs: Any,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = PeRPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-PeRPO")
        if isinstance(model, str):
            # TRL would load the policy without lifting Chameleon's image-logit mask; load it ready to draw instead.
            load_kwargs = dict(args.model_init_kwargs or {})
            if quantization_config is not None:
                load_kwargs["quantization_config"] = quantization_config
            model, loaded_processor = load_omni_model(model, **load_kwargs)
            processing_class = loaded_processor if processing_class is None else processing_class
            quantization_config = None
        enable_image_generation(model)
        freeze_vq_model(model)
        head = get_perception_head(model)
        if head is not None:
            # A PeSFT output's perception head is carried through RL unchanged (and saved with the model or adapter);
            # RL has no loss on it, and a trainable parameter without a gradient would stall DDP.
            head.requires_grad_(False)
        vocab = ImageVocabulary.from_model(
            model, processing_class if isinstance(processing_class, ProcessorMixin) else None
        )
        self.image_vocabulary = vocab

        images_allowed = args.constrain_image_generation and args.max_images_per_completion != 0
        if images_allowed and args.max_completion_length < vocab.span_length:
            raise ValueError(
                f"max_completion_length={args.max_completion_length} cannot hold one image: an image of this model "
                f"takes {vocab.span_length} tokens (BOI + {vocab.grid_size[0]}x{vocab.grid_size[1]} codes + EOI). "
                f"Set max_completion_length >= {vocab.span_length} (plus room for text), or "
                "max_images_per_completion=0 for text-only rollouts."
            )
        if args.constrain_image_generation and (args.use_vllm or args.use_transformers_continuous_batching):
            raise ValueError(
                "PeRPO samples image spans through ImageSpanLogitsProcessor in `model.generate`; vLLM and transformers "
                "continuous batching cannot take it (and stock vLLM masks Chameleon's image tokens). Set "
                "use_vllm=False and use_transformers_continuous_batching=False, or constrain_image_generation=False."
            )

        if args.constrain_image_generation and kwargs.get("rollout_func") is not None:
            logger.warning(
                "A `rollout_func` generates the completions itself, so PeRPO's image-span constraint is not applied: "
                "make it produce whole image spans (e.g. with `ImageSpanLogitsProcessor`)."
            )

        self._perception_scorer = None
        if reward_funcs is None:
            perception = {
                "tau": args.perception_tau,
                "mapping": args.perception_mapping,
                "aggregation": args.perception_aggregation,
            }
            # The processing class lets accuracy / format find the control tags by id: TRL decodes completions with
            # `skip_special_tokens=True`, which removes them from the text.
            reward_funcs = PerceptionCalibratedReward(
                vocab,
                perception_weight=args.perception_reward_weight,
                processing_class=processing_class,
                **perception,
            )
            self._perception_scorer = PerceptionReward(vocab, **perception)

        # Every reward's output is validated (one finite float or None per completion); failures name the reward and
        # the sample (`trl_omni.rewards.validation`).
        reward_funcs = safe_reward_funcs(reward_funcs)

        # Per-batch state handed between TRL's hooks (set and cleared within one generation round).
        self._pending_prompt_ids: list[list[int]] | None = None
        self._rollout_image_segments: list[list[ImageSegment]] | None = None
        self._degenerate_rows: torch.Tensor | None = None
        self._policy_pass: tuple[torch.Tensor, torch.Tensor] | None = None

        super().__init__(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
            **kwargs,
        )

        # A reference model reloaded by TRL from the checkpoint path has the stock image-logit mask: lift it too, or
        # the KL term is infinite on every image token.
        if self.ref_model is not None:
            enable_image_generation(self.ref_model)
            freeze_vq_model(self.ref_model)

        for i, func in enumerate(self.reward_funcs):
            if isinstance(func, nn.Module):
                continue
            if not hasattr(func, "__name__") and isinstance(getattr(func, "name", None), str):
                self.reward_func_names[i] = func.name
            if self._perception_scorer is None and callable(getattr(func, "score", None)):
                # A reward exposing `score(completion_ids)` (as PerceptionReward does) feeds the perception metrics.
                self._perception_scorer = getattr(func, "__wrapped__", func)

        # The image-scoring terms score on the trainer's device, known only now.
        rewards = [getattr(f, "__wrapped__", f) for f in self.reward_funcs]
        parts = [getattr(r, term, None) for r in rewards for term in ("perception", "reference")]
        for scorer in (self._perception_scorer, *rewards, *parts):
            if isinstance(scorer, (PerceptionReward, ReferenceImageReward)) and scorer.device is None:
                scorer.device = self.accelerator.device

        if args.log_rendered_trajectories > 0 and RenderedTrajectoriesCallback.find(self) is None:
            self.add_callback(
                RenderedTrajectoriesCallback(vocab, processing_class, max_per_step=args.log_rendered_trajectories)
            )

        self._interleaved_prompts = InterleavedDataCollator(
            processing_class, vocab, template=args.interleaved_template, image_root=args.image_root, seed=args.seed
        )
        self._image_span_processor = None
        if args.constrain_image_generation:
            self._image_span_processor = ImageSpanLogitsProcessor(
                vocab,
                max_images=args.max_images_per_completion,
                max_new_tokens=self.generation_config.max_new_tokens,
            )

    # ------------------------------------------------------------------ prompts
    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "prompt_ids" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "prompt_ids"]

    def encode_prompts(self, inputs: list[dict[str, Any]]) -> list[list[int]] | None:
        """Token ids of the prompts of a batch of dataset rows, or `None` to let TRL tokenize the text prompts.

        This is the single hook for prompts that are not plain text. The default reads a `prompt_ids` column (token
        ids whose images were built with [`~trl_omni.ImageVocabulary.image_span_ids`]); rows where it is missing or
        `None` are tokenized from their `prompt` text. A prompt may end inside an open image segment (e.g. with BOI)
        to ask for a drawing: generation continues that image.

        Args:
            inputs: The rows of the batch (one per rollout).

        Returns:
            One list of ids per row, or `None` when no row carries `prompt_ids`.

        Raises:
            ValueError: When a row's ids fall outside the vocabulary, or hold a cut image or stray image tokens.
        """
        if all(_is_parts(row.get("prompt")) for row in inputs):
            # Rows in the interleaved schema: laid out by the same template PeSFT trained on, images spliced in.
            return self._interleaved_prompts.encode_prompts(inputs)
        if not any(row.get("prompt_ids") is not None for row in inputs):
            return None
        vocab = self.image_vocabulary
        prompt_ids = []
        for i, row in enumerate(inputs):
            ids = row.get("prompt_ids")
            if ids is None:
                prompt = row.get("prompt")
                if not isinstance(prompt, str):
                    raise ValueError(
                        f"Row {i} of the batch has neither `prompt_ids` nor a text `prompt`: give one of them."
                    )
                ids = self._tokenizer(text=prompt)["input_ids"]
            ids = [int(t) for t in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
            if not ids:
                raise ValueError(f"Row {i} of the batch has an empty `prompt_ids`.")
            if min(ids) < 0 or max(ids) >= vocab.vocab_size:
                raise ValueError(
                    f"Row {i} of the batch: `prompt_ids` holds ids outside [0, {vocab.vocab_size}); were image codes "
                    "written instead of token ids? Build images with `ImageVocabulary.image_span_ids(codes)`."
                )
            prompt_ids.append(ids)

        segments = vocab.parse_segments(prompt_ids)
        bad_rows = (segments.stray_image_tokens > 0).nonzero().flatten().tolist()
        if bad_rows:
            raise ValueError(
                f"Row {bad_rows[0]} of the batch: `prompt_ids` holds image tokens outside any BOI ... EOI segment. "
                "Build every image with `ImageVocabulary.image_span_ids(codes)`."
            )
        for segment in segments:
            if segment.complete:
                continue
            row = prompt_ids[segment.batch_index]
            open_at_end = (
                segment.end == len(row)
                and row[-1] != vocab.eoi_token_id
                and len(segment.codes) == segment.end - segment.start - 1
            )
            if not open_at_end:
                raise ValueError(
                    f"Row {segment.batch_index} of the batch: the image at position {segment.start} of `prompt_ids` "
                    f"is cut ({len(segment.codes)} of {vocab.tokens_per_image} codes). Images must be whole spans "
                    "built with `ImageVocabulary.image_span_ids(codes)`; only the last one may be left open at the "
                    "very end of the prompt, for the model to finish."
                )
        return prompt_ids

    def _decode_text(self, ids: list[int]) -> str:
        """Decodes ids with image codes and BOI / EOI removed (no image-token strings in the text)."""
        vocab = self.image_vocabulary
        tensor = torch.as_tensor(ids, dtype=torch.long)
        keep = ~vocab.is_image_token(tensor) & (tensor != vocab.boi_token_id) & (tensor != vocab.eoi_token_id)
        return self._tokenizer.decode(tensor[keep].tolist(), skip_special_tokens=True)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        prompt_ids = self.encode_prompts(inputs)
        if prompt_ids is not None:
            # Rewards and logs read `prompt` as text: give id-only and interleaved rows their text (images removed).
            inputs = [
                row if isinstance(row.get("prompt"), str) else {**row, "prompt": self._decode_text(ids)}
                for row, ids in zip(inputs, prompt_ids, strict=True)
            ]
        self._pending_prompt_ids = prompt_ids
        self._degenerate_rows = None
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._pending_prompt_ids = None
            self._rollout_image_segments = None
        if self._degenerate_rows is not None:
            self._drop_degenerate_groups(output, num_local_rows=len(inputs))
            self._degenerate_rows = None
        return output

    def _tokenize_prompts(self, prompts: list):
        if self._pending_prompt_ids is not None:
            return self._pending_prompt_ids, None, {}
        if self._is_vlm and not is_conversational({"prompt": prompts[0]}):
            # A ChameleonProcessor would append its chat separator and return tensors; tokenize the text as written.
            return self._tokenizer(text=prompts)["input_ids"], None, {}
        return super()._tokenize_prompts(prompts)

    # ------------------------------------------------------------------ generation
    @contextlib.contextmanager
    def _image_span_generation(self) -> Iterator[None]:
        """Adds the image-span logits processor to the `generate` call TRL makes on the unwrapped model.

        `GenerationConfig` refuses logits processors (transformers validates that `logits_processor` is passed to
        `generate` itself), and TRL's call passes only the inputs and its generation config. So, for the duration of
        TRL's generation hook, the unwrapped model's `generate` is bound with the processor added; TRL's unwrap /
        ZeRO-3 gather / FSDP contexts still wrap the call unchanged, and nothing of TRL's code is copied.
        """
        model = self.accelerator.unwrap_model(self.model_wrapped)
        processor = self._image_span_processor
        generate = model.generate
        shadowed = model.__dict__.get("generate")

        def generate_with_image_spans(*args, logits_processor=None, **kwargs):
            processor.reset()
            processors = LogitsProcessorList([*(logits_processor or []), processor])
            return generate(*args, logits_processor=processors, **kwargs)

        model.generate = generate_with_image_spans
        try:
            yield
        finally:
            if shadowed is None:
                del model.generate
            else:
                model.generate = shadowed

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self._image_span_processor is None:
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images=has_tool_images
            )
        with self._image_span_generation():
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images=has_tool_images
            )

    def _generate(self, prompts: list):
        prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images = (
            super()._generate(prompts)
        )
        segments, stray = self._completion_image_segments(prompt_ids, completion_ids)
        completions = self._completions_without_images(completions, completion_ids)
        self._log_image_metrics(completion_ids, segments, stray)
        self._rollout_image_segments = segments
        return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images

    def _completion_image_segments(
        self, prompt_ids: list[list[int]] | None, completion_ids: list[list[int]]
    ) -> tuple[list[list[ImageSegment]], int]:
        """Per completion, its image segments (positions relative to the completion's first token), and the number of
        image tokens outside any segment.

        A prompt that ends inside an open image (e.g. with BOI) has that image finished by the completion: the
        segment is parsed with its prompt part and gets a negative `start`.
        """
        vocab = self.image_vocabulary
        prefixes = [[] for _ in completion_ids]
        if prompt_ids is not None:
            tails = [ids[-vocab.span_length :] for ids in prompt_ids]
            tail_segments = vocab.parse_segments(tails)
            for segment in tail_segments:
                tail = tails[segment.batch_index]
                open_image = segment.end == len(tail) and len(segment.codes) == segment.end - segment.start - 1
                if not segment.complete and open_image and tail[-1] != vocab.eoi_token_id:
                    prefixes[segment.batch_index] = list(tail[segment.start :])
        rows = [prefix + list(ids) for prefix, ids in zip(prefixes, completion_ids, strict=True)]
        per_row: list[list[ImageSegment]] = [[] for _ in rows]
        if not rows:
            return per_row, 0
        parsed = vocab.parse_segments(rows)
        for segment in parsed:
            shift = len(prefixes[segment.batch_index])
            per_row[segment.batch_index].append(
                ImageSegment(
                    segment.batch_index, segment.start - shift, segment.end - shift, segment.codes, segment.complete
                )
            )
        return per_row, int(parsed.stray_image_tokens.sum())

    def _completions_without_images(self, completions: list, completion_ids: list[list[int]]) -> list:
        """Re-decodes the completions that hold image tokens, without them (rewards never see IMGIMG strings)."""
        vocab = self.image_vocabulary
        markers = {vocab.boi_token_id, vocab.eoi_token_id}
        cleaned = list(completions)
        for i, ids in enumerate(completion_ids):
            tensor = torch.as_tensor(ids, dtype=torch.long)
            if not (vocab.is_image_token(tensor).any() or any(t in markers for t in ids)):
                continue
            text = self._decode_text(ids)
            if isinstance(cleaned[i], list):  # conversational: [{"role": "assistant", "content": ...}]
                cleaned[i] = [*cleaned[i][:-1], {**cleaned[i][-1], "content": text}]
            else:
                cleaned[i] = text
        return cleaned

    # ------------------------------------------------------------------ rewards
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        segments = self._rollout_image_segments
        if segments is None or len(segments) != len(completion_ids_list):
            segments, _ = self._completion_image_segments(None, completion_ids_list)
        inputs = [{**row, "image_segments": segs} for row, segs in zip(inputs, segments, strict=True)]
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._perception_scorer is not None:
            self._log_perception_metrics(completion_ids_list)
        if self.args.filter_degenerate_groups and self.model.training:
            self._degenerate_rows = self._find_degenerate_rows(rewards_per_func)
        self._submit_rendered_trajectories(prompts, completion_ids_list, rewards_per_func)
        return rewards_per_func

    def _submit_rendered_trajectories(
        self, prompts: list[Any], completion_ids: list[list[int]], rewards_per_func: torch.Tensor
    ) -> None:
        """Hands this process's rollouts and their rewards to the rendering callback (it renders at the next log)."""
        callback = RenderedTrajectoriesCallback.find(self)
        if callback is None or not self.accelerator.is_main_process:
            return
        start = self.accelerator.process_index * len(completion_ids)
        local = rewards_per_func[start : start + len(completion_ids)].tolist()
        metadata = [
            {name: round(value, 4) for name, value in zip(self.reward_func_names, row) if value == value}
            for row in local
        ]
        titles = [prompt if isinstance(prompt, str) else None for prompt in prompts]
        callback.submit(completion_ids, titles=titles, metadata=metadata)

    def _find_degenerate_rows(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """(N,) bool over the gathered batch: rows of groups whose weighted rewards have zero spread."""
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        grouped = rewards.view(-1, self.num_generations)
        scored = (~torch.isnan(grouped)).sum(dim=1)
        spread = nanstd(grouped, dim=1)
        degenerate = (scored < 2) | torch.isclose(spread, torch.zeros_like(spread))
        self._metrics["train"]["filtered_groups/frac"].append(degenerate.float().mean().item())
        return degenerate.repeat_interleave(self.num_generations)

    def _drop_degenerate_groups(self, output: dict[str, Any], num_local_rows: int) -> None:
        start = self.accelerator.process_index * num_local_rows
        drop = self._degenerate_rows[start : start + num_local_rows].to(output["completion_mask"].device)
        output["completion_mask"] = output["completion_mask"] * (~drop).unsqueeze(1).to(
            output["completion_mask"].dtype
        )
        output["advantages"] = output["advantages"].masked_fill(drop, 0.0)
        loss_mask = output["completion_mask"]
        if "tool_mask" in output:
            loss_mask = loss_mask * output["tool_mask"]
        # The token-level losses normalise by the active tokens of the whole generation batch: recount them.
        output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()

    # ------------------------------------------------------------------ metrics
    def _log_image_metrics(
        self, completion_ids: list[list[int]], segments: list[list[ImageSegment]], stray: int
    ) -> None:
        vocab = self.image_vocabulary
        device = self.accelerator.device
        num_tokens = sum(len(ids) for ids in completion_ids)
        flat = torch.as_tensor([t for ids in completion_ids for t in ids], dtype=torch.long)
        image_tokens = int(vocab.is_image_token(flat).sum()) if flat.numel() else 0
        num_segments = sum(len(segs) for segs in segments)
        num_complete = sum(s.complete for segs in segments for s in segs)
        local = torch.tensor(
            [len(completion_ids), num_tokens, image_tokens, num_segments, num_complete, stray],
            dtype=torch.float64,
            device=device,
        )
        completions, tokens, images, opened, complete, stray = self.accelerator.gather(local).view(-1, 6).sum(0)
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        metrics["images/token_share"].append((images / tokens.clamp(min=1)).item())
        metrics["images/per_completion"].append((opened / completions.clamp(min=1)).item())
        metrics["images/stray_tokens"].append((stray / completions.clamp(min=1)).item())
        if opened > 0:
            metrics["images/complete_rate"].append((complete / opened).item())

    def _log_perception_metrics(self, completion_ids_list: list[list[int]]) -> None:
        scores = self._perception_scorer.score(completion_ids_list)
        local = torch.tensor(
            [float("nan") if s is None else float(s) for s in scores],
            dtype=torch.float32,
            device=self.accelerator.device,
        )
        gathered = self.accelerator.gather(local)
        scored = gathered[~torch.isnan(gathered)]
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["perception/scored_frac"].append(scored.numel() / max(gathered.numel(), 1))
        if scored.numel():
            self._metrics[mode]["perception/score_mean"].append(scored.mean().item())
            self._metrics[mode]["perception/score_min"].append(scored.min().item())

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if kwargs.get("compute_entropy") and entropies is not None:
            # The policy pass of `_compute_loss`: keep its outputs for the modality metrics (no second forward).
            self._policy_pass = (logps.detach(), entropies.detach())
        return logps, entropies, aux_loss

    def _compute_loss(self, model, inputs):
        self._policy_pass = None
        loss = super()._compute_loss(model, inputs)
        if self._policy_pass is not None:
            self._log_modality_loss_metrics(inputs, *self._policy_pass)
            self._policy_pass = None
        return loss

    def _log_modality_loss_metrics(self, inputs: dict[str, Any], logps: torch.Tensor, entropies: torch.Tensor):
        """Entropy and clip ratios split between text and image tokens, from the loss's own forward outputs."""
        mask = inputs["completion_mask"].bool()
        if "tool_mask" in inputs:
            mask = mask & inputs["tool_mask"].bool()
        is_image = self.image_vocabulary.is_image_token(inputs["completion_ids"])
        modalities = {"text": mask & ~is_image, "image": mask & is_image}

        clipped = self.loss_type in _CLIPPED_LOSS_TYPES
        stats = []
        for modality_mask in modalities.values():
            weight = modality_mask.float()
            stats += [weight.sum(), (entropies * weight).sum()]
        if clipped:
            old = inputs.get("old_per_token_logps")
            log_ratio = logps - (logps if old is None else old)
            if self.importance_sampling_level == "sequence":
                log_ratio = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
            ratio = torch.exp(log_ratio).expand_as(logps)
            advantages = inputs["advantages"]
            advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
            low = (ratio < 1 - self.epsilon_low) & (advantages < 0)
            high = (ratio > 1 + self.epsilon_high) & (advantages > 0)
            for modality_mask in modalities.values():
                weight = modality_mask.float()
                stats += [(low * weight).sum(), (high * weight).sum(), ((low | high) * weight).sum()]
        totals = self.accelerator.reduce(torch.stack(stats).float(), reduction="sum").tolist()

        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        for k, name in enumerate(modalities):
            count, entropy = totals[2 * k], totals[2 * k + 1]
            if count == 0:
                continue
            metrics[f"entropy/{name}"].append(entropy / count)
            if clipped:
                low, high, region = totals[4 + 3 * k : 7 + 3 * k]
                metrics[f"clip_ratio/{name}/low_mean"].append(low / count)
                metrics[f"clip_ratio/{name}/high_mean"].append(high / count)
                metrics[f"clip_ratio/{name}/region_mean"].append(region / count)


def _is_parts(value: Any) -> bool:
    """Whether a `prompt` value is a list of interleaved-schema parts (dicts with a `type`)."""
    return isinstance(value, list) and bool(value) and all(isinstance(p, dict) and "type" in p for p in value)
