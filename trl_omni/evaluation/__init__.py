"""Evaluation of drawing models on Omni-Bench-format or interleaved data: accuracy per source / task group,
predictions JSONL with saved images, an HTML report with rendered trajectories; resumable after a kill.

Output directory layout:

- `predictions.jsonl`: one line per row (`index, id, source, group, question, prompt, completion, extracted_answer,
  gold, score, num_images, num_incomplete_images, image_paths, completion_ids, prompt_ids`), appended and flushed
  batch by batch (`question` is the row's own text, `prompt` the templated prompt the model saw);
- `eval_state.json`: the identity of the run (every argument, the model, the processor and the data that shape
  the predictions), checked on resume;
- `images/`: the completions' images as PNG (`<index>_<k>.png`);
- `metrics.json`, `results.md`: accuracy overall, per task group and per source, recomputed from the JSONL;
- `report.html`: the table plus rendered trajectories.

Modules: `config` ([`EvalConfig`], [`EvalResult`]), `metrics` (task groups, accuracy tables), `state` (the resumable
predictions JSONL and the run's identity), `run` ([`evaluate`]) and `report` (`report.html`).
"""

from .config import DEFAULT_TASK_GROUPS, OTHER_GROUP, EvalConfig, EvalResult
from .metrics import accuracy_table, format_table, task_group_of
from .report import write_report
from .run import evaluate
from .state import PREDICTIONS_FILE, STATE_FILE, EvalResumeError, read_predictions


__all__ = [
    "DEFAULT_TASK_GROUPS",
    "OTHER_GROUP",
    "PREDICTIONS_FILE",
    "STATE_FILE",
    "EvalConfig",
    "EvalResult",
    "EvalResumeError",
    "accuracy_table",
    "evaluate",
    "format_table",
    "read_predictions",
    "task_group_of",
    "write_report",
]
