"""`protege run`, top to bottom: prepare, baselines, rounds (train, evaluate, stop rule, failures
back to the teacher), the kept student, the merge sweep, the judge, the summary, the report and the
export. Every step is a cached stage of the run directory, so a finished run re-runs in seconds
and a killed one resumes."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..config import LoadedTask
from ..runs import read_jsonl, write_atomic, write_json
from .data import (as_examples, curate_round, mine_failures, synthesize_failures, synthesize_round0)
from .results import Probe, RoundResult, RunSummary, TeacherSpend
from .scoring import evaluate, evaluate_candidate, evaluate_teacher, judge, probe, versus
from .selection import best_round, kept_student, merge_sweep, stop_reason
from .state import ModelRef, RunState, prepare, say_progress
from .training import train_round


def run_loop(task: LoadedTask, run_dir: Path, say: Callable[[str], None] = say_progress) -> RunSummary:
    start = time.time()
    state = prepare(task, run_dir, say)
    spec = task.spec

    base = evaluate(state, "eval-base", state.base, task.test)
    say(f"base student: {base.accuracy:.1%} on {base.n} test items")
    base_probe = probe(state, "probe-base", state.base) if spec.forgetting.enabled else None
    if base_probe:
        say(f"base student: {base_probe.accuracy:.1%} on the general-ability probe")
    teacher = evaluate_teacher(state)
    say(f"teacher: {teacher.accuracy:.1%}")

    rounds = run_rounds(state, base_probe)
    dev_items = as_examples(read_jsonl(rounds[0].data.dev))
    sweep = merge_sweep(state, best_round(rounds), dev_items, base_probe)
    student = kept_student(rounds, sweep, state.base_dir)
    judged = judge(state, {"student": student.scored, "teacher": teacher, "base": base})

    summary = RunSummary(
        task=spec.name, metric=spec.metric.name, test_items=len(task.test), confidence=spec.eval.confidence,
        base=base, teacher=teacher, forgetting_base=base_probe, forgetting_limit=spec.forgetting.limit,
        rounds=rounds, student=student, vs_teacher=versus(state, student.scored, teacher),
        vs_base=versus(state, student.scored, base), judge=judged, merge_sweep=sweep,
        teacher_requests=TeacherSpend(spec.budget.requests, state.budget.spent, state.teacher.stats.paid,
                                      spec.budget.tokens, state.budget.spent_tokens),
        wall_seconds=round(time.time() - start, 1), device=state.device)
    if spec.export.formats:
        summary = replace(summary, export=export_student(state, student.candidate.model, run_dir))
    write_summary(run_dir, summary, say)
    return summary


def run_rounds(state: RunState, base_probe: Probe | None) -> list[RoundResult]:
    """Round 0 learns from the synthesized data; each later round from it plus the teacher's new
    examples like the last round's failures, until the stop rule says enough."""
    spec, rounds = state.spec, []
    round0 = synthesize_round0(state)
    data_files = [round0.data]
    curated = curate_round(state, 0, data_files, None)
    dev_items = as_examples(read_jsonl(curated.dev))
    for round_ in range(spec.rounds):
        trained = train_round(state, round_, curated.train, round0.pairs)
        student = ModelRef(trained / "model", trained.name)
        result = RoundResult(round_, evaluate_candidate(state, f"r{round_}", student, dev_items, base_probe),
                             trained / "train_log.json", curated, len(read_jsonl(curated.train)),
                             len(read_jsonl(data_files[-1])), state.budget.spent)
        stop = stop_reason(spec, state.budget.left, [*rounds, result])
        failures = []
        if stop is None:
            failures = mine_failures(state, round_ + 1, student, curated.train) + result.candidate.dev.failed_inputs()
            result = replace(result, failures=len(failures))
            stop = "the student made no mistakes to learn from" if not failures else None
        state.say(round_line(result))
        rounds.append(replace(result, stop=stop))
        if stop:
            state.say(f"stopping: {stop}")
            break
        data_files.append(synthesize_failures(state, round_ + 1, failures[:spec.synth.max_failures]))
        curated = curate_round(state, round_ + 1, data_files, rounds[0].data.dev)
    return rounds


def round_line(result: RoundResult) -> str:
    test, lost = result.candidate.test, result.candidate.forgetting
    forgetting = f" | probe {lost.probe_change:+.1%}" if lost else ""
    return (f"round {result.round}: {result.train_examples} examples (+{result.new_examples} new) | "
            f"test {test.accuracy:.1%} [{test.ci[0]:.1%}, {test.ci[1]:.1%}] | "
            f"dev {result.candidate.dev_accuracy:.1%}{forgetting} | "
            f"{'-' if result.failures is None else result.failures} failures mined | "
            f"teacher requests {result.teacher_requests}")


def export_student(state: RunState, model: Path, run_dir: Path) -> dict[str, Path]:
    from ..export import export_model
    cfg = state.spec.export
    # the run directory is this run's own (it holds the lock): an earlier run's export is replaced, also
    # one written before export.json listed its files
    return export_model(model, run_dir / "export", cfg.formats, state.base_dir, cfg.gguf_dtype, overwrite=True,
                        name=state.spec.name)


def write_summary(run_dir: Path, summary: RunSummary, say: Callable[[str], None]) -> None:
    """summary.json, summary.md and report.html."""
    from ..report.html import write_report
    from ..report.summary import summary_markdown
    written = summary.to_json()
    write_json(run_dir / "summary.json", written)
    write_atomic(run_dir / "summary.md", summary_markdown(written))
    say(f"report: {write_report(run_dir)}")
