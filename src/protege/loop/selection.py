"""Choosing: when the loop stops, which round is kept, and the merge sweep that can end a run (the
kept student merged back toward its base at several strengths, base + s * (student - base), each
merge evaluated like a round, the best on dev inside the forgetting limit kept). Fine-tuning's gain
on the task and its loss of general ability do not fall at the same rate as s falls (WiSE-FT,
LiNeS), so a merge often keeps most of the task and gets back under the limit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from ..config import Example, TaskSpec
from .results import KeptStudent, Probe, RoundResult, Sweep, SweepPoint
from .scoring import evaluate_candidate
from .stage import StageInputs, stage
from .state import ModelRef, RunState

Option = TypeVar("Option", RoundResult, SweepPoint)


def keep_best(options: list[Option], closer_to_base: Callable[[Option], float]) -> Option:
    """Best dev inside the forgetting limit (on a tie, the one closer_to_base ranks higher); when
    every option is over the limit, the one that forgot least."""
    inside = [o for o in options if not o.candidate.over_forgetting_limit]
    if not inside:
        return max(options, key=lambda o: (o.candidate.forgetting.probe_change, closer_to_base(o)))
    return max(inside, key=lambda o: (o.candidate.dev_accuracy, closer_to_base(o)))


def best_round(rounds: list[RoundResult]) -> RoundResult:
    """The student kept is the one best on dev (the earliest on a tie) among the rounds inside the
    forgetting limit; test never chooses. When every round is over the limit, the one that forgot
    least is kept (the merge sweep can then trade task skill back for general ability)."""
    return keep_best(rounds, closer_to_base=lambda r: -r.round)


def stop_reason(spec: TaskSpec, requests_left: int, rounds: list[RoundResult]) -> str | None:
    """Why the loop ends after the last of `rounds`; None: it goes on."""
    if len(rounds) >= spec.rounds:
        return f"{spec.rounds} rounds done"
    if rounds[-1].candidate.over_forgetting_limit:
        return f"the student lost more than {spec.forgetting.limit:.0%} of probe accuracy (the forgetting limit)"
    if requests_left < 2 * max(1, spec.synth.per_failure) or spec.synth.per_failure == 0:
        return "teacher budget spent"
    if len(rounds) > 1 and rounds[-1].candidate.dev_accuracy <= max(r.candidate.dev_accuracy for r in rounds[:-1]):
        return "dev accuracy stopped rising"
    return None


@dataclass(frozen=True)
class MergeInputs(StageInputs):
    base: str
    student: str  # the stage folder that holds the student
    method: str
    params: dict
    strength: float


def merge_stage(state: RunState, student: Path, strength: float) -> ModelRef:
    """The student merged at one strength, as a cached stage holding a full model directory."""
    from ..merge.streaming import merge_dirs
    cfg = state.spec.merge
    inputs = MergeInputs(state.base.identity, student.parent.name, cfg.method, cfg.params, strength)

    def build(out: Path) -> None:
        merge_dirs(state.base_dir, [student], inputs.method, dict(inputs.params), out / "model",
                   weights=[inputs.strength])

    folder = stage(state, f"merge-{strength:g}", inputs, build)
    return ModelRef(folder / "model", folder.name)


def sweep_line(point: SweepPoint) -> str:
    lost = point.candidate.forgetting
    forgetting = f" | probe {lost.probe_change:+.1%}" if lost else ""
    over = " (over the forgetting limit)" if point.candidate.over_forgetting_limit else ""
    return (f"merge at {point.strength:g}: test {point.candidate.test.accuracy:.1%} | "
            f"dev {point.candidate.dev_accuracy:.1%}{forgetting}{over}")


def merge_sweep(state: RunState, best: RoundResult, dev_items: list[Example], base_probe: Probe | None) -> Sweep | None:
    """Every strength of the task's sweep, with the student itself as strength 1; None without a sweep."""
    cfg = state.spec.merge
    if not cfg.strengths:
        return None
    points = [SweepPoint(1.0, best.candidate)]
    for strength in cfg.strengths:
        merged = merge_stage(state, best.candidate.model, strength)
        point = SweepPoint(strength, evaluate_candidate(state, f"merge-{strength:g}", merged, dev_items, base_probe))
        state.say(sweep_line(point))
        points.append(point)
    chosen = keep_best(points, closer_to_base=lambda p: -p.strength)
    return Sweep(cfg.method, cfg.params, best.round, points, chosen.strength)


def kept_student(rounds: list[RoundResult], sweep: Sweep | None, base: Path) -> KeptStudent:
    """The best round, or the sweep's chosen merge of it."""
    best = best_round(rounds)
    if sweep is None or sweep.chosen == 1.0:
        return KeptStudent(best.round, best.candidate, base)
    point = sweep.point(sweep.chosen)
    return KeptStudent(best.round, point.candidate, base, {"method": sweep.method, "strength": point.strength})
