"""The loop: synth -> curate -> train -> eval -> failures -> synth ... Every step is a cached stage
of the run directory, so a finished run re-runs in seconds and a killed one resumes."""

from __future__ import annotations

import random
import sys
from collections import Counter
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Example, LoadedTask
from .curate import CurateContext, curate
from .eval_stages import (eval_stage, eval_teacher, forgetting_of, judge_stage, judge_teacher, probe_stage,
                          versus)
from .merge_sweep import keep_best, merge_sweep
from .method_round import train_round
from .models import load_model, model_dir, pick_device
from .runs import Run, digest, file_digest, read_json, read_jsonl, write_json, write_jsonl
from .synth.expand import inputs_from_generator, inputs_from_teacher
from .synth.failures import inputs_like_failures
from .synth.label import label_inputs
from .synth.records import is_task_answer, record_answer, record_input, sft_record
from .synth.registry import SynthContext, run_methods
from .teachers import CachedTeacher, TeacherCache, affordable, build_teacher


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
    spent_tokens: int = 0  # teacher tokens (in + out) charged to the token budget so far
    token_requests: int = 0  # the requests those tokens paid for
    loaded: tuple | None = None  # (adapter, model, tokenizer) of the last evaluation
    base_probe: dict | None = None  # the base's probe summary, when forgetting is measured
    dev_items: list[Example] | None = None  # the held-out dev set that chooses among rounds and merges
    synth_r0: Path | None = None  # round 0's synthesis stage (its pairs.jsonl feeds round 0's dpo)

    @property
    def spec(self):
        return self.task.spec

    @property
    def tokens_left(self) -> int | None:
        """What is left of the token budget; None: tokens are not budgeted."""
        tokens = self.spec.budget.tokens
        return None if tokens is None else max(0, tokens - self.spent_tokens)

    @property
    def left(self) -> int:
        """Requests still affordable: the rest of the request budget and, when tokens are budgeted,
        no more than the rest of those buys at the mean cost of a request so far."""
        requests = max(0, self.spec.budget.requests - self.spent)
        if self.tokens_left is None:
            return requests
        return min(requests, affordable(self.tokens_left, self.spent_tokens, self.token_requests, requests))


def _teacher_stage(ctx: Context, name: str, key, build, teacher=None) -> Path:
    """A stage that asks the teacher (or another one, e.g. a judge): teacher.json records what it
    asked and what that cost (requests, retries, drops, tokens in and out). The synthesis stages
    charge its requests to the request budget themselves; the tokens of every stage that asks the
    task's teacher are charged to the token budget here, and such a stage stops sending requests
    once that budget is spent."""
    start = time.time()
    teacher = teacher or ctx.teacher
    charged = teacher is ctx.teacher
    before = teacher.stats.copy()

    def wrapped(out: Path) -> None:
        with teacher.allowance(ctx.tokens_left if charged else None):
            build(out)
        write_json(out / "teacher.json", {**teacher.stats.minus(before).as_dict(), "seconds": time.time() - start})

    folder, _ = ctx.run.stage(name, key, wrapped)
    if charged:  # also when the stage was done by an earlier run: its teacher.json says what it cost
        used = _stage_requests(folder)
        ctx.spent_tokens += used.get("tokens_in", 0) + used.get("tokens_out", 0)
        ctx.token_requests += used["requests"]
    return folder


def _stage_requests(folder: Path) -> dict:
    return read_json(folder / "teacher.json")


def synth_round0(ctx: Context) -> Path:
    """Seeds as they are, the teacher's answers to the unlabeled inputs, expanded inputs, then the
    synthesis methods of synth.methods in order (their preference pairs go to pairs.jsonl, what each
    made, dropped and asked to methods.json)."""
    spec, task = ctx.spec, ctx.task
    key = {"teacher": ctx.teacher.backend.identity(), "instruction": spec.instruction,
           "seeds": [s.model_dump() for s in task.seeds], "inputs": task.inputs,
           "synth": spec.synth.model_dump(exclude={"methods"}), "budget": spec.budget.requests}
    if spec.synth.methods:  # without methods the key stays what it was, and so do earlier runs' stages
        key["methods"] = {"steps": [m.model_dump() for m in spec.synth.methods], "student": ctx.base_id,
                          "metric": spec.metric.model_dump(), "test": [t.input for t in task.test],
                          "max_new_tokens": spec.eval.max_new_tokens}

    def build(out: Path) -> None:
        start = ctx.teacher.stats.requests
        records = [sft_record(spec.instruction, s.input, s.output, "seed", 0) for s in task.seeds]
        budget = spec.budget.requests
        inputs = task.inputs[:budget] if spec.synth.label_inputs else []
        labeled, _ = label_inputs(ctx.teacher, spec.instruction, inputs, "teacher", 0)
        records += labeled
        records += expand(ctx, budget - len(inputs))
        if spec.synth.methods:
            methods = SynthContext(ctx.teacher, spec.instruction, budget - (ctx.teacher.stats.requests - start),
                                   metric=spec.metric, task_dir=task.directory, seed=spec.train.seed,
                                   exclude=[t.input for t in task.test], student=lambda: loaded_student(ctx, None),
                                   student_id=ctx.base_id, device=ctx.device,
                                   max_new_tokens=spec.eval.max_new_tokens, say=ctx.say)
            records = run_methods(records, spec.synth.methods, methods)
            write_jsonl(out / "pairs.jsonl", methods.pairs)
            write_json(out / "methods.json", {"steps": methods.notes, "extra_requests": methods.extra_requests})
        write_jsonl(out / "data.jsonl", records)

    folder = _teacher_stage(ctx, "synth-r0", key, build)
    # an ensemble's other teachers are paid for too: methods.json says how many requests they got
    extra = read_json(folder / "methods.json")["extra_requests"] if (folder / "methods.json").is_file() else 0
    ctx.spent += _stage_requests(folder)["requests"] + extra
    ctx.synth_r0 = folder
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
    """Run the curation steps over all data so far; in round 0 also hold out the dev set. A step that
    asks the judge (quality) or the teacher (mixture) is recorded and charged like a synthesis stage."""
    spec = ctx.spec
    judge = judge_teacher(ctx)
    key = {"data": [file_digest(p) for p in data_files], "test": [t.input for t in ctx.task.test],
           "curate": spec.curate.model_dump(), "dev_size": spec.eval.dev_size, "seed": spec.train.seed,
           "dev": file_digest(dev_from) if dev_from else None, "instruction": spec.instruction,
           # scoring steps read the base student and the judge: a change of either must re-curate
           "uses": {"student": ctx.base_id, "judge": judge.backend.identity()}, "records_teacher": True}

    def build(out: Path) -> None:
        records = [r for p in data_files for r in read_jsonl(p)]
        dev = read_jsonl(dev_from) if dev_from else []
        kept, removed = curate(records, spec.curate, CurateContext(
            test_inputs=[t.input for t in ctx.task.test] + [record_input(d) for d in dev],
            instruction=spec.instruction, seed=spec.train.seed, round=round_, device=ctx.device,
            student=lambda: loaded_student(ctx, None), judge=lambda: judge, teacher=ctx.teacher,
            max_length=spec.train.max_length, say=ctx.say))
        if dev_from is None:
            dev, kept = hold_out_dev(kept, spec.eval.dev_size, spec.train.seed)
        write_jsonl(out / "train.jsonl", kept)
        write_jsonl(out / "dev.jsonl", dev)
        write_jsonl(out / "removed.jsonl", removed)

    folder = _teacher_stage(ctx, f"curate-r{round_}", key, build, judge)
    if judge is ctx.teacher:
        ctx.spent += _stage_requests(folder)["requests"]
    return folder


def hold_out_dev(records: list[dict], size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """The dev set comes from teacher-labeled data (never seeds, never the test set): it decides
    when the loop stops, so the test set stays untouched until it is reported."""
    repeats = Counter(record_input(r) for r in records)
    candidates = [i for i, r in enumerate(records) if r["meta"]["source"] not in ("seed", "general")
                  and is_task_answer(r) and not r["meta"].get("alternative") and repeats[record_input(r)] == 1]
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


def mine_failures(ctx: Context, round_: int, model_key: str, adapter: Path, train_file: Path) -> list[str]:
    """LLM2LLM: test the student on (a sample of) its own training data; the misses seed new data."""
    records = [r for r in read_jsonl(train_file) if is_task_answer(r)]
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
    test_inputs = [t.input for t in ctx.task.test]
    key = {"teacher": ctx.teacher.backend.identity(), "failures": failures, "per": per,
           "instruction": spec.instruction, "round": round_, "never": test_inputs}

    def build(out: Path) -> None:
        pairs = inputs_like_failures(ctx.teacher, spec.instruction, failures, per, round_, exclude=test_inputs)
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
    lost = r.get("forgetting")
    forgetting = f" | probe {lost['probe_change']:+.1%}" if lost else ""
    return (f"round {r['round']}: {r['train_examples']} examples (+{r['new_examples']} new) | "
            f"test {r['test_accuracy']:.1%} [{r['test_ci'][0]:.1%}, {r['test_ci'][1]:.1%}] | "
            f"dev {r['dev_accuracy']:.1%}{forgetting} | "
            f"{'-' if r['failures'] is None else r['failures']} failures mined | "
            f"teacher requests {r['teacher_requests']}")


def evaluate_round(ctx: Context, round_: int, trained: Path, dev_items: list[Example]) -> dict:
    """Test, dev and forgetting of one round's student."""
    return {"round": round_, **evaluate_candidate(ctx, f"r{round_}", trained / "model", trained.name, dev_items),
            "train_log": str(trained / "train_log.json")}


def evaluate_candidate(ctx: Context, tag: str, model: Path, key: str, dev_items: list[Example]) -> dict:
    """Test, dev and (when measured) forgetting of a model a run may keep: a round's student or a merge."""
    test = eval_stage(ctx, f"eval-{tag}", model, ctx.task.test, key)
    dev = eval_stage(ctx, f"dev-{tag}", model, dev_items, key) if dev_items else test
    entry = {"model": str(model), "test_accuracy": test["accuracy"], "test_ci": test["ci"],
             "dev_accuracy": dev["accuracy"], "test_records": test["records"], "dev_records": dev["records"],
             "forgetting": None, "over_forgetting_limit": False}
    if ctx.base_probe is not None:
        entry["forgetting"] = forgetting_of(ctx, ctx.base_probe, probe_stage(ctx, f"probe-{tag}", model, key))
        entry["over_forgetting_limit"] = not entry["forgetting"]["within_limit"]
    return entry


def run_rounds(ctx: Context) -> list[dict]:
    spec, rounds = ctx.spec, []
    data_files = [synth_round0(ctx) / "data.jsonl"]
    curated = curate_round(ctx, 0, data_files, None)
    dev_file = curated / "dev.jsonl"
    dev_items = ctx.dev_items = as_examples(read_jsonl(dev_file))
    for round_ in range(spec.rounds):
        train_file = curated / "train.jsonl"
        trained = train_round(ctx, round_, train_file)
        entry = evaluate_round(ctx, round_, trained, dev_items)
        entry.update({"train_examples": len(read_jsonl(train_file)), "new_examples": len(read_jsonl(data_files[-1])),
                      "data": str(train_file), "removed": str(curated / "removed.jsonl"), "failures": None,
                      "teacher_requests": ctx.spent})
        rounds.append(entry)
        stop = _stop_reason(ctx, rounds)
        if stop is None:
            failures = mine_failures(ctx, round_ + 1, trained.name, trained / "model", train_file)
            failures += [r["input"] for r in read_jsonl(Path(entry["dev_records"])) if r["score"] < 1]
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
    if rounds[-1]["over_forgetting_limit"]:
        return f"the student lost more than {spec.forgetting.limit:.0%} of probe accuracy (the forgetting limit)"
    if ctx.left < 2 * max(1, spec.synth.per_failure) or spec.synth.per_failure == 0:
        return "teacher budget spent"
    if len(rounds) > 1 and rounds[-1]["dev_accuracy"] <= max(r["dev_accuracy"] for r in rounds[:-1]):
        return "dev accuracy stopped rising"
    return None


def best_round(rounds: list[dict]) -> dict:
    """The student kept is the one best on dev (the earliest on a tie) among the rounds inside the
    forgetting limit; test never chooses. When every round is over the limit, the one that forgot
    least is kept (the merge sweep can then trade task skill back for general ability)."""
    return keep_best(rounds, closer_to_base=lambda r: -r["round"])


def kept_student(rounds: list[dict], sweep: dict | None) -> dict:
    """The best round, or the sweep's chosen merge of it."""
    best = best_round(rounds)
    student = {"round": best["round"], "accuracy": best["test_accuracy"], "ci": best["test_ci"],
               "model": best["model"], "records": best["test_records"], "merge": None}
    if sweep and sweep["chosen"] != 1.0:
        point = next(p for p in sweep["points"] if p["strength"] == sweep["chosen"])
        student.update(accuracy=point["test_accuracy"], ci=point["test_ci"], model=point["model"],
                       records=point["test_records"], merge={"method": sweep["method"], "strength": point["strength"]})
    return student


def _interval(summary: dict) -> dict:
    return {"accuracy": summary["accuracy"], "ci": summary["ci"], "records": summary["records"]}


def run_pipeline(task: LoadedTask, run_dir: Path, say=say_progress) -> dict:
    start = time.time()
    ctx = prepare(task, run_dir, say)
    spec = task.spec
    base = eval_stage(ctx, "eval-base", None, task.test, ctx.base_id)
    say(f"base student: {base['accuracy']:.1%} on {base['n']} test items")
    if spec.forgetting.enabled:
        ctx.base_probe = probe_stage(ctx, "probe-base", None, ctx.base_id)
        say(f"base student: {ctx.base_probe['probe_accuracy']:.1%} on the general-ability probe")
    teacher = eval_teacher(ctx)
    say(f"teacher: {teacher['accuracy']:.1%}")
    rounds = run_rounds(ctx)
    sweep = merge_sweep(ctx, best_round(rounds))
    student = kept_student(rounds, sweep) | {"base": str(ctx.base)}
    judged = judge_stage(ctx, {"student": student, "teacher": teacher, "base": base})
    summary = {"task": spec.name, "metric": spec.metric.name, "test_items": len(task.test),
               "confidence": spec.eval.confidence, "base": _interval(base), "teacher": _interval(teacher),
               "forgetting_base": ctx.base_probe, "forgetting_limit": spec.forgetting.limit, "rounds": rounds,
               "student": student, "vs_teacher": versus(ctx, student, teacher), "vs_base": versus(ctx, student, base),
               "judge": judged, "merge_sweep": sweep,
               "teacher_requests": {"budget": spec.budget.requests, "spent": ctx.spent,
                                    "paid_this_run": ctx.teacher.stats.paid, "tokens_budget": spec.budget.tokens,
                                    "tokens_spent": ctx.spent_tokens},
               "wall_seconds": round(time.time() - start, 1), "device": ctx.device}
    if spec.export.formats:
        from .export import export_model
        written = export_model(Path(student["model"]), run_dir / "export", spec.export.formats, ctx.base,
                               spec.export.gguf_dtype)
        summary["export"] = {name: str(path) for name, path in written.items()}
    write_json(run_dir / "summary.json", summary)
    _write_summaries(run_dir, summary, say)
    return summary


def _write_summaries(run_dir: Path, summary: dict, say) -> None:
    from .report.html import write_report
    from .report.summary import summary_markdown
    from .runs import write_atomic
    write_atomic(run_dir / "summary.md", summary_markdown(summary))
    say(f"report: {write_report(run_dir)}")
