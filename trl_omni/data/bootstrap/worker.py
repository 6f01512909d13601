"""One shard of a bootstrap: questions read and encoded, every step drawn, scored, redrawn, and the
interleaved output rows assembled.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from ...models import ImageEncoder, ImageVocabulary
from ...utils.imports import resolve_dotted_path
from ..images import load_image
from ..schema import InterleavedDataError, image_part, interleaved_features, normalize_parts, text_part
from .config import BootstrapConfig
from .drawer import StepDrawer, _Job
from .inputs import _row_to_question
from .sampling import drawing_seed
from .steps import cap_steps, split_steps


logger = logging.getLogger(__name__)


class _Bootstrapper:
    def __init__(self, config: BootstrapConfig, model: Any, processor: Any, dataset: Any):
        from ...rewards import PerceptionReward

        self.config = config
        self.model = model
        self.processor = processor
        self.dataset = dataset
        self.vocab = ImageVocabulary.from_model(model, processor)
        self.encoder = ImageEncoder(model, processor, self.vocab, batch_size=config.encode_batch_size)
        self.drawer = StepDrawer(model, processor, self.vocab, config)
        self.perception = PerceptionReward(
            self.vocab, tau=config.perception_tau, mapping=config.perception_mapping, device="cpu"
        )
        quality_fn = config.quality_fn
        self.quality_fn = (
            resolve_dotted_path(quality_fn, argument="quality_fn", require_callable=True)
            if isinstance(quality_fn, str)
            else quality_fn
        )
        splitter = config.step_splitter
        known = ("auto", "numbered", "thought", "sentences", "lines")
        if isinstance(splitter, str) and splitter not in known and not splitter.startswith("regex:"):
            splitter = resolve_dotted_path(splitter, argument="step_splitter", require_callable=True)
        self.splitter = splitter
        self.length_collator = None
        if config.max_length is not None:
            from ...collators import InterleavedDataCollator

            # The layout the rows will be trained with measures them (images as whole spans, nothing encoded).
            self.length_collator = InterleavedDataCollator(
                processor, self.vocab, template=config.template, max_length=config.max_length
            )

    def features(self):
        from datasets import List, Value

        extra = {"source": Value("string"), "image_scores": List(Value("float32")), "num_steps": Value("int32")}
        for column in self.config.keep_columns:
            if column in self.dataset.column_names and column not in ("id", "prompt", "completion", "answer"):
                extra[column] = self.dataset.features[column]
        return interleaved_features(**extra)

    def _question(self, index: int, row: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        converted = _row_to_question(row, self.config, index)
        steps = cap_steps(
            split_steps(row.get(self.config.rationale_column) or "", self.splitter), self.config.max_steps
        )
        converted["prompt"] = normalize_parts(converted["prompt"], converted["id"], "prompt")
        return converted, steps

    def _skip(self, error: InterleavedDataError, counts: dict[str, int]) -> None:
        if self.config.on_error == "raise":
            raise error
        counts["samples_skipped_bad_input"] += 1
        counts["samples_dropped"] += 1
        logger.warning("Skipped a bad input row (on_error='skip'): %s", error)

    def _prompt_images(self, q: dict[str, Any]) -> list[tuple[int, Any]]:
        """The question's images that need encoding, read now so that a bad one names its row."""
        return [
            (i, load_image(part, self.config.image_root, q["id"], f"prompt[{i}]"))
            for i, part in enumerate(q["prompt"])
            if part["type"] == "image" and part["codes"] is None
        ]

    def _encode_prompt_images(self, questions: list, images: list, counts: dict[str, int]) -> None:
        pending = [(q, i, image) for q, pil in zip(questions, images, strict=True) for i, image in pil]
        if not pending:
            return
        codes = self.encoder.encode([image for _, _, image in pending])
        counts["prompt_images_encoded"] += len(pending)
        for (q, i, _), c in zip(pending, codes, strict=True):
            q["prompt"][i] = image_part(codes=c.tolist())

    def _score(self, codes: torch.Tensor, jobs: list[_Job], questions: list[dict[str, Any]]) -> list[tuple]:
        grids = codes.view(len(jobs), *self.vocab.grid_size)
        scores = self.perception.image_scores(grids).tolist()
        user = None
        if self.quality_fn is not None:
            info = [{"id": questions[j.sample]["id"], "step": j.step, "attempt": j.attempt} for j in jobs]
            user = [float(s) for s in self.quality_fn(grids, info)]
            if len(user) != len(jobs):
                raise ValueError(f"quality_fn returned {len(user)} scores for {len(jobs)} drawings.")
        threshold = self.config.quality_threshold
        results = []
        distinct = [len(set(row)) for row in codes.tolist()] if self.config.min_distinct_codes > 0 else None
        for k, score in enumerate(scores):
            ok = threshold is None or score >= threshold
            if distinct is not None:
                ok = ok and distinct[k] >= self.config.min_distinct_codes
            if user is not None:
                ok = ok and user[k] >= self.config.quality_fn_threshold
            results.append((ok, score))
        return results

    def process_shard(self, start: int, end: int, counts: dict[str, int], progress: Any = None) -> list[dict]:
        config = self.config
        rows = self.dataset.select(range(start, end)).to_list()
        questions, steps, images = [], [], []
        for offset, row in enumerate(rows):
            try:
                q, s = self._question(start + offset, row)
                pil = self._prompt_images(q)
            except InterleavedDataError as error:
                self._skip(error, counts)
                q, s, pil = None, [], []
            questions.append(q)
            steps.append(s)
            images.append(pil)
        counts["input_rows"] += len(rows)
        self._encode_prompt_images(questions, images, counts)

        question_text = []
        question_codes = []
        for q in questions:
            if q is None:
                question_text.append(None)
                question_codes.append(None)
                continue
            texts = [p["text"] for p in q["prompt"] if p["type"] == "text"]
            images = [p["codes"] for p in q["prompt"] if p["type"] == "image"]
            question_text.append("\n".join(t.strip() for t in texts))
            question_codes.append([torch.tensor(codes) for codes in images])

        drawable = self._drawable_steps(questions, steps, counts)
        # best[(sample, step)] = (ok, score, codes)
        best: dict[tuple[int, int], tuple[bool, float, list[int]]] = {}
        jobs = []
        for sample, sample_steps in enumerate(steps):
            if questions[sample] is None:
                continue
            try:  # every prompt of the sample is built (and checked) before any of them is drawn
                sample_jobs = [
                    self._job(sample, step, 0, start, question_text, question_codes, sample_steps)
                    for step in range(drawable[sample])
                ]
            except InterleavedDataError as error:
                self._skip(error, counts)
                questions[sample], steps[sample] = None, []
                continue
            counts["steps"] += len(sample_steps)
            jobs += sample_jobs
        while jobs:
            # Longest prompts first: batches of similar length waste less padding. The order is a function of the
            # shard's content only, so it is the same on every run.
            jobs.sort(key=lambda j: (-len(j.prompt_ids), j.sample, j.step))
            codes = self.drawer.draw([j.prompt_ids for j in jobs], [j.seed for j in jobs])
            counts["images_drawn"] += len(jobs)
            counts["redraws"] += sum(j.attempt > 0 for j in jobs)
            again = []
            for job, c, (ok, score) in zip(jobs, codes, self._score(codes, jobs, questions), strict=True):
                key = (job.sample, job.step)
                previous = best.get(key)
                if previous is None or (ok, score) > (previous[0], previous[1]):
                    best[key] = (ok, score, c.tolist())
                if not ok:
                    counts["low_quality_images"] += 1
                    if job.attempt < config.max_redraws:
                        again.append(
                            self._job(job.sample, job.step, job.attempt + 1, start, question_text, question_codes,
                                      steps[job.sample])
                        )  # fmt: skip
            jobs = again

        out = []
        for sample, q in enumerate(questions):
            if q is None:  # skipped bad input, counted in _skip
                continue
            if not steps[sample]:
                counts["samples_without_steps"] += 1
                counts["samples_dropped"] += 1
                continue
            completion, scores, drop = [], [], False
            for step, text in enumerate(steps[sample]):
                completion.append(text_part(text))
                if step >= drawable[sample]:
                    continue  # beyond the length budget: text only (counted in _drawable_steps)
                ok, score, codes = best[(sample, step)]
                if ok or config.on_low_quality == "keep_best":
                    completion.append(image_part(codes=codes))
                    scores.append(score)
                elif config.on_low_quality == "drop_sample":
                    drop = True
                else:
                    counts["steps_without_image"] += 1
            if drop:
                counts["samples_dropped"] += 1
                continue
            counts["images_kept"] += len(scores)
            row = rows[sample]
            record = {
                "id": q["id"],
                "prompt": q["prompt"],
                "completion": completion,
                "answer": q["answer"],
                "source": config.source_name,
                "image_scores": scores,
                "num_steps": len(steps[sample]),
            }
            for column in config.keep_columns:
                if column in row and column not in record:
                    record[column] = row[column]
            out.append(record)
        counts["rows_written"] += len(out)
        if progress is not None:
            progress.update(len(rows))
        return out

    def _drawable_steps(self, questions: list, steps: list[list[str]], counts: dict[str, int]) -> list[int]:
        """Per sample, how many of its first steps get a drawing within `max_length` (all without a budget).

        Each step's text is always kept; drawings are added step by step while the row, laid out with the training
        template, still fits. A sample too long even as text is dropped (its question is set to None).
        """
        drawable = [len(sample_steps) for sample_steps in steps]
        if self.length_collator is None:
            return drawable
        placeholder = image_part(codes=[0] * self.vocab.tokens_per_image)  # any codes: a span's length is fixed
        candidates, owners = [], []
        for sample, (q, sample_steps) in enumerate(zip(questions, steps, strict=True)):
            if q is None or not sample_steps:
                continue
            for k in range(len(sample_steps) + 1):  # k = number of drawn steps
                completion = []
                for step, text in enumerate(sample_steps):
                    completion += [text_part(text), placeholder] if step < k else [text_part(text)]
                candidates.append(
                    {"id": q["id"], "prompt": q["prompt"], "completion": completion, "answer": q["answer"]}
                )
                owners.append((sample, k))
        fits = self.length_collator.keeps(candidates) if candidates else []
        best = {sample: -1 for sample, _ in owners}
        for (sample, k), ok in zip(owners, fits, strict=True):
            if ok:
                best[sample] = max(best[sample], k)
        for sample, k in best.items():
            if k < 0:
                counts["samples_too_long"] += 1
                counts["samples_dropped"] += 1
                logger.warning(
                    "Dropped sample %s: longer than max_length=%d even without drawings.",
                    questions[sample]["id"],
                    self.config.max_length,
                )
                questions[sample], steps[sample], drawable[sample] = None, [], 0
            elif k < len(steps[sample]):
                counts["rows_shortened"] += 1
                counts["images_skipped_for_length"] += len(steps[sample]) - k
                drawable[sample] = k
        return drawable

    def _job(self, sample, step, attempt, start, question_text, question_codes, sample_steps) -> _Job:
        prompt = self.drawer.prompt_ids(
            question_text[sample], question_codes[sample], sample_steps, step, row=start + sample
        )
        return _Job(sample, step, attempt, prompt, drawing_seed(self.config.seed, start + sample, step, attempt))
