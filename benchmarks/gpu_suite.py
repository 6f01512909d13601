"""One-call GPU suite: trl-omni's figures on a model with Anole-7B's real config, each against plain TRL.

Builds a `ChameleonForConditionalGeneration` with Anole-7B's config (65,536 vocabulary, hidden 4,096, 32 layers,
8,192 x 256 codebook, 512 px images = 32 x 32 codes, 1,026-token image spans) with random weights, in bf16, directly
on the GPU (no download), and measures, section by section:

- `rollouts`: constrained drawing with `model.generate` (G prompts ending with BOI): tokens/s without constraint,
  with the span processor of commit 0426e78 (`legacy`), with today's processor, and today's with a static KV cache;
  host-device synchronisations per decoding step of each processor;
- `sft_qlora`: QLoRA (4-bit NF4 base via `load_omni_model`, LoRA r=16 on every linear layer) PeSFTTrainer vs
  SFTTrainer at `--sft_length` tokens with two image spans in the completion: s/step, peak memory (targets < 16 GB,
  <= 1.03x); also the cost of saving the random model and reloading it quantized;
- `sft_lora`: the same with a bf16 base;
- `perpo`: LoRA PeRPOTrainer with G = 8 completions, each finishing one image span (the prompt ends with BOI) and
  then text, vs GRPOTrainer on unconstrained completions of the same length: rollout tokens/s, s/step, generation
  share, peak memory, and that every image span is complete;
- `vq_decode`: VQGAN decoding to PIL images, images/s;
- `evaluation`: `trl_omni.evaluate` on Omni-Bench-format rows (each answer draws one image): images drawn/min;
- `bootstrap`: `run_bootstrap` on M3CoT-format rows: rows/min and drawings/s;
- `compile`: `generate` with a static cache and transformers' automatic `torch.compile` (CUDA only): compile time
  and tokens/s.

Every section runs in its own try/except under a time cap; no section starts after `--budget_s`. The JSON
(`results.json`) and the table (`table.md`) are rewritten after every section, so a timeout or a crash keeps what
was measured. `--tiny` runs the same code on a tiny Chameleon on the CPU in seconds (tests/test_gpu_suite.py).

    python3 benchmarks/gpu_suite.py --out /tmp/suite            # on the GPU (see benchmarks/gpu_run.sh)
    python3 benchmarks/gpu_suite.py --tiny --out /tmp/suite     # CPU smoke run of the same code
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import traceback
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any


_STARTED = time.monotonic()  # the budget counts from here: imports are part of the device call
_HERE = Path(__file__).resolve().parent
for _path in (str(_HERE.parent), str(_HERE)):  # trl_omni is not installed on the device: run from the repository
    if _path not in sys.path:
        sys.path.insert(0, _path)
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


SECTIONS = ("rollouts", "sft_qlora", "sft_lora", "perpo", "vq_decode", "evaluation", "bootstrap", "compile")
GiB = 1024**3


@dataclass(frozen=True)
class Profile:
    """Sizes of one run (the real one on a GPU, or the tiny one on a CPU)."""

    name: str
    sft_length: int  # tokens per PeSFT / SFT row
    sft_images: int  # image spans in each row's completion
    sft_warmup: int  # training steps left out of the timing
    sft_timed: int
    rl_generations: int  # G = rollouts per prompt = rollouts per step
    rl_text_tokens: int  # tokens after the image in each completion
    rl_steps: int  # at most; 1 when the time left is short
    rollout_tokens: int  # new tokens per `generate` call of the rollouts section
    rollout_rounds: int
    eval_rows: int
    eval_text_tokens: int
    bootstrap_rows: int
    bootstrap_max_steps: int
    bootstrap_batch: int
    vq_batch: int
    caps: dict  # per-section time caps, seconds


REAL = Profile(
    "anole-7b-config", sft_length=4096, sft_images=2, sft_warmup=2, sft_timed=3, rl_generations=8,
    rl_text_tokens=63, rl_steps=2, rollout_tokens=128, rollout_rounds=2, eval_rows=8, eval_text_tokens=16,
    bootstrap_rows=8, bootstrap_max_steps=2, bootstrap_batch=16, vq_batch=8,
    caps={"rollouts": 100, "sft_qlora": 150, "sft_lora": 90, "perpo": 260, "vq_decode": 45, "evaluation": 100,
          "bootstrap": 110, "compile": 150},
)  # fmt: skip
TINY = Profile(
    "tiny", sft_length=200, sft_images=2, sft_warmup=1, sft_timed=1, rl_generations=8, rl_text_tokens=4,
    rl_steps=1, rollout_tokens=16, rollout_rounds=1, eval_rows=2, eval_text_tokens=4, bootstrap_rows=2,
    bootstrap_max_steps=1, bootstrap_batch=8, vq_batch=2,
    caps={name: 120 for name in SECTIONS},
)  # fmt: skip


class SectionTimeout(Exception):
    """A section ran past its time cap."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raises `SectionTimeout` in the main thread after `seconds` (SIGALRM; no-op where unavailable)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise SectionTimeout(f"time cap of {seconds:.0f} s reached")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def log(message: str) -> None:
    print(f"[gpu_suite {time.strftime('%H:%M:%S')}] {message}", flush=True)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


class Suite:
    """Shared state of one run: device, profile, the model builders, the results and their files."""

    def __init__(self, args: argparse.Namespace, started: float | None = None):
        self.args = args
        self.profile = TINY if args.tiny else REAL
        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="gpu_suite_"))
        self.t0 = time.monotonic() if started is None else started  # the budget's clock
        self.hard_limit = args.budget_s + args.grace_s
        self._processor = None
        self._tiny_parts: tuple[Any, Any] | None = None
        self._vocab = None
        self._base = None
        self.ms_per_token: float | None = None  # decoding speed measured by `rollouts`, used to plan `perpo`
        self.partial: dict[str, Any] = {}  # what the running section measured so far (kept if it fails)
        self.results: dict[str, Any] = {"meta": self._meta(), "sections": {}}

    # ------------------------------------------------------------------ environment
    def _meta(self) -> dict[str, Any]:
        import transformers
        import trl

        meta = {
            "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
            "profile": self.profile.name,
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.cuda else platform.processor() or "cpu",
            "dtype": str(self.dtype).replace("torch.", ""),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "budget_s": self.args.budget_s,
            "command": " ".join(sys.argv),
        }
        for name in ("peft", "accelerate", "bitsandbytes", "datasets", "tokenizers", "pyarrow", "pillow"):
            try:
                meta[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                meta[name] = "not installed"
        # Modules some section imports; a missing one fails that section only, and is named here up front.
        needed = ("peft", "bitsandbytes", "datasets", "PIL", "xxhash", "math_verify", "latex2sympy2_extended")
        meta["missing_modules"] = [name for name in needed if importlib.util.find_spec(name) is None]
        meta["model"] = self.model_description()
        return meta

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def cleanup(self) -> None:
        """Frees the device memory of dropped models (only the GPU's memory is measured; gc is slow on big heaps)."""
        if self.cuda:
            gc.collect()
            torch.cuda.empty_cache()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def memory(self) -> dict[str, float | None]:
        if not self.cuda:
            return {"allocated_gib": None, "peak_allocated_gib": None, "peak_reserved_gib": None}
        return {
            "allocated_gib": torch.cuda.memory_allocated(self.device) / GiB,
            "peak_allocated_gib": torch.cuda.max_memory_allocated(self.device) / GiB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(self.device) / GiB,
        }

    # ------------------------------------------------------------------ model
    def model_overrides(self) -> dict[str, int]:
        overrides = {}
        if self.args.layers is not None:
            overrides["num_hidden_layers"] = self.args.layers
        if self.args.hidden_size is not None:
            overrides["hidden_size"] = self.args.hidden_size
            overrides["intermediate_size"] = self.args.hidden_size * 11008 // 4096
            overrides["num_attention_heads"] = max(1, self.args.hidden_size // 128)
        return overrides

    def model_description(self) -> str:
        if self.args.tiny:
            return "tiny Chameleon (hidden 64, 2 layers, vocab 512, 8x8 = 64 codes per image), fp32 on CPU"
        overrides = self.model_overrides()
        text = "Anole-7B config (hidden 4096, 32 layers, vocab 65536, 32x32 = 1024 codes per image), random weights"
        if overrides:
            text += f"; OVERRIDDEN: {overrides}"
        return text

    def config(self) -> Any:
        if self.args.tiny:
            return self._tiny()[0].config
        from trl_omni.testing import anole_layout_config

        return anole_layout_config(**self.model_overrides())

    def _tiny(self) -> tuple[Any, Any]:
        if self._tiny_parts is None:
            from trl_omni.testing import tiny_chameleon

            self._tiny_parts = tiny_chameleon(
                hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32
            )
        return self._tiny_parts

    @property
    def processor(self) -> Any:
        if self._processor is None:
            if self.args.tiny:
                self._processor = self._tiny()[1]
            else:
                from trl_omni.testing import anole_layout_processor

                self._processor = anole_layout_processor()
        return self._processor

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def build_model(self, seed: int = 0) -> Any:
        """A fresh model on the device in the run's dtype, image generation enabled, VQ model frozen."""
        from transformers import ChameleonForConditionalGeneration

        from trl_omni import enable_image_generation, freeze_vq_model

        # A copy: trainers switch `use_cache` off on the config they train, and a model built from that config would
        # then generate without a KV cache.
        config = copy.deepcopy(self.config())
        torch.manual_seed(seed)
        # Built in place on the device, in bf16: the 7B model never exists in fp32 or on the CPU.
        try:
            with torch.device(self.device):
                model = ChameleonForConditionalGeneration._from_config(config, dtype=self.dtype)
        except Exception as error:  # noqa: BLE001 - a slower way still gives the figures
            log(
                f"building on {self.device} failed ({type(error).__name__}: {error}); building on the CPU, then moving"
            )
            self.cleanup()
            model = ChameleonForConditionalGeneration._from_config(config, dtype=self.dtype).to(self.device)
        model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        enable_image_generation(model)
        freeze_vq_model(model)
        model.eval()
        if self._vocab is None:
            from trl_omni import ImageVocabulary

            self._vocab = ImageVocabulary.from_model(model, self.processor)
        return model

    def base_model(self) -> Any:
        """One shared model for the sections that only generate or decode (built on first use)."""
        if self._base is None:
            self._base = self.build_model()
        return self._base

    def release_base_model(self, keep_vocab: bool = False) -> None:
        """Drops the shared model; with `keep_vocab`, first reads the image vocabulary (building a model if needed)."""
        if keep_vocab and self._vocab is None:
            self.base_model()
        if self._base is not None:
            self._base = None
            self.cleanup()

    @property
    def vocab(self) -> Any:
        if self._vocab is None:
            self.base_model()
        return self._vocab

    # ------------------------------------------------------------------ running sections
    def run(self, name: str, function) -> None:
        cap = self.profile.caps[name]
        started = self.elapsed()
        entry: dict[str, Any]
        if name not in self.args.sections:
            entry = {"status": "skipped", "reason": "not selected (--sections)"}
        elif started > self.args.budget_s:
            entry = {"status": "skipped", "reason": f"budget: {started:.0f} s > --budget_s {self.args.budget_s}"}
        elif self.hard_limit - started < 15:
            entry = {"status": "skipped", "reason": f"budget: only {self.hard_limit - started:.0f} s left"}
        else:
            limit = min(cap, self.hard_limit - started)
            log(f"section {name}: start (cap {limit:.0f} s, {started:.0f} s elapsed)")
            self.partial = {}
            try:
                with time_limit(limit):
                    entry = {"status": "ok", **function(self)}
            except SectionTimeout as error:
                entry = {"status": "timeout", "error": str(error)}
            except Exception as error:  # noqa: BLE001 - one broken section must not lose the others
                entry = {
                    "status": "error",
                    "error": f"{type(error).__name__}: {error}"[:2000],
                    "traceback": traceback.format_exc()[-4000:],
                }
            if entry["status"] != "ok" and self.partial:
                entry["partial"] = self.partial
            entry["wall_s"] = round(self.elapsed() - started, 2)
        self.results["sections"][name] = entry
        self.cleanup()
        self.write()
        status = entry["status"]
        log(f"section {name}: {status} {entry.get('error') or entry.get('reason') or ''}".rstrip())
        if status == "error":
            print(entry["traceback"], flush=True)

    def write(self) -> None:
        self.results["meta"]["elapsed_s"] = round(self.elapsed(), 1)
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=2, default=str))
        os.replace(tmp, self.out / "results.json")
        (self.out / "table.md").write_text(format_table(self.results) + "\n")


# ---------------------------------------------------------------------------------------------------------- helpers
def step_timer(suite: Suite) -> Any:
    """A `TrainerCallback` recording the wall time of every optimizer step (device-synchronised)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            suite.sync()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            suite.sync()
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def training_kwargs(suite: Suite, output_dir: Path, max_steps: int) -> dict[str, Any]:
    device = {"bf16": True} if suite.cuda else {"bf16": False, "use_cpu": True}
    return dict(
        output_dir=str(output_dir), max_steps=max_steps, report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=0, dataloader_num_workers=0, **device,
    )  # fmt: skip


def quiet(trainer: Any) -> Any:
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # no dict printed per logged step
    return trainer


def last_logged(trainer: Any, key: str) -> float | None:
    values = [entry[key] for entry in trainer.state.log_history if key in entry]
    return float(values[-1]) if values else None


def text_ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def sft_rows(suite: Suite, num_rows: int) -> list[dict[str, Any]]:
    """Pre-tokenized rows of exactly `sft_length` tokens, `sft_images` random image spans in each completion."""
    profile, vocab, tokenizer = suite.profile, suite.vocab, suite.tokenizer
    generator = torch.Generator().manual_seed(0)
    prompt = [tokenizer.bos_token_id, *text_ids(tokenizer, "User: What is shown? Think with images first.")]
    filler = text_ids(tokenizer, " I mark the object and predict the next state of the grid.")
    rows = []
    for _ in range(num_rows):
        completion = []
        for k in range(profile.sft_images):
            codes = torch.randint(0, vocab.num_codes, (vocab.tokens_per_image,), generator=generator)
            completion += text_ids(tokenizer, f" THOUGHT {k}: Let me draw it.") + vocab.image_span_ids(codes).tolist()
        answer = text_ids(tokenizer, " The answer is A.") + [tokenizer.eos_token_id]
        room = profile.sft_length - len(prompt) - len(completion) - len(answer)
        if room < 0:
            raise ValueError(f"sft_length={profile.sft_length} cannot hold {profile.sft_images} images")
        completion += (filler * (room // len(filler) + 1))[:room] + answer  # text only: never cuts an image
        rows.append({"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)})
    return rows


# ---------------------------------------------------------------------------------------------------------- rollouts
def count_host_syncs(suite: Suite, processor_class: type, steps: int = 4) -> int | None:
    """Host-device synchronisations of `steps` processor calls after the first (CUDA's sync debug mode)."""
    if not suite.cuda:
        return None
    vocab = suite.vocab
    batch = suite.profile.rl_generations
    prompt = torch.tensor([[suite.tokenizer.bos_token_id, vocab.boi_token_id]] * batch, device=suite.device)
    scores = torch.zeros(batch, vocab.vocab_size, device=suite.device)
    code = torch.full((batch, 1), int(vocab.image_token_ids[0]), device=suite.device)
    processor = processor_class(vocab, max_new_tokens=steps + 1)
    ids = prompt
    processor(ids, scores)  # first call: scan + bias table
    count = 0
    for _ in range(steps):
        ids = torch.cat([ids, code], dim=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                processor(ids, scores)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        count += sum("synchroniz" in str(w.message).lower() for w in caught)
    return count


def _host_check_processor_class() -> type:
    from trl_omni import ImageSpanLogitsProcessor

    class HostCheckSpanProcessor(ImageSpanLogitsProcessor):
        """Today's processor with its CPU strategy everywhere: the continuation check is read on the host (a sync
        per step on a GPU), and only one of the two candidate states is computed."""

        @staticmethod
        def _resolve_on_device(input_ids: torch.Tensor) -> bool:
            return False

    return HostCheckSpanProcessor


def section_rollouts(suite: Suite) -> dict[str, Any]:
    from _legacy_span_processor import LegacyImageSpanLogitsProcessor
    from transformers import LogitsProcessorList

    from trl_omni import ImageSpanLogitsProcessor

    HostCheckSpanProcessor = _host_check_processor_class()  # noqa: N806 - a class
    profile, vocab, tokenizer = suite.profile, suite.vocab, suite.tokenizer
    model = suite.base_model()
    batch, new_tokens = profile.rl_generations, profile.rollout_tokens
    prompt = [tokenizer.bos_token_id, *text_ids(tokenizer, "Let me draw it:"), vocab.boi_token_id]
    input_ids = torch.tensor([prompt] * batch, device=suite.device)
    variants = {
        "unconstrained": (None, {}),
        "legacy_processor": (LegacyImageSpanLogitsProcessor, {}),
        "processor": (ImageSpanLogitsProcessor, {}),
        "processor_host_check": (HostCheckSpanProcessor, {}),
        "processor_static_cache": (ImageSpanLogitsProcessor, {"cache_implementation": "static"}),
    }

    def generate(name: str, length: int) -> tuple[float, torch.Tensor]:
        processor_class, extra = variants[name]
        processors = LogitsProcessorList([processor_class(vocab, max_new_tokens=length)] if processor_class else [])
        torch.manual_seed(0)
        suite.sync()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), logits_processor=processors,
                max_new_tokens=length, min_new_tokens=length, do_sample=True, top_k=0, top_p=1.0,
                pad_token_id=tokenizer.pad_token_id, disable_compile=True, **extra,
            )  # fmt: skip
        suite.sync()
        return time.perf_counter() - start, out[:, input_ids.shape[1] :]

    # Warm-up: one full-length run first, so that no timed variant pays the caching allocator's first growth of the
    # KV cache (on an H200 the variant timed first ran at 69 ms per step against 25 ms after it), then each variant.
    generate("processor", new_tokens)
    for name in variants:
        generate(name, 4)
    times: dict[str, list[float]] = {name: [] for name in variants}
    valid = True
    names = list(variants)
    for round_index in range(profile.rollout_rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            seconds, completion = generate(name, new_tokens)
            times[name].append(seconds)
            suite.partial[name] = times[name]
            if variants[name][0] is not None:  # constrained: the image opened by the prompt, code by code
                expected = min(new_tokens, vocab.tokens_per_image)
                codes_ok = (vocab.ids_to_codes(completion[:, :expected].cpu()) >= 0).all()
                closed = new_tokens <= vocab.tokens_per_image or (completion[:, expected] == vocab.eoi_token_id).all()
                valid = valid and bool(codes_ok) and bool(closed)
    tokens_per_s = {name: batch * new_tokens / median(values) for name, values in times.items()}
    suite.ms_per_token = 1e3 * median(times["processor"]) / new_tokens
    return {
        "batch": batch,
        "new_tokens": new_tokens,
        "rounds": profile.rollout_rounds,
        "tokens_per_s": tokens_per_s,
        "ms_per_decoding_step": {name: 1e3 * median(v) / new_tokens for name, v in times.items()},
        "processor_vs_legacy_speedup": ratio(tokens_per_s["processor"], tokens_per_s["legacy_processor"]),
        "device_check_vs_host_check_speedup": ratio(tokens_per_s["processor"], tokens_per_s["processor_host_check"]),
        "static_cache_vs_dynamic_speedup": ratio(tokens_per_s["processor_static_cache"], tokens_per_s["processor"]),
        "constrained_vs_unconstrained_time": ratio(tokens_per_s["unconstrained"], tokens_per_s["processor"]),
        "constrained_outputs_valid": valid,
        "host_syncs_per_4_steps": {
            "legacy_processor": count_host_syncs(suite, LegacyImageSpanLogitsProcessor),
            "processor_host_check": count_host_syncs(suite, HostCheckSpanProcessor),
            "processor": count_host_syncs(suite, ImageSpanLogitsProcessor),
        },
    }


# ---------------------------------------------------------------------------------------------------------- SFT
def lora_config(targets: list[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets, task_type="CAUSAL_LM")


SFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def train_sft_pair(suite: Suite, load_model, label: str) -> dict[str, Any]:
    """SFTTrainer and PeSFTTrainer, one after the other, on fresh models from `load_model()`, same rows."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from trl_omni.trainers import PeSFTConfig, PeSFTTrainer

    profile = suite.profile
    steps = profile.sft_warmup + profile.sft_timed
    dataset = Dataset.from_list(sft_rows(suite, steps))
    figures: dict[str, Any] = {}
    for kind in ("sft", "pesft"):
        suite.reset_peak()
        load_start = time.perf_counter()
        model = load_model()
        load_s = time.perf_counter() - load_start
        memory_model = suite.memory()["allocated_gib"]
        common = dict(
            training_kwargs(suite, suite.workdir / f"{label}-{kind}", steps), per_device_train_batch_size=1,
            learning_rate=2e-4, max_length=None, completion_only_loss=True,
        )  # fmt: skip
        if kind == "sft":
            trainer = SFTTrainer(
                model, args=SFTConfig(**common), train_dataset=dataset, processing_class=suite.processor,
                peft_config=lora_config(SFT_TARGETS),
            )  # fmt: skip
        else:
            trainer = PeSFTTrainer(
                model, args=PeSFTConfig(**common, log_rendered_trajectories=0), train_dataset=dataset,
                processing_class=suite.processor, peft_config=lora_config(SFT_TARGETS),
            )  # fmt: skip
        quiet(trainer)
        timer = step_timer(suite)
        trainer.add_callback(timer)
        trainer.train()
        memory = suite.memory()
        timed = timer.times[profile.sft_warmup :]
        figures[kind] = {
            "model_load_s": load_s,
            "model_memory_gib": memory_model,
            "first_step_s": timer.times[0],
            "step_s": median(timed),
            "step_s_all": timer.times,
            "tokens_per_s": profile.sft_length / median(timed),
            "peak_allocated_gib": memory["peak_allocated_gib"],
            "peak_reserved_gib": memory["peak_reserved_gib"],
            "loss": last_logged(trainer, "loss"),
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        }
        if kind == "pesft":
            figures[kind]["perception_loss"] = last_logged(trainer, "perception_loss")
        suite.partial[kind] = figures[kind]
        # Nothing of this trainer may stay on the device while the next one is built and measured.
        released = weakref.ref(trainer)
        del trainer, model
        gc.collect()
        suite.cleanup()
        figures[kind]["released_before_next"] = released() is None
    return {
        "sequence_length": profile.sft_length,
        "images_per_row": profile.sft_images,
        "image_tokens_per_row": profile.sft_images * suite.vocab.span_length,
        "warmup_steps": profile.sft_warmup,
        "timed_steps": profile.sft_timed,
        **figures,
        "pesft_vs_sft_time": ratio(figures["pesft"]["step_s"], figures["sft"]["step_s"]),
        "pesft_vs_sft_peak_memory": ratio(
            figures["pesft"]["peak_allocated_gib"], figures["sft"]["peak_allocated_gib"]
        ),
    }


def section_sft_lora(suite: Suite) -> dict[str, Any]:
    suite.release_base_model(keep_vocab=True)
    return train_sft_pair(suite, suite.build_model, "lora")


def section_sft_qlora(suite: Suite) -> dict[str, Any]:
    """QLoRA the way users load it: a checkpoint directory through `load_omni_model` with a 4-bit config.

    The random model is saved once as safetensors (its cost is reported) and reloaded quantized for each trainer.
    """
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    from trl_omni import load_omni_model

    # Fail in a second, not after saving 14 GB, when bitsandbytes has no kernels for this device.
    probe = bnb.nn.Linear4bit(64, 64, compute_dtype=suite.dtype, quant_type="nf4").to(suite.device)
    probe(torch.ones(2, 64, dtype=suite.dtype, device=suite.device))
    del probe
    checkpoint = suite.workdir / "checkpoint"
    start = time.perf_counter()
    suite.base_model().save_pretrained(checkpoint, max_shard_size="5GB")
    save_s = time.perf_counter() - start
    suite.release_base_model()
    size_gib = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors")) / GiB

    def load_quantized() -> Any:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=suite.dtype, bnb_4bit_quant_storage=suite.dtype,
        )  # fmt: skip
        placement = {"device_map": {"": suite.device.index or 0}} if suite.cuda else {}
        model, _ = load_omni_model(
            checkpoint, dtype=suite.dtype, quantization_config=quantization, load_processor=False, **placement
        )
        return model

    try:
        figures = train_sft_pair(suite, load_quantized, "qlora")
    finally:
        for path in checkpoint.glob("*"):
            path.unlink()
    return {"checkpoint_save_s": save_s, "checkpoint_gib": size_gib, **figures}


# ---------------------------------------------------------------------------------------------------------- PeRPO
def length_reward(completions, **kwargs) -> list[float]:
    return [len(completion) / 1000.0 for completion in completions]


def section_perpo(suite: Suite) -> dict[str, Any]:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from trl_omni.trainers import PeRPOConfig, PeRPOTrainer

    suite.release_base_model(keep_vocab=True)  # each trainer gets its own model; nothing else may stay on the device
    profile, vocab, tokenizer = suite.profile, suite.vocab, suite.tokenizer
    group = profile.rl_generations
    # Each completion finishes the image its prompt opened (1,025 tokens on Anole: codes + EOI), then text.
    length = vocab.tokens_per_image + 1 + profile.rl_text_tokens
    steps = profile.rl_steps
    if suite.ms_per_token is not None:
        # Plan: 2 trainers x steps x (LoRA rollout, taken as 1.4x the plain model's decoding, + ~15% training),
        # leaving room for the drawing sections after this one.
        per_step = 1.4 * 1.15 * length * suite.ms_per_token / 1e3
        reserve = 2.5 * vocab.span_length * suite.ms_per_token / 1e3 + 20
        while steps > 1 and 2 * steps * per_step > suite.hard_limit - suite.elapsed() - reserve:
            steps -= 1
    text = "User: Which cell of the grid is red? Think with images first. Assistant: Let me draw it."
    prompt_ids = [tokenizer.bos_token_id, *text_ids(tokenizer, text), vocab.boi_token_id]
    rows = {"prompt": [text] * steps, "prompt_ids": [prompt_ids] * steps}
    figures: dict[str, Any] = {}
    for kind in ("grpo", "perpo"):
        # Memory still held when the next trainer starts would count in its peak: say how much there was.
        held_before = suite.memory()["allocated_gib"]
        suite.reset_peak()
        model = suite.build_model()
        common = dict(
            training_kwargs(suite, suite.workdir / kind, steps), num_generations=group,
            per_device_train_batch_size=group, max_completion_length=length, learning_rate=1e-6, beta=0.0,
            temperature=1.0, top_k=0, generation_kwargs={"min_new_tokens": length},
        )  # fmt: skip
        peft = lora_config(["q_proj", "k_proj", "v_proj", "o_proj"])
        if kind == "grpo":
            trainer = GRPOTrainer(
                model, reward_funcs=length_reward, args=GRPOConfig(**common),
                train_dataset=Dataset.from_dict({"prompt": rows["prompt"]}), processing_class=tokenizer,
                peft_config=peft,
            )  # fmt: skip
        else:
            trainer = PeRPOTrainer(
                model, reward_funcs=length_reward,
                args=PeRPOConfig(**common, max_images_per_completion=0, log_rendered_trajectories=0),
                train_dataset=Dataset.from_dict(rows), processing_class=tokenizer, peft_config=peft,
            )  # fmt: skip
        quiet(trainer)
        timer = step_timer(suite)
        trainer.add_callback(timer)
        rollouts: dict[str, list] = {"seconds": [], "tokens": [], "complete": [], "images": []}
        generate = trainer._generate_single_turn

        def timed_generate(prompt_ids, *args, _generate=generate, _kind=kind, _rollouts=rollouts, **kwargs):
            suite.sync()
            start = time.perf_counter()
            completion_ids, logprobs = _generate(prompt_ids, *args, **kwargs)
            suite.sync()
            _rollouts["seconds"].append(time.perf_counter() - start)
            _rollouts["tokens"].append(sum(len(ids) for ids in completion_ids))
            if _kind == "perpo":
                # The core's parse of completions (the one rewards and metrics read): the image each prompt's BOI
                # opened is the completion's first segment.
                segments = suite.vocab.parse_completions(completion_ids).per_row(len(completion_ids))
                _rollouts["images"].append(sum(len(s) for s in segments))
                _rollouts["complete"].append(sum(all(x.complete for x in s) and len(s) == 1 for s in segments))
            return completion_ids, logprobs

        trainer._generate_single_turn = timed_generate
        suite.partial[f"{kind}_so_far"] = {"step_s": timer.times, "rollouts": rollouts}  # live lists
        trainer.train()
        memory = suite.memory()
        step = timer.times[-1]
        generation = rollouts["seconds"][-1]
        figures[kind] = {
            "step_s": step,
            "step_s_all": timer.times,
            "rollout_s": generation,
            "rollout_tokens": rollouts["tokens"][-1],
            "rollout_tokens_per_s": rollouts["tokens"][-1] / generation,
            "generation_share": generation / step,
            "peak_allocated_gib": memory["peak_allocated_gib"],
            "peak_reserved_gib": memory["peak_reserved_gib"],
            "allocated_before_build_gib": held_before,
        }
        if kind == "perpo":
            figures[kind]["completions_with_one_complete_image"] = rollouts["complete"][-1]
            figures[kind]["image_segments"] = rollouts["images"][-1]
            figures[kind]["all_image_spans_complete"] = all(c == group for c in rollouts["complete"])
        suite.partial[kind] = figures[kind]
        # `generate` / `timed_generate` hold the trainer (a bound method, a default argument): drop them too, or the
        # first trainer's model is still on the device while the second one is built and measured.
        released = weakref.ref(trainer)
        del trainer, model, generate, timed_generate
        gc.collect()
        suite.cleanup()
        figures[kind]["released_before_next"] = released() is None
    return {
        "num_generations": group,
        "completion_length": length,
        "steps_per_trainer": steps,
        "timed_step": "the last step (the first includes warm-up)"
        if steps > 1
        else "the only step (includes warm-up)",
        **figures,
        "perpo_vs_grpo_step_time": ratio(figures["perpo"]["step_s"], figures["grpo"]["step_s"]),
        "perpo_vs_grpo_rollout_tokens_per_s": ratio(
            figures["perpo"]["rollout_tokens_per_s"], figures["grpo"]["rollout_tokens_per_s"]
        ),
    }


# ---------------------------------------------------------------------------------------------------------- drawing
def section_vq_decode(suite: Suite) -> dict[str, Any]:
    from trl_omni.models.vq_decoder import ChameleonVQDecoder, decode_images

    vocab, batch = suite.vocab, suite.profile.vq_batch
    decoder = ChameleonVQDecoder(suite.config().vq_config).to(suite.device)  # float32, as load_vq_decoder's default
    codes = torch.randint(0, vocab.num_codes, (batch, *vocab.grid_size), generator=torch.Generator().manual_seed(0))
    decode_images(codes[:1], decoder, vocab)  # warm-up
    latents = vocab.codebook_on(suite.device)[codes.to(suite.device)].permute(0, 3, 1, 2)
    suite.sync()
    start = time.perf_counter()
    with torch.no_grad():
        decoder(latents)
    suite.sync()
    forward_s = time.perf_counter() - start
    start = time.perf_counter()
    images = decode_images(codes, decoder, vocab, batch_size=batch)
    to_pil_s = time.perf_counter() - start
    return {
        "batch": batch,
        "image_pixels": list(images[0].size),
        "images_per_s_forward": batch / forward_s,
        "images_per_s_to_pil": batch / to_pil_s,
    }


class OpenImageFirst:
    """Logits processor for benchmarks: the first generated token of every row is BOI (random weights never draw)."""

    def __init__(self, boi_token_id: int):
        self.boi_token_id = boi_token_id
        self._length = -1

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        first = input_ids.shape[1] != self._length + 1
        self._length = input_ids.shape[1]
        if not first:
            return scores
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.boi_token_id] = 0.0
        return forced


def section_evaluation(suite: Suite) -> dict[str, Any]:
    from trl_omni.evaluation import EvalConfig, evaluate
    from trl_omni.models.vq_decoder import ChameleonVQDecoder, VQImageDecoder
    from trl_omni.testing_data import omni_bench_rows

    profile, vocab = suite.profile, suite.vocab
    model = suite.base_model()
    side = suite.config().vq_config.resolution
    rows = omni_bench_rows(profile.eval_rows, image_size=(side, side))
    decoder = VQImageDecoder(ChameleonVQDecoder(suite.config().vq_config).to(suite.device), vocab)
    config = EvalConfig(
        output_dir=str(suite.workdir / "eval"), overwrite=True, batch_size=profile.eval_rows,
        max_new_tokens=vocab.span_length + profile.eval_text_tokens, max_images=1, do_sample=True, progress=False,
        print_table=False, save_images=True, report_max_rows=2,
    )  # fmt: skip
    suite.sync()
    start = time.perf_counter()
    result = evaluate(
        model, suite.processor, rows, config, decoder=decoder, logits_processors=[OpenImageFirst(vocab.boi_token_id)]
    )
    suite.sync()
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in Path(result.predictions_path).read_text().splitlines()]
    drawn = sum(record["num_images"] for record in records)
    return {
        "rows": len(records),
        "images_drawn": drawn,
        "incomplete_images": sum(record["num_incomplete_images"] for record in records),
        "seconds": seconds,
        "images_per_min": 60 * drawn / seconds,
        "rows_per_min": 60 * len(records) / seconds,
    }


def section_bootstrap(suite: Suite) -> dict[str, Any]:
    from trl_omni.data.bootstrap import BootstrapConfig, run_bootstrap
    from trl_omni.testing_data import m3cot_rows

    profile = suite.profile
    model = suite.base_model()
    side = suite.config().vq_config.resolution
    config = BootstrapConfig(
        output_dir=str(suite.workdir / "bootstrap"), overwrite=True, batch_size=profile.bootstrap_batch,
        max_steps=profile.bootstrap_max_steps, shard_size=profile.bootstrap_rows, disable_tqdm=True, seed=0,
    )  # fmt: skip
    rows = m3cot_rows(profile.bootstrap_rows, image_size=(side, side))
    suite.sync()
    start = time.perf_counter()
    manifest = run_bootstrap(config, model, suite.processor, rows)
    suite.sync()
    seconds = time.perf_counter() - start
    counts = manifest["counts"]
    return {
        "rows": profile.bootstrap_rows,
        "rows_written": counts["rows_written"],
        "images_drawn": counts["images_drawn"],
        "seconds": seconds,
        "rows_per_min": 60 * profile.bootstrap_rows / seconds,
        "drawings_per_s": counts["images_drawn"] / seconds,
    }


def section_compile(suite: Suite) -> dict[str, Any]:
    """Static cache + transformers' automatic `torch.compile` of the decoding step (CUDA graphs), vs eager."""
    if not suite.cuda:
        return {"skipped": "torch.compile of the decoding step is only measured on CUDA"}
    from transformers import LogitsProcessorList

    from trl_omni import ImageSpanLogitsProcessor

    profile, vocab, tokenizer = suite.profile, suite.vocab, suite.tokenizer
    model = suite.base_model()
    batch, new_tokens = profile.rl_generations, profile.rollout_tokens
    prompt = [tokenizer.bos_token_id, *text_ids(tokenizer, "Let me draw it:"), vocab.boi_token_id]
    input_ids = torch.tensor([prompt] * batch, device=suite.device)

    def generate(compiled: bool) -> float:
        torch.manual_seed(0)
        suite.sync()
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                logits_processor=LogitsProcessorList([ImageSpanLogitsProcessor(vocab)]), max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=True, top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id,
                cache_implementation="static", disable_compile=not compiled,
            )  # fmt: skip
        suite.sync()
        return time.perf_counter() - start

    first = generate(True)  # compiles
    compiled = [generate(True) for _ in range(2)]
    eager = [generate(False) for _ in range(2)]
    return {
        "batch": batch,
        "new_tokens": new_tokens,
        "first_call_s_including_compile": first,
        "tokens_per_s_compiled": batch * new_tokens / median(compiled),
        "tokens_per_s_eager_static": batch * new_tokens / median(eager),
        "compiled_vs_eager_speedup": median(eager) / median(compiled),
    }


SECTION_FUNCTIONS = {
    "rollouts": section_rollouts,
    "sft_qlora": section_sft_qlora,
    "sft_lora": section_sft_lora,
    "perpo": section_perpo,
    "vq_decode": section_vq_decode,
    "evaluation": section_evaluation,
    "bootstrap": section_bootstrap,
    "compile": section_compile,
}


# ---------------------------------------------------------------------------------------------------------- table
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def format_table(results: dict[str, Any]) -> str:
    """One Markdown table of the headline figures of every section (the JSON has everything)."""
    meta, sections = results["meta"], results["sections"]
    lines = [
        f"trl-omni GPU suite, {meta['date_utc']} UTC, {meta['device_name']} ({meta['device']}, {meta['dtype']}), "
        f"torch {meta['torch']}, transformers {meta['transformers']}, trl {meta['trl']}, peft {meta.get('peft')}, "
        f"bitsandbytes {meta.get('bitsandbytes')}; {meta.get('elapsed_s', 0):.0f} s",
        f"model: {meta['model']}",
        "",
        "| section | figure | trl-omni | plain TRL / baseline | ratio |",
        "|---|---|---|---|---|",
    ]

    def row(section: str, figure: str, ours: Any, base: Any = None, rel: Any = None) -> None:
        lines.append(f"| {section} | {figure} | {_fmt(ours)} | {_fmt(base)} | {_fmt(rel)} |")

    for name in SECTIONS:
        entry = sections.get(name)
        if entry is None:
            continue
        if entry["status"] != "ok":
            reason = entry.get("error") or entry.get("reason") or ""
            row(name, f"**{entry['status']}**: {reason[:150]}", None)
            continue
        if name == "rollouts":
            t = entry["tokens_per_s"]
            row(name, f"tokens/s, B={entry['batch']}, processor vs legacy", t["processor"], t["legacy_processor"],
                entry["processor_vs_legacy_speedup"])  # fmt: skip
            row(name, "tokens/s, continuation check on device vs on host", t["processor"], t["processor_host_check"],
                entry["device_check_vs_host_check_speedup"])  # fmt: skip
            row(name, "tokens/s, static vs dynamic cache", t["processor_static_cache"], t["processor"],
                entry["static_cache_vs_dynamic_speedup"])  # fmt: skip
            row(name, "tokens/s, constrained vs unconstrained", t["processor"], t["unconstrained"],
                ratio(t["processor"], t["unconstrained"]))  # fmt: skip
            syncs = entry["host_syncs_per_4_steps"]
            row(name, "host syncs per 4 steps (processor vs legacy)", syncs["processor"], syncs["legacy_processor"])
            row(name, "constrained outputs valid", entry["constrained_outputs_valid"])
        elif name in ("sft_qlora", "sft_lora"):
            ours, base = entry["pesft"], entry["sft"]
            label = f"{entry['sequence_length']} tokens, {entry['images_per_row']} images"
            row(name, f"s/step ({label})", ours["step_s"], base["step_s"], entry["pesft_vs_sft_time"])
            row(name, "peak allocated GiB", ours["peak_allocated_gib"], base["peak_allocated_gib"],
                entry["pesft_vs_sft_peak_memory"])  # fmt: skip
            if name == "sft_qlora":
                row(name, "save random checkpoint s / 4-bit load s", entry["checkpoint_save_s"], ours["model_load_s"])
        elif name == "perpo":
            ours, base = entry["perpo"], entry["grpo"]
            row(name, f"s/step (G={entry['num_generations']}, {entry['completion_length']} tokens)", ours["step_s"],
                base["step_s"], entry["perpo_vs_grpo_step_time"])  # fmt: skip
            row(name, "rollout tokens/s", ours["rollout_tokens_per_s"], base["rollout_tokens_per_s"],
                entry["perpo_vs_grpo_rollout_tokens_per_s"])  # fmt: skip
            row(name, "generation share of the step", ours["generation_share"], base["generation_share"])
            row(name, "peak allocated GiB", ours["peak_allocated_gib"], base["peak_allocated_gib"],
                ratio(ours["peak_allocated_gib"], base["peak_allocated_gib"]))  # fmt: skip
            row(name, "every image span complete", ours["all_image_spans_complete"])
        elif name == "vq_decode":
            row(name, f"images/s, batch {entry['batch']}, to PIL", entry["images_per_s_to_pil"])
        elif name == "evaluation":
            row(name, "images drawn/min", entry["images_per_min"])
        elif name == "bootstrap":
            row(name, "rows/min", entry["rows_per_min"])
            row(name, "drawings/s", entry["drawings_per_s"])
        elif name == "compile":
            if "skipped" in entry:
                row(name, entry["skipped"], None)
            else:
                row(name, "tokens/s compiled vs eager (static cache)", entry["tokens_per_s_compiled"],
                    entry["tokens_per_s_eager_static"], entry["compiled_vs_eager_speedup"])  # fmt: skip
                row(name, "first call s (compile)", entry["first_call_s_including_compile"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory of results.json and table.md")
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU: the same code path in seconds")
    parser.add_argument("--layers", type=int, default=None, help="override the number of layers (reported)")
    parser.add_argument("--hidden_size", type=int, default=None, help="override the width (reported; debugging)")
    parser.add_argument("--budget_s", type=float, default=450, help="no section starts after this many seconds")
    parser.add_argument("--grace_s", type=float, default=30, help="a running section is stopped at budget + grace")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)
    if args.tiny and (args.layers or args.hidden_size):
        parser.error("--tiny has its own sizes; --layers / --hidden_size apply to the Anole-7B config")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        torch.set_num_threads(1 if args.tiny else min(8, os.cpu_count() or 1))
    suite = Suite(args, started=_STARTED if __name__ == "__main__" else None)
    meta = suite.results["meta"]
    log(f"{meta['device_name']} | {suite.model_description()} | out={suite.out}")
    log(" ".join(f"{name} {meta.get(name)}" for name in ("torch", "transformers", "trl", "peft", "bitsandbytes")))
    if meta["missing_modules"]:
        log(f"MISSING modules (the sections that need them will fail): {meta['missing_modules']}")
    suite.write()
    for name in SECTIONS:
        suite.run(name, SECTION_FUNCTIONS[name])
    suite.release_base_model()
    table = format_table(suite.results)
    print("\n" + table + "\n", flush=True)
    log(f"done in {suite.elapsed():.0f} s; {suite.out / 'results.json'}")
    return suite.results


if __name__ == "__main__":
    main()
    # Everything is written and printed: do not let compile workers or CUDA teardown hold the device call.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
