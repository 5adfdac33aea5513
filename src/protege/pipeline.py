"""The loop: synth -> curate -> train -> eval -> failures -> synth ... Every step is a cached stage
of the run directory, so a finished run re-runs in seconds and a killed one resumes."""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Example, LoadedTask
from .curate import curate
from .method_round import train_round
from .models import load_model, model_dir, pick_device
from .runs import Run, digest, file_digest, read_json, read_jsonl, write_json, write_jsonl
from .synth.expand import inputs_from_generator, inputs_from_teacher
from .synth.failures import inputs_like_failures
from .synth.label import label_inputs
from .synth.records import record_answer, record_input, sft_record
from .teachers import CachedTeacher, TeacherCache, build_teacher


def say_progress(line: str) -> None:
    """Progress goes to stderr (beside the progress bars); stdout carries only results."""
    print(line, file=sys.stderr, flush=True)


@dataclass
class Context:
    task: LoadedTask
    run: Run
    say: callable = say_progress
    device: str = "cpu"
    base: Path | None = None
    base_id: str = ""
    teacher: CachedTeacher | None = None
    spent: int = 0  # teacher requests charged to the synthesis budget so far
    loaded: tuple | None = None  # (adapter, model, tokenizer) of the last evaluation

    @property
    def spec(self):
        return self.task.spec

    @property
    def left(self) -> int:
        return max(0, self.spec.budget.requests - self.spent)


def _teacher_stage(ctx: Context, name: str, key, build) -> Path:
    """A stage that asks the teacher: it records the requests it made, which the budget charges."""
    start = time.time()
    before = (ctx.teacher.stats.requests, ctx.teacher.stats.paid, ctx.teacher.stats.failed)

    def wrapped(out: Path) -> None:
        build(out)
        s = ctx.teacher.stats
        write_json(out / "teacher.json", {"requests": s.requests - before[0], "paid": s.paid - before[1],
                                          "failed": s.failed - before[2], "seconds": time.time() - start})

    folder, _ = ctx.run.stage(name, key, wrapped)
    return folder


def _stage_requests(folder: Path) -> dict:
    return read_json(folder / "teacher.json")


def synth_round0(ctx: Context) -> Path:
    """Seeds as they are, the teacher's answers to the unlabeled inputs, and expanded inputs."""
    spec, task = ctx.spec, ctx.task
    key = {"teacher": ctx.teacher.backend.identity(), "instruction": spec.instruction,
           "seeds": [s.model_dump() for s in task.seeds], "inputs": task.inputs,
           "synth": spec.synth.model_dump(), "budget": spec.budget.requests}

    def build(out: Path) -> None:
        records = [sft_record(spec.instruction, s.input, s.output, "seed", 0) for s in task.seeds]
        budget = spec.budget.requests
        inputs = task.inputs[:budget] if spec.synth.label_inputs else []
        labeled, _ = label_inputs(ctx.teacher, spec.instruction, inputs, "teacher", 0)
        records += labeled
        records += expand(ctx, budget - len(inputs))
        write_jsonl(out / "data.jsonl", records)

    folder = _teacher_stage(ctx, "synth-r0", key, build)
    ctx.spent += _stage_requests(folder)["requests"]
    return folder


def expand(ctx: Context, budget: int) -> list[dict]:
    spec, task = ctx.spec, ctx.task
    if spec.synth.generator:
        new = inputs_from_generator(spec.synth.generator, task.directory, spec.synth.expand, spec.train.seed)
        new = new[:budget]
    else:
        pool = [s.input for s in task.seeds] + task.inputs
        new = inputs_from_teacher(ctx.teacher, spec.instruction, pool, min(spec.synth.expand, budget // 2),
                                  spec.synth.seeds_per_prompt, spec.train.seed)
    labeled, _ = label_inputs(ctx.teacher, spec.instruction, new, "expand", 0)
    return labeled


def curate_round(ctx: Context, round_: int, data_files: list[Path], dev_from: Path | None) -> Path:
    """Decontaminate and deduplicate all data so far; in round 0 also hold out the dev set."""
    spec = ctx.spec
    key = {"data": [file_digest(p) for p in data_files], "test": [t.input for t in ctx.task.test],
           "curate": spec.curate.model_dump(), "dev_size": spec.eval.dev_size, "seed": spec.train.seed,
           "dev": file_digest(dev_from) if dev_from else None}

    def build(out: Path) -> None:
        records = [r for p in data_files for r in read_jsonl(p)]
        dev = read_jsonl(dev_from) if dev_from else []
        kept, removed = curate(records, [t.input for t in ctx.task.test] + [record_input(d) for d in dev],
                               spec.curate)
        if dev_from is None:
            dev, kept = hold_out_dev(kept, spec.eval.dev_size, spec.train.seed)
        write_jsonl(out / "train.jsonl", kept)
        write_jsonl(out / "dev.jsonl", dev)
        write_jsonl(out / "removed.jsonl", removed)

    folder, _ = ctx.run.stage(f"curate-r{round_}", key, build)
    return folder


def hold_out_dev(records: list[dict], size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """The dev set comes from teacher-labeled data (never seeds, never the test set): it decides
    when the loop stops, so the test set stays untouched until it is reported."""
    candidates = [i for i, r in enumerate(records) if r["meta"]["source"] != "seed"]
    chosen = set(random.Random(seed).sample(candidates, min(size, len(candidates) // 5)))
    return [records[i] for i in sorted(chosen)], [r for i, r in enumerate(records) if i not in chosen]


def as_examples(records: list[dict]) -> list[Example]:
    return [Example(input=record_input(r), output=record_answer(r)) for r in records]


def loaded_student(ctx: Context, adapter: Path | None) -> tuple:
    """A round's test, dev and mining evaluations share one loaded (and merged) model."""
    if ctx.loaded is None or ctx.loaded[0] != adapter:
        ctx.loaded = None  # free the previous model before loading the next
        ctx.loaded = (adapter, *load_model(ctx.base, ctx.device, adapter))
    return ctx.loaded[1:]


def eval_stage(ctx: Context, name: str, adapter: Path | None, items: list[Example], key_extra) -> dict:
    """Evaluate the base (adapter None) or a trained student on items; returns the summary."""
    from .evaluate.task_eval import evaluate_model
    spec = ctx.spec
    key = {"model": key_extra, "items": [i.model_dump() for i in items], "metric": spec.metric,
           "eval": spec.eval.model_dump(), "instruction": spec.instruction}

    def build(out: Path) -> None:
        model, tokenizer = loaded_student(ctx, adapter)
        records, summary = evaluate_model(model, tokenizer, items, spec.instruction, spec.metric, spec.eval,
                                          desc=name)
        write_jsonl(out / "records.jsonl", records)
        write_json(out / "summary.json", summary)

    folder, _ = ctx.run.stage(name, key, build)
    summary = read_json(folder / "summary.json")
    return {**summary, "records": str(folder / "records.jsonl")}


def eval_teacher(ctx: Context) -> dict:
    """The teacher answers the test set too, so its accuracy sits beside the student's. These
    requests are reported, not charged to the synthesis budget."""
    from .evaluate.task_eval import score_predictions
    from .teachers import TeacherRequest
    spec = ctx.spec
    key = {"teacher": ctx.teacher.backend.identity(), "test": [t.model_dump() for t in ctx.task.test],
           "metric": spec.metric, "instruction": spec.instruction, "tolerance": spec.eval.tolerance}

    def build(out: Path) -> None:
        requests = [TeacherRequest("answer", spec.instruction, input=t.input) for t in ctx.task.test]
        replies = ctx.teacher.complete(requests)
        records, summary = score_predictions(ctx.task.test, [r or "" for r in replies], spec.metric,
                                             spec.eval.tolerance)
        write_jsonl(out / "records.jsonl", records)
        write_json(out / "summary.json", summary)

    folder = _teacher_stage(ctx, "eval-teacher", key, build)
    return read_json(folder / "summary.json")


def mine_failures(ctx: Context, round_: int, model_key: str, adapter: Path, train_file: Path) -> list[str]:
    """LLM2LLM: test the student on (a sample of) its own training data; the misses seed new data."""
    records = read_jsonl(train_file)
    rng = random.Random(ctx.spec.train.seed + round_)
    sample = rng.sample(records, min(ctx.spec.synth.mine_size, len(records)))
    summary = eval_stage(ctx, f"mine-r{round_}", adapter, as_examples(sample), model_key)
    misses = [r["input"] for r in read_jsonl(Path(summary["records"])) if r["score"] < 1]
    return misses[:ctx.spec.synth.max_failures]


def synth_failures(ctx: Context, round_: int, failures: list[str]) -> Path:
    spec = ctx.spec
    per = spec.synth.per_failure
    affordable = ctx.left // max(1, 2 * per)
    failures = failures[:affordable]
    key = {"teacher": ctx.teacher.backend.identity(), "failures": failures, "per": per,
           "instruction": spec.instruction, "round": round_}

    def build(out: Path) -> None:
        pairs = inputs_like_failures(ctx.teacher, spec.instruction, failures, per, round_)
        labeled, _ = label_inputs(ctx.teacher, spec.instruction, [p for p, _ in pairs],
                                  f"failure-round-{round_}", round_)
        write_jsonl(out / "data.jsonl", labeled)

    folder = _teacher_stage(ctx, f"synth-r{round_}", key, build)
    ctx.spent += _stage_requests(folder)["requests"]
    return folder


def _base_identity(spec_model: str, directory: Path) -> str:
    return digest([spec_model, (directory / "config.json").read_text()])


def prepare(task: LoadedTask, run_dir: Path, say=say_progress) -> Context:
    spec = task.spec
    ctx = Context(task=task, run=Run(run_dir), say=say, device=pick_device(spec.train.device))
    ctx.base = model_dir(spec.student.model, task.directory)
    ctx.base_id = _base_identity(spec.student.model, ctx.base)

    backend = build_teacher(spec.teacher, task.directory, (lambda: loaded_student(ctx, None), ctx.base_id))
    ctx.teacher = CachedTeacher(backend, TeacherCache(), {"max_tokens": spec.teacher.max_tokens})
    return ctx


def _round_line(r: dict) -> str:
    return (f"round {r['round']}: {r['train_examples']} examples (+{r['new_examples']} new) | "
            f"test {r['test_accuracy']:.1%} | dev {r['dev_accuracy']:.1%} | "
            f"{'-' if r['failures'] is None else r['failures']} failures mined | "
            f"teacher requests {r['teacher_requests']}")


def run_rounds(ctx: Context) -> list[dict]:
    spec, rounds = ctx.spec, []
    data_files = [synth_round0(ctx) / "data.jsonl"]
    curated = curate_round(ctx, 0, data_files, None)
    dev_file = curated / "dev.jsonl"
    dev_items = as_examples(read_jsonl(dev_file))
    for round_ in range(spec.rounds):
        train_file = curated / "train.jsonl"
        trained = train_round(ctx, round_, train_file)
        model_key = trained.name
        test = eval_stage(ctx, f"eval-r{round_}", trained / "model", ctx.task.test, model_key)
        dev = eval_stage(ctx, f"dev-r{round_}", trained / "model", dev_items, model_key) if dev_items else test
        entry = {"round": round_, "model": str(trained / "model"), "train_examples": len(read_jsonl(train_file)),
                 "new_examples": len(read_jsonl(data_files[-1])), "test_accuracy": test["accuracy"],
                 "dev_accuracy": dev["accuracy"], "test_records": test["records"], "failures": None,
                 "teacher_requests": ctx.spent}
        rounds.append(entry)
        stop = _stop_reason(ctx, rounds)
        if stop is None:
            failures = mine_failures(ctx, round_ + 1, model_key, trained / "model", train_file)
            failures += [r["input"] for r in read_jsonl(Path(dev["records"])) if r["score"] < 1]
            entry["failures"] = len(failures)
            stop = "the student made no mistakes to learn from" if not failures else None
        ctx.say(_round_line(entry))
        if stop:
            entry["stop"] = stop
            ctx.say(f"stopping: {stop}")
            break
        data_files.append(synth_failures(ctx, round_ + 1, failures[:spec.synth.max_failures]) / "data.jsonl")
        curated = curate_round(ctx, round_ + 1, data_files, dev_file)
    return rounds


def _stop_reason(ctx: Context, rounds: list[dict]) -> str | None:
    spec = ctx.spec
    if len(rounds) >= spec.rounds:
        return f"{spec.rounds} rounds done"
    if ctx.left < 2 * max(1, spec.synth.per_failure) or spec.synth.per_failure == 0:
        return "teacher budget spent"
    if len(rounds) > 1 and rounds[-1]["dev_accuracy"] <= max(r["dev_accuracy"] for r in rounds[:-1]):
        return "dev accuracy stopped rising"
    return None


def best_round(rounds: list[dict]) -> dict:
    """The student kept is the one best on dev (the earliest on a tie): test never chooses."""
    return max(rounds, key=lambda r: (r["dev_accuracy"], -r["round"]))


def run_pipeline(task: LoadedTask, run_dir: Path, say=say_progress) -> dict:
    start = time.time()
    ctx = prepare(task, run_dir, say)
    base = eval_stage(ctx, "eval-base", None, task.test, ctx.base_id)
    say(f"base student: {base['accuracy']:.1%} on {base['n']} test items")
    teacher = eval_teacher(ctx)
    say(f"teacher: {teacher['accuracy']:.1%}")
    rounds = run_rounds(ctx)
    best = best_round(rounds)
    summary = {"task": task.spec.name, "metric": task.spec.metric, "test_items": len(task.test),
               "base": {"accuracy": base["accuracy"]}, "teacher": {"accuracy": teacher["accuracy"]},
               "rounds": rounds, "student": {"round": best["round"], "accuracy": best["test_accuracy"],
                                             "model": best["model"]},
               "teacher_requests": {"budget": task.spec.budget.requests, "spent": ctx.spent,
                                    "paid_this_run": ctx.teacher.stats.paid},
               "wall_seconds": round(time.time() - start, 1), "device": ctx.device}
    write_json(run_dir / "summary.json", summary)
    from .report.summary import summary_markdown
    from .runs import write_atomic
    write_atomic(run_dir / "summary.md", summary_markdown(summary))
    return summary
