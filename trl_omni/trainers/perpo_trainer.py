"""PeRPO: GRPO whose rollouts draw images (Omni-R1 stage 2), as a minimal subclass of TRL's `GRPOTrainer`."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn
from transformers import ProcessorMixin
from trl import GRPOTrainer
from trl.data_utils import is_conversational
from trl.trainer.utils import nanstd

from ..collators import InterleavedDataCollator
from ..models import (
    ImageSpanLogitsProcessor,
    ImageVocabulary,
    decode_without_images,
    enable_image_generation,
    freeze_vq_model,
    load_omni_model,
    strip_image_tokens,
    unwrap_model,
)
from ..rewards import PerceptionCalibratedReward, PerceptionReward, ReferenceImageReward, safe_reward_funcs
from ..rewards.registry import build_reward_funcs, list_rewards
from ..visualization import RenderedTrajectoriesCallback
from .perception import get_perception_head
from .perpo_config import PeRPOConfig, reward_options
from .perpo_metrics import log_image_metrics, log_modality_loss_metrics, log_perception_metrics, policy_token_outputs
from .perpo_prompts import TokenizedPrompt, check_prompt_ids, is_parts
from .perpo_sampling import next_token_logits_processed


logger = logging.getLogger(__name__)


class PeRPOTrainer(GRPOTrainer):
    r"""
    Trainer for PeRPO (perception-calibrated relative policy optimization), the second stage of Omni-R1: GRPO whose
    rollouts interleave text and exact image segments from a unified-token model (Chameleon / Anole).

    It changes only what drawing needs and otherwise is [`~trl.GRPOTrainer`]:

    - rollouts are sampled by TRL's `model.generate` call (KV cache, inside TRL's unwrap / ZeRO-3 / FSDP contexts)
      with [`~trl_omni.ImageSpanLogitsProcessor`] applied to the next-token logits, so every image is
      `BOI + H*W codes + EOI` (the grid is read from the model);
    - reward functions receive, besides TRL's arguments, `completions` decoded with image spans removed,
      `completion_ids`, and `image_segments` (per completion, a list of [`~trl_omni.ImageSegment`] with positions
      relative to the completion). Both come from the core's parse of `completion_ids`
      ([`~trl_omni.ImageVocabulary.parse_completions`], cached per step), which a reward may also call itself: an
      image the prompt opened with BOI is the segment with `start == -1`;
    - every reward is wrapped by [`~trl_omni.rewards.safe_reward`]: its output is validated (one finite float or
      None per completion; NaN, strings, a None instead of a list raise a `RewardError` naming the reward and the
      sample), and an exception names the sample that raises it;
    - prompts may be text (the `prompt` column), token ids (a `prompt_ids` column whose images were built with
      [`~trl_omni.ImageVocabulary.image_span_ids`]) or interleaved parts with images; see
      [`PeRPOTrainer.encode_prompts`]. A prompt may end with BOI to ask for a drawing;
    - modality-aware metrics: `images/token_share`, `images/per_completion`, `images/complete_rate`,
      `images/stray_tokens`, `entropy/text|image`, `clip_ratio/text|image/{low,high,region}_mean` and
      `perception/score_mean|score_min|scored_frac` (from the perception scorer the reward uses, scored once);
    - optional degenerate-group filtering (`filter_degenerate_groups`);
    - a PeSFT perception head on the model (a PeSFT output loaded with [`~trl_omni.load_omni_model`]) is frozen and
      kept: the output still carries it. To continue a PeSFT LoRA adapter, load it with
      `load_omni_model(path, is_trainable=True)` and pass no `peft_config` (a new adapter would leave it frozen).

    The training log-probabilities are those of the full vocabulary (the constraint only shapes sampling), as in
    TRL for any logits processor.

    Overridden TRL methods (besides `__init__`; `tests/test_perpo_trainer.py` checks this list against the class):

    - `_generate_single_turn`: TRL's rollout call passes no logits processor to `generate`, so the image-span
      constraint is applied to the next-token logits by a forward hook on the policy for the duration of the call
      (`super()` does all the work; nothing of the model is replaced).
    - `_tokenize_prompts`: prompts that are token ids (a [`TokenizedPrompt`] made from a `prompt_ids` column or
      interleaved parts) are returned as they are; text prompts are tokenized as written (a `ChameleonProcessor`
      would append its chat separator) and every prompt is checked for cut images.
    - `_generate_and_score_completions`: the one hook that sees whole dataset rows: rows whose prompt is token ids
      get a `TokenizedPrompt`; with `filter_degenerate_groups`, groups without reward spread are masked out of the
      returned batch (completion mask, advantages and `num_items_in_batch`).
    - `_calculate_rewards`: rewards get `image_segments` and text without image tokens; once they ran, the image
      and perception metrics, the rendered rollouts (with their rewards) and the degenerate groups are taken from
      the same completions and rewards.
    - `compute_loss` (public): the text / image entropies and clip ratios are read from the loss's own policy
      forward (TRL's fused LM head output, through a forward hook), so no second forward is needed.

    Args:
        model (`str`, `PreTrainedModel` or `PeftModel`):
            A Chameleon / Anole model, or a path loaded with [`~trl_omni.load_omni_model`]. Image generation is
            enabled on it ([`~trl_omni.enable_image_generation`]) and its VQ model is frozen.
        reward_funcs (`RewardFunc | list[RewardFunc]`, *optional*):
            TRL reward functions. A string that names a registered reward (`"accuracy"`, `"perception"`, an entry
            point; see [`~trl_omni.rewards.list_rewards`]) is built for this model, as `trl-omni rl --reward_funcs`
            does; any other string is a reward model, as in TRL. `None` builds the perception-calibrated reward
            (`trl_omni.rewards.PerceptionCalibratedReward`) from the config's `perception_*`, `format_style` and
            `accuracy_rules` settings.
        args ([`PeRPOConfig`], *optional*):
            Configuration.
        train_dataset, eval_dataset, processing_class, reward_processing_classes, callbacks, optimizers,
        quantization_config, peft_config, **kwargs:
            As in [`~trl.GRPOTrainer`]. `processing_class` may be the `ChameleonProcessor` or its tokenizer.

    Attributes:
        image_vocabulary ([`~trl_omni.ImageVocabulary`]): The policy's image-token facts.
        perception_scorer: The scorer behind the `perception/*` metrics: the perception term of the default reward,
            else the first reward with a `score(completion_ids)` method (e.g. a `PerceptionReward`), else None. The
            metrics reuse the scores the reward computed for the step.

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
        elif not isinstance(args, PeRPOConfig):
            raise TypeError(
                f"`args` must be a PeRPOConfig, got {type(args).__name__}. Fix: PeRPOConfig(...) takes every "
                "GRPOConfig field too."
            )
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
        self._check_args(args, vocab, kwargs.get("rollout_func"), (train_dataset, eval_dataset))

        self.perception_scorer = None
        if reward_funcs is None:
            # The processing class lets accuracy / format find the control tags by id: TRL decodes completions with
            # `skip_special_tokens=True`, which removes them from the text.
            reward_funcs = PerceptionCalibratedReward(
                vocab,
                perception_weight=args.perception_reward_weight,
                tau=args.perception_tau,
                mapping=args.perception_mapping,
                aggregation=args.perception_aggregation,
                format_style=args.format_style,
                rules=args.accuracy_rules,
                processing_class=processing_class,
            )
            self.perception_scorer = reward_funcs.perception
        else:
            reward_funcs = self._build_named_rewards(reward_funcs, args, vocab, processing_class)
        # Every reward's output is validated (one finite float or None per completion); failures name the reward and
        # the sample (`trl_omni.rewards.validation`).
        reward_funcs = safe_reward_funcs(reward_funcs)
        self._degenerate_rows: torch.Tensor | None = None  # found by `_calculate_rewards`, applied just after

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
            reward = getattr(func, "__wrapped__", func)
            if self.perception_scorer is None:
                # The perception term of a calibrated reward, or a reward exposing `score(completion_ids)` (as
                # PerceptionReward does), feeds the perception metrics.
                term = getattr(reward, "perception", None)
                scorer = term if callable(getattr(term, "score", None)) else reward
                if callable(getattr(scorer, "score", None)):
                    self.perception_scorer = scorer
        # The image-scoring terms score on the trainer's device, known only now.
        rewards = [getattr(f, "__wrapped__", f) for f in self.reward_funcs]
        parts = [getattr(r, term, None) for r in rewards for term in ("perception", "reference")]
        for scorer in (self.perception_scorer, *rewards, *parts):
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

    @staticmethod
    def _build_named_rewards(
        reward_funcs: Any, args: PeRPOConfig, vocab: ImageVocabulary, processing_class: Any
    ) -> Any:
        """Registered reward names built for this model (vocabulary, processor and the config's reward settings);
        other entries, reward-model ids included, are left to TRL."""
        single = not isinstance(reward_funcs, list | tuple)
        funcs = [reward_funcs] if single else list(reward_funcs)
        registered = set(list_rewards())
        for name in funcs:
            # TRL loads any other string from the Hub: a misspelled reward name would stall on retries, then fail.
            if isinstance(name, str) and name not in registered and "/" not in name and not os.path.isdir(name):
                raise ValueError(
                    f"Unknown reward {name!r}: not a registered reward ({', '.join(sorted(registered))}) nor a local "
                    "reward-model directory. A reward model on the Hub is named 'org/model'."
                )
        named = [name for name in funcs if isinstance(name, str) and name in registered]
        if not named:
            return reward_funcs
        built = iter(build_reward_funcs(named, processing_class, vocab, options=reward_options(args)))
        funcs = [next(built) if isinstance(fn, str) and fn in registered else fn for fn in funcs]
        return funcs[0] if single else funcs

    @staticmethod
    def _check_args(args: PeRPOConfig, vocab: ImageVocabulary, rollout_func: Any, datasets: tuple) -> None:
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
        for what, dataset in zip(("train_dataset", "eval_dataset"), datasets, strict=True):
            columns = getattr(dataset, "column_names", None)
            if columns is not None and not isinstance(columns, dict) and not {"prompt", "prompt_ids"} & set(columns):
                raise ValueError(
                    f"{what} has no `prompt` column (its columns are {sorted(columns)}): PeRPO samples completions "
                    "for each row's `prompt` (text, chat messages or interleaved parts) or `prompt_ids`. Fix: rename "
                    "the question column to `prompt`, e.g. `dataset.rename_column('question', 'prompt')`."
                )
        if args.remove_unused_columns and any(
            "prompt_ids" in (getattr(d, "column_names", None) or ()) for d in datasets
        ):
            raise ValueError(
                "remove_unused_columns=True would drop the `prompt_ids` column before PeRPO reads it (and every column "
                "the rewards read); keep GRPO's default remove_unused_columns=False."
            )
        if args.constrain_image_generation and rollout_func is not None:
            logger.warning(
                "A `rollout_func` generates the completions itself, so PeRPO's image-span constraint is not applied: "
                "make it produce whole image spans (e.g. with `ImageSpanLogitsProcessor`)."
            )

    # ------------------------------------------------------------------ prompts
    def encode_prompts(self, inputs: list[dict[str, Any]]) -> list[list[int]] | None:
        """Token ids of the prompts of a batch of dataset rows, or `None` to let TRL tokenize the text prompts.

        This is the single hook for prompts that are not plain text. Rows in the interleaved schema (a `prompt` of
        parts) are laid out by the template PeSFT trained on, images spliced in. Otherwise the default reads a
        `prompt_ids` column (token ids whose images were built with
        [`~trl_omni.ImageVocabulary.image_span_ids`]); rows where it is missing or `None` are tokenized from their
        `prompt` text. A prompt may end with BOI to ask for a drawing: generation draws that image.

        Args:
            inputs: The rows of the batch (one per rollout).

        Returns:
            One list of ids per row, or `None` when no row carries `prompt_ids` or parts.

        Raises:
            ValueError: When a row's ids fall outside the vocabulary, or hold a cut image or stray image tokens.
        """
        if all(is_parts(row.get("prompt")) for row in inputs):
            return self._interleaved_prompts.encode_prompts(inputs)
        if not any(row.get("prompt_ids") is not None for row in inputs):
            return None
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
            prompt_ids.append([int(t) for t in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)])
        check_prompt_ids(prompt_ids, self.image_vocabulary, what="`prompt_ids`")
        return prompt_ids

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        prompt_ids = self.encode_prompts(inputs)
        if prompt_ids is not None:
            # The ids travel as the prompt itself; rewards and logs read its text (the row's own, else decoded).
            inputs = [
                {**row, "prompt": TokenizedPrompt(self._prompt_text(row, ids), ids)}
                for row, ids in zip(inputs, prompt_ids, strict=True)
            ]
        self._degenerate_rows = None
        output = super()._generate_and_score_completions(inputs)
        degenerate, self._degenerate_rows = self._degenerate_rows, None
        if degenerate is not None:
            self._drop_groups(output, degenerate, num_local_rows=len(inputs))
        return output

    def _prompt_text(self, row: dict[str, Any], ids: list[int]) -> str:
        prompt = row.get("prompt")
        return (
            prompt if isinstance(prompt, str) else decode_without_images(self._tokenizer, self.image_vocabulary, ids)
        )

    def _tokenize_prompts(self, prompts: list):
        if all(isinstance(prompt, TokenizedPrompt) for prompt in prompts):
            return [list(prompt.ids) for prompt in prompts], None, {}
        if isinstance(self.processing_class, ProcessorMixin) and not is_conversational({"prompt": prompts[0]}):
            # A ChameleonProcessor would append its chat separator and return tensors; tokenize the text as written.
            tokenized = (self._tokenizer(text=prompts)["input_ids"], None, {})
        else:
            tokenized = super()._tokenize_prompts(prompts)
        check_prompt_ids(tokenized[0], self.image_vocabulary)
        return tokenized

    # ------------------------------------------------------------------ generation
    def _generate_single_turn(self, *args: Any, **kwargs: Any):
        if self._image_span_processor is None:
            return super()._generate_single_turn(*args, **kwargs)
        # `generate` runs the transformers model under any PEFT / accelerate wrapper: the hook goes there.
        policy = unwrap_model(self.model_wrapped)
        with next_token_logits_processed(policy, self._image_span_processor):
            return super()._generate_single_turn(*args, **kwargs)

    # ------------------------------------------------------------------ rewards
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        vocab = self.image_vocabulary
        metrics = self._metrics["train" if self.model.training else "eval"]
        segments = vocab.parse_completions(completion_ids_list)  # cached: the rewards' own parses reuse it
        log_image_metrics(metrics, self.accelerator, vocab, completion_ids_list, segments)
        per_row = segments.per_row(len(completion_ids_list))
        inputs = [{**row, "image_segments": segs} for row, segs in zip(inputs, per_row, strict=True)]
        texts = [self._completion_text(completion, ids) for completion, ids in zip(completions, completion_ids_list)]
        rewards_per_func = super()._calculate_rewards(inputs, prompts, texts, completion_ids_list)

        if self.perception_scorer is not None:
            # The scorer the reward used keeps the scores of this batch: the metric does not score again.
            log_perception_metrics(metrics, self.accelerator, self.perception_scorer.score(completion_ids_list))
        if self.args.filter_degenerate_groups and self.model.training:
            self._degenerate_rows = self._find_degenerate_rows(rewards_per_func)
        self._submit_rendered_trajectories(prompts, completion_ids_list, rewards_per_func)
        return rewards_per_func

    def _completion_text(self, completion: Any, ids: list[int]) -> Any:
        """The completion as rewards read it: re-decoded without image tokens (and BOI / EOI) when it holds any."""
        kept = strip_image_tokens(self.image_vocabulary, ids)
        if len(kept) == len(ids):
            return completion
        text = self._tokenizer.decode(kept, skip_special_tokens=True)
        if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
            return [*completion[:-1], {**completion[-1], "content": text}]
        return text

    def _submit_rendered_trajectories(
        self, prompts: list[Any], completion_ids: list[list[int]], rewards_per_func: torch.Tensor
    ) -> None:
        """Hands this process's rollouts, their rewards and the prompts' images to the rendering callback (it renders
        at the next log)."""
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
        # Prompts given as ids (a `prompt_ids` column, interleaved parts) carry their images: show them too.
        prompt_ids = [list(p.ids) for p in prompts] if all(isinstance(p, TokenizedPrompt) for p in prompts) else None
        callback.submit(completion_ids, titles=titles, metadata=metadata, prompt_ids=prompt_ids)

    # ------------------------------------------------------------------ degenerate groups
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

    def _drop_groups(self, output: dict[str, Any], rows: torch.Tensor, num_local_rows: int) -> None:
        """Masks this process's `rows` (of the gathered batch) out of the loss."""
        start = self.accelerator.process_index * num_local_rows
        drop = rows[start : start + num_local_rows].to(output["completion_mask"].device)
        output["completion_mask"] = output["completion_mask"] * (~drop).unsqueeze(1).to(
            output["completion_mask"].dtype
        )
        output["advantages"] = output["advantages"].masked_fill(drop, 0.0)
        loss_mask = output["completion_mask"]
        if "tool_mask" in output:
            loss_mask = loss_mask * output["tool_mask"]
        # The token-level losses normalise by the active tokens of the whole generation batch: recount them.
        output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with policy_token_outputs(model) as outputs:
            loss = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        if outputs:
            log_modality_loss_metrics(self._metrics["train" if self.model.training else "eval"], self, inputs, outputs)
        return loss
