"""`protege run|synth|train|eval`: the whole loop, or one stage of it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError, load_task


def _run_dir(args, task) -> Path:
    return Path(args.run_dir) if args.run_dir else Path("runs") / task.spec.name


def cmd_run(args) -> int:
    from .pipeline import run_pipeline
    from .report.summary import results_table
    task = load_task(args.task, args.set)
    summary = run_pipeline(task, _run_dir(args, task))
    student = summary["student"]
    print("\n" + results_table(summary))
    print(f"\nstudent kept: round {student['round']} ({student['accuracy']:.1%} held-out), {student['model']}")
    print(f"\nrun directory: {_run_dir(args, task)}  ({summary['wall_seconds']} s)")
    return 0


def cmd_synth(args) -> int:
    from .pipeline import curate_round, prepare, synth_round0
    task = load_task(args.task, args.set)
    ctx = prepare(task, _run_dir(args, task))
    raw = synth_round0(ctx) / "data.jsonl"
    curated = curate_round(ctx, 0, [raw], None)
    print(json.dumps({"data": str(raw), "train": str(curated / "train.jsonl"), "dev": str(curated / "dev.jsonl"),
                      "removed": str(curated / "removed.jsonl"), "teacher_requests": ctx.spent}, indent=2))
    return 0


def cmd_train(args) -> int:
    from .pipeline import curate_round, prepare, synth_round0, train_round
    from .runs import is_main_process
    task = load_task(args.task, args.set)
    if args.adapter:
        task.spec.train.adapter = args.adapter
    if args.method:
        task.spec.train.method = args.method
    ctx = prepare(task, _run_dir(args, task))
    data = Path(args.data) if args.data else curate_round(ctx, 0, [synth_round0(ctx) / "data.jsonl"], None) \
        / "train.jsonl"
    if not data.is_file():
        raise ConfigError(f"{data}:1: field 'data': file not found")
    trained = train_round(ctx, 0, data, given=bool(args.data))
    if is_main_process():
        print(json.dumps({"model": str(trained / "model"), "log": str(trained / "train_log.json")}, indent=2))
    return 0


def cmd_eval(args) -> int:
    from .pipeline import eval_stage, prepare
    task = load_task(args.task, args.set)
    ctx = prepare(task, _run_dir(args, task))
    model = Path(args.model).resolve() if args.model else None
    if model is not None and not model.is_dir():
        raise ConfigError(f"{model}:1: field 'model': not a directory")
    key = str(model) if model else ctx.base_id
    summary = eval_stage(ctx, "eval-cli", model, task.test, key)
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protege", description="Turn a task and a teacher into a small "
                                     "specialist model.")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "run": (cmd_run, "the whole loop: synth, curate, train, eval, failures -> more data, ..."),
        "synth": (cmd_synth, "round-0 data: seeds, teacher labels, expansion; then curation"),
        "train": (cmd_train, "fine-tune the student on the task's data or on --data FILE.jsonl"),
        "eval": (cmd_eval, "score the base student, or --model DIR, on the held-out test set"),
    }
    for name, (fn, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("task", help="task directory (holding task.yaml) or a task YAML file")
        p.add_argument("--run-dir", help="run directory (default: runs/TASK_NAME)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a task field, e.g. --set student.model=tiny:0 --set train.epochs=1")
        p.set_defaults(fn=fn)
        if name == "train":
            p.add_argument("--data", help="JSONL to train on: chat records, or for dpo preference pairs "
                           "{prompt, chosen, rejected}, for cft critique records (default: the task's data)")
            p.add_argument("--method", choices=["sft", "masked-thought", "cft", "dpo", "distill", "grpo"],
                           help="override train.method")
            p.add_argument("--adapter", choices=["lora", "hft", "full"], help="override train.adapter")
        if name == "eval":
            p.add_argument("--model", help="trained model or adapter directory (default: the base student)")
    return parser


def quiet_libraries() -> None:
    """Keep protege's own progress bars and one-line summaries readable."""
    import logging
    import warnings
    warnings.filterwarnings("ignore")
    for name in ("transformers", "datasets", "peft", "trl", "httpx", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets
    import transformers
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    from .models import ModelNotFound
    from .teachers import TeacherError
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ModelNotFound, TeacherError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
