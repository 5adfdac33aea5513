"""lm-evaluation-harness on a student: standard benchmarks (hellaswag, arc_easy, mmlu, ...) or tasks
written as lm-eval YAML files, scored by the harness itself, to report beside protege's own scores.

lm-eval is optional (`pip install lm-eval`). It loads the model from a plain model directory with its
Hugging Face backend, so a LoRA adapter is merged into its base first (protege.models.save_merged).
Datasets come from the Hugging Face cache or the network; offline (HF_HUB_OFFLINE=1) a task runs only
when its dataset is already cached or is a local file."""

from __future__ import annotations

import math
from pathlib import Path


def import_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise ValueError("lm-evaluation-harness is not installed: pip install lm-eval") from None
    return lm_eval


def task_manager(tasks: list[str], include_path: Path | None):
    """Indexing the harness's own task files takes about 20 s; tasks all found in include_path don't
    need them (include_path wins over a built-in task of the same name either way)."""
    from lm_eval.tasks import TaskManager
    if include_path is not None:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(name in local.all_tasks for name in tasks):
            return local
    return TaskManager(include_path=str(include_path) if include_path is not None else None)


def check_tasks(manager, tasks: list[str]) -> None:
    """Load every task (and its dataset) before the model, so a bad name or an unreachable dataset is
    one clear line rather than a traceback after minutes of work."""
    for name in tasks:
        try:
            manager.load([name])
        except KeyError:
            raise ValueError(f"lm-eval task {name!r}: not a task, group or tag lm-evaluation-harness "
                             "knows (nor one in the include path)") from None
        except OSError as error:  # datasets' and huggingface_hub's connection and not-found errors
            raise ValueError(f"lm-eval task {name!r}: its dataset cannot be reached "
                             f"({type(error).__name__}); offline, it must be in the Hugging Face cache") from None


def metric_name(key: str) -> str:
    """lm-eval keys results "metric,filter"; the filter is kept only when there is one ("none" is none)."""
    metric, _, filter_name = key.partition(",")
    return metric if filter_name in ("", "none") else key


def scores(results: dict) -> dict:
    """{task: {metric: value}} from simple_evaluate's "results": the metrics and their *_stderr, as
    floats; names, aliases, sample counts and undefined values (an "N/A" or NaN stderr) are left out."""
    return {task: {metric_name(key): float(value) for key, value in values.items()
                   if "," in key and isinstance(value, (int, float)) and not isinstance(value, bool)
                   and math.isfinite(value)}
            for task, values in results.items()}


def run_lm_eval(model_dir: Path, tasks: list[str], device: str = "cpu", batch_size: int = 8,
                limit: int | float | None = None, include_path: Path | None = None) -> dict:
    """Score the model in model_dir (a plain model directory, not an adapter) on lm-eval tasks:
    {task: {metric: value}}, groups included. limit: items per task (a fraction when below 1).
    include_path: a folder of extra task YAML files. Raises ValueError when lm-eval is missing, a task
    is unknown or its dataset cannot be reached."""
    lm_eval = import_lm_eval()
    manager = task_manager(tasks, include_path)
    check_tasks(manager, tasks)
    dtype = "bfloat16" if device.startswith("cuda") else "float32"  # as protege.models.load_model
    results = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(model_dir), "dtype": dtype},
                                      tasks=tasks, device=device, batch_size=batch_size, limit=limit,
                                      task_manager=manager, log_samples=False)
    return scores(results["results"])
