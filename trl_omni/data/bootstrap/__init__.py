"""Omni-R1-Zero bootstrapping: interleaved trajectories drawn by the base model from text-only chain-of-thought.

A text-only CoT dataset (M3CoT schema by default) goes in; every rationale is split into steps, the base model draws
one image per step ("Text step k -> Image step k", conditioned on the question image), the drawings are scored with
[`~trl_omni.rewards.PerceptionReward`] (redrawn or dropped below a threshold), and the trajectories come out in the
interleaved schema (`prompt` / `completion` lists of parts with pre-tokenized `codes`, `answer`), as sharded parquet
plus a `manifest.json`. A run killed at any moment continues where it stopped when re-run with the same arguments.

Modules: `config` ([`BootstrapConfig`]), `steps` (step splitting), `sampling` (seeds and the Gumbel-max sampler),
`drawer` ([`StepDrawer`]), `inputs` (input loading), `worker` (one shard: draw, score, redraw, assemble), `writer`
(the resumable sharded output and its manifest) and `run` ([`run_bootstrap`], [`bootstrap_dataset`]).

Determinism: every drawing is sampled with the Gumbel-max trick from noise of a generator seeded by
`(seed, input row index, step, attempt)`, inside `model.generate` (greedy over noised logits == sampling). The
noise of a drawing therefore does not depend on which other prompts share its batch. Guaranteed: the same seed, the
same arguments (batch size included) and the same model/input give identical rows, also across kill-and-resume.
Other batch sizes use the same noise; their rows differ only where batched floating-point arithmetic changes a
logit enough to flip an argmax (on the tiny CPU model they are identical, which the tests check). The noise comes
from generators on the model's device, so a CPU run and a CUDA run draw different (equally valid) images.
"""

from .config import DEFAULT_PROMPT_TEMPLATE, LOW_QUALITY_POLICIES, BootstrapConfig
from .drawer import StepDrawer
from .inputs import load_input_dataset
from .run import bootstrap_dataset, run_bootstrap
from .sampling import SeededGumbelSampler, drawing_seed
from .steps import cap_steps, split_steps
from .writer import DATA_DIR, MANIFEST_NAME, MANIFEST_VERSION, bootstrapped_files, load_bootstrapped, output_arguments


__all__ = [
    "DATA_DIR",
    "DEFAULT_PROMPT_TEMPLATE",
    "LOW_QUALITY_POLICIES",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "BootstrapConfig",
    "SeededGumbelSampler",
    "StepDrawer",
    "bootstrap_dataset",
    "bootstrapped_files",
    "cap_steps",
    "drawing_seed",
    "load_bootstrapped",
    "load_input_dataset",
    "output_arguments",
    "run_bootstrap",
    "split_steps",
]
