"""`protege run|synth|train|eval`: the whole loop, or one stage of it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError, load_task
from .registry import ADAPTER, REGISTRIES, TRAIN, docs_tables
from .runs import RunInUse, StageInterrupted, write_json


def _run_dir(args, task) -> Path:
    return Path(args.run_dir) if args.run_dir else Path("runs") / task.spec.name


def cmd_run(args) -> int:
    from .loop.run import run_loop
    from .report.summary import merge_words, difference_line, results_table
    task = load_task(args.task, args.set)
    summary = run_loop(task, _run_dir(args, task)).to_json()
    student = summary["student"]
    print("\n" + results_table(summary))
    print(f"\nstudent kept: round {student['round']}{merge_words(student)} ({student['accuracy']:.1%} held-out), "
          f"{student['model']}")
    print("".join(difference_line(name, summary[f"vs_{name}"]) for name in ("teacher", "base")), end="")
    print(f"\nrun directory: {_run_dir(args, task)}  ({summary['wall_seconds']} s); "
          f"report: {_run_dir(args, task) / 'report.html'}")
    return 0


def cmd_synth(args) -> int:
    from .loop.data import curate_round, synthesize_round0
    from .loop.state import prepare
    task = load_task(args.task, args.set)
    state = prepare(task, _run_dir(args, task))
    raw = synthesize_round0(state).data
    curated = curate_round(state, 0, [raw], None)
    print(json.dumps({"data": str(raw), "train": str(curated.train), "dev": str(curated.dev),
                      "removed": str(curated.removed), "teacher_requests": state.budget.spent}, indent=2))
    return 0


def cmd_train(args) -> int:
    from .loop.data import curate_round, synthesize_round0
    from .loop.state import prepare
    from .loop.training import train_round
    from .runs import is_main_process
    task = load_task(args.task, args.set)
    if args.adapter and args.adapter != task.spec.train.adapter.name:  # the same one keeps its options
        task.spec.train.adapter = args.adapter
    if args.method and args.method != task.spec.train.method.name:
        task.spec.train.method = args.method
    state = prepare(task, _run_dir(args, task))
    if args.data:
        from .loop.data import given_records
        data, pairs = given_records(state, Path(args.data)), None
    else:
        round0 = synthesize_round0(state)
        data, pairs = curate_round(state, 0, [round0.data], None).train, round0.pairs
    trained = train_round(state, 0, data, pairs, given=bool(args.data))
    if is_main_process():
        print(json.dumps({"model": str(trained / "model"), "log": str(trained / "train_log.json")}, indent=2))
    return 0


def cmd_eval(args) -> int:
    from .loop.state import prepare
    task = load_task(args.task, args.set)
    state = prepare(task, _run_dir(args, task))
    model = Path(args.model).resolve() if args.model else None
    if model is not None and not model.is_dir():
        raise ConfigError(f"{model}:1: field 'model': not a directory")
    result = evaluate_alone(state, model, args)
    write_json(state.run.root / "eval-cli.json", result)
    print(json.dumps(result, indent=2))
    return 0


def evaluate_alone(state, model: Path | None, args) -> dict:
    """`protege eval`: the task score with its interval, and on request forgetting against the base,
    the judge, and lm-evaluation-harness scores beside protege's own."""
    from .loop.scoring import evaluate, evaluate_teacher, forgetting_of, judge, probe
    from .loop.state import ModelRef
    target = ModelRef(model, str(model)) if model else state.base
    scored = evaluate(state, "eval-cli", target, state.task.test)
    result = {"model": str(model) if model else "base", "task": scored.to_json()}
    if args.forgetting and model is not None:
        base = probe(state, "probe-base", state.base)
        result["forgetting"] = forgetting_of(state, base, probe(state, "probe-cli", target)).to_json()
    if args.judge:
        state.spec.judge.mode = args.judge
        result["judge"] = judge(state, {"student": scored, "teacher": evaluate_teacher(state)})
    if args.lm_eval:
        result["lm_eval"] = lm_eval_scores(state, model, args)
    return result


def lm_eval_scores(state, model: Path | None, args) -> dict:
    """lm-evaluation-harness loads a plain model directory: an adapter is merged into its base first."""
    from .evaluate.lm_eval import run_lm_eval
    from .loop.state import ModelRef
    from .loop.training import merged_model
    from .models import is_adapter
    directory = model or state.base_dir
    if model is not None and is_adapter(model):
        directory = merged_model(state, "merged-cli", ModelRef(model, str(model)))
    tasks = [t for t in args.lm_eval.split(",") if t]
    return run_lm_eval(directory, tasks, device=state.device, limit=args.lm_eval_limit,
                       include_path=Path(args.lm_eval_include) if args.lm_eval_include else None)


def cmd_report(args) -> int:
    from .report.html import check_in_browser, find_chromium, screenshot, write_report
    run_dir = Path(args.run_dir_positional)
    if not (run_dir / "summary.json").is_file():
        raise ConfigError(f"{run_dir / 'summary.json'}:1: field 'run_dir': no summary.json (run `protege run` first)")
    html = write_report(run_dir)
    print(f"report: {html}")
    if not args.no_screenshot and find_chromium():
        seen = check_in_browser(html)
        print(f"screenshot: {screenshot(html, run_dir / 'report.png', seen.get('height'))}")
        print(f"browser check: {json.dumps(seen)}")
    return 0


def kept_in_run(target: Path) -> tuple[Path, Path | None]:
    """A run directory stands for the student it kept (and that student's base)."""
    summary = json.loads((target / "summary.json").read_text())
    student = summary["student"]
    return Path(student["model"]), Path(student["base"]) if student.get("base") else None


def cmd_export(args) -> int:
    from .export import export_model
    target, base, name = Path(args.model), Path(args.base) if args.base else None, None
    if (target / "summary.json").is_file():
        name = json.loads((target / "summary.json").read_text()).get("task")  # general.name: the task's
        target, run_base = kept_in_run(target)
        base = base or run_base
    elif not target.is_dir():
        target = model_or_adapter(args.model)
    formats = [f for f in args.format.split(",") if f]
    written = export_model(target, Path(args.out), formats, base, args.gguf_dtype, args.overwrite, name)
    print(json.dumps({name: str(path) for name, path in written.items()}, indent=2))
    return 0


def cmd_merge(args) -> int:
    from .merge.config import MergeError, merge_from_yaml
    try:
        print(f"merged: {merge_from_yaml(Path(args.config), Path(args.out) if args.out else None, args.overwrite)}")
    except MergeError as exc:  # models that cannot be merged (shapes, missing tensors): the user's input
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_methods(args) -> int:
    """Every registered method of each kind (or of KIND) with its options; --write regenerates the
    tables between the registry markers of a markdown file."""
    if args.write:
        path = Path(args.write)
        path.write_text(docs_tables(path.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"tables written: {path}")
        return 0
    kinds = [args.kind] if args.kind else list(REGISTRIES)
    for kind in kinds:
        registry = REGISTRIES[kind]
        print(f"## {kind}\n\n{registry.markdown()}" if args.markdown else registry.text())
    return 0


def add_methods_parser(sub) -> None:
    p = sub.add_parser("methods", help="list every method a task YAML can name, with its options",
                       description="list the registered methods of each kind (synth, curate, train, adapter, "
                       "metric, merge, teacher) with their options, types, defaults and descriptions")
    p.add_argument("kind", nargs="?", choices=list(REGISTRIES), help="only this kind")
    p.add_argument("--markdown", action="store_true", help="markdown tables, as docs/methods.md holds them")
    p.add_argument("--write", metavar="FILE", help="regenerate the tables between FILE's <!-- registry:KIND --> "
                   "markers (docs/methods.md)")
    p.set_defaults(fn=cmd_methods)


def add_merge_parser(sub) -> None:
    p = sub.add_parser("merge", help="merge models or LoRA adapters as a mergekit-style YAML says",
                       description="merge (linear, task_arithmetic, ties, dare_linear, breadcrumbs, lines) the "
                       "models a mergekit-style YAML names, tensor by tensor")
    p.add_argument("config", help="merge YAML: merge_method, base_model, models [{model, parameters}], parameters")
    p.add_argument("--out", help="output directory (default: the YAML's out, else merged/ beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace the output directory even when it is not "
                   "an earlier merge's, unchanged (default: refuse)")
    p.set_defaults(fn=cmd_merge)


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a student as a safetensors directory, a peft adapter or GGUF",
                       description="export MODEL (a model or adapter directory, or a run directory: its kept "
                       "student) as hf (merged safetensors + tokenizer + chat template), adapter (peft) or gguf "
                       "(llama family; checked by loading it back with transformers' GGUF loader)")
    p.add_argument("model", help="model or adapter directory, a run directory, or embedded:NAME / tiny:SEED")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default="hf", help="comma-separated: hf, adapter, gguf (default: hf)")
    p.add_argument("--base", help="the adapter's base model (default: the run's, or adapter_config.json's)")
    p.add_argument("--gguf-dtype", default="f16", choices=["f32", "f16", "q8_0"], help="GGUF tensor type")
    p.add_argument("--overwrite", action="store_true", help="replace what is at the output names even when "
                   "export.json does not list it as protege's, unchanged (default: refuse)")
    p.set_defaults(fn=cmd_export)


def model_or_adapter(spec: str) -> Path:
    """A LoRA adapter directory has no config.json, so model_dir would refuse it."""
    from .models import is_adapter, model_dir
    return Path(spec).resolve() if is_adapter(Path(spec)) else model_dir(spec)


def proxy_spec(args):
    """--proxy-base/--proxy-expert/--proxy-anti: all three or none."""
    from .models import model_dir
    from .serve.proxy import ProxySpec
    given = [args.proxy_base, args.proxy_expert, args.proxy_anti]
    if not any(given):
        if not args.model:
            raise ConfigError("serve:1: field 'model': give MODEL, or --proxy-base, --proxy-expert and --proxy-anti")
        return None
    if not all(given) or args.model:
        raise ConfigError("serve:1: field 'proxy': proxy-tuning needs all of --proxy-base, --proxy-expert and "
                          "--proxy-anti, and no MODEL")
    return ProxySpec(model_dir(args.proxy_base), model_or_adapter(args.proxy_expert), model_dir(args.proxy_anti),
                     args.proxy_alpha)


def cmd_serve(args) -> int:
    import os
    from .models import model_dir, pick_device
    from .serve import serve
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        raise ConfigError(f"--api-key-env {args.api_key_env}:1: field 'api_key_env': the variable is not set")
    proxy = proxy_spec(args)
    serve(model_or_adapter(args.model) if args.model else None, host=args.host, port=args.port, api_key=key,
          model_name=args.model_name, max_tokens_limit=args.max_tokens, max_request_bytes=args.max_request_bytes,
          device=pick_device(args.device), base=model_dir(args.base) if args.base else None, proxy=proxy,
          max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)
    return 0


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible API (/v1)",
                       description="serve MODEL (a model directory, or an adapter with --base) at /v1; or, "
                       "proxy-tuned, BIG's next-token scores plus (TUNED - BASE)'s")
    p.add_argument("model", nargs="?", help="model or adapter directory (or embedded:NAME / tiny:SEED)")
    p.add_argument("--base", help="base model directory when MODEL is a LoRA adapter")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--api-key-env", help="environment variable holding the API key clients must send")
    p.add_argument("--model-name", help="name clients ask for (default: the directory name)")
    p.add_argument("--max-tokens", type=int, default=2048, help="largest max_tokens a request may ask for")
    p.add_argument("--max-request-bytes", type=int, default=1_000_000, help="largest request body accepted")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
    p.add_argument("--max-batch", type=int, default=32, help="most requests generated together in one batch")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="a batch closes once no request has arrived "
                   "for this long (or when it is full)")
    p.add_argument("--proxy-base", metavar="BIG", help="proxy-tuning: the large model whose scores are steered")
    p.add_argument("--proxy-expert", metavar="TUNED", help="proxy-tuning: the small tuned model (or its adapter)")
    p.add_argument("--proxy-anti", metavar="BASE", help="proxy-tuning: the small model TUNED was tuned from")
    p.add_argument("--proxy-alpha", type=float, default=1.0, help="proxy-tuning: weight of (TUNED - BASE)")
    p.set_defaults(fn=cmd_serve)


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
    report = sub.add_parser("report", help="write RUN_DIR/report.html (and a screenshot where Chromium is "
                            "installed)", description="write RUN_DIR/report.html, one self-contained page")
    report.add_argument("run_dir_positional", metavar="RUN_DIR", help="a run directory holding summary.json")
    report.add_argument("--no-screenshot", action="store_true", help="skip the headless-Chromium screenshot")
    report.set_defaults(fn=cmd_report)
    add_serve_parser(sub)
    add_export_parser(sub)
    add_merge_parser(sub)
    add_methods_parser(sub)
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
            p.add_argument("--method", choices=TRAIN.names(),
                           help="override train.method")
            p.add_argument("--adapter", choices=ADAPTER.names(), help="override train.adapter")
        if name == "eval":
            p.add_argument("--model", help="trained model or adapter directory (default: the base student)")
            p.add_argument("--forgetting", action="store_true", help="also run the general-ability probe and "
                           "perplexity on the base and the model, and report what the model lost")
            p.add_argument("--judge", choices=["pointwise", "pairwise", "both"],
                           help="also have the judge (judge.teacher, else the teacher) compare the model's "
                           "answers with the teacher's")
            p.add_argument("--lm-eval", metavar="TASKS", help="comma-separated lm-evaluation-harness tasks to "
                           "run on the model (needs `pip install lm-eval` and reachable datasets)")
            p.add_argument("--lm-eval-limit", type=int, help="lm-eval: items per task (default: all)")
            p.add_argument("--lm-eval-include", metavar="DIR", help="lm-eval: a folder of custom task YAMLs")
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
    from safetensors import SafetensorError

    from .models import ModelNotFound
    from .teachers import TeacherError
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ModelNotFound, TeacherError, RunInUse, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a folder it may not write: what failed, with the file
        print(f"error: {exc.strerror or exc} ({exc.filename or 'no file named'}); files written whole are "
              f"kept, nothing half-written", file=sys.stderr)
        return 1
    except SafetensorError as exc:  # safetensors' own failure to write weights (a full disk) is no OSError
        print(f"error: {exc} (writing weights); files written whole are kept, nothing half-written",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        where = f" during {exc.stage}" if isinstance(exc, StageInterrupted) else ""
        print(f"interrupted{where}; run the same command again to resume from the last finished stage",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
