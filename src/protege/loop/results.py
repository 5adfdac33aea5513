"""What the stages of a run hand each other, and what summary.json is written from. Every type
here says what it holds; `to_json` gives the readable form summary.json documents
(docs/architecture.md), with paths as strings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..runs import read_json, read_jsonl


@dataclass(frozen=True)
class Scored:
    """One model scored on a list of items: its summary and its per-item records."""

    accuracy: float
    ci: tuple[float, float]
    n: int
    records: Path
    summary: dict = field(repr=False)  # the stage's summary.json (metric, correct, confidence, pass@k)

    @classmethod
    def read(cls, folder: Path) -> "Scored":
        summary = read_json(folder / "summary.json")
        return cls(summary["accuracy"], tuple(summary["ci"]), summary["n"], folder / "records.jsonl", summary)

    def scores(self) -> list[float]:
        return [r["score"] for r in read_jsonl(self.records)]

    def predictions(self) -> list[str]:
        return [r["prediction"] or "" for r in read_jsonl(self.records)]

    def failed_inputs(self) -> list[str]:
        return [r["input"] for r in read_jsonl(self.records) if r["score"] < 1]

    def to_json(self) -> dict:
        return {**self.summary, "records": str(self.records)}

    def interval(self) -> dict:
        agent = self.agent_rates()
        return {"accuracy": self.accuracy, "ci": list(self.ci), "records": str(self.records),
                **({"agent": agent} if agent else {})}

    def agent_rates(self) -> dict | None:
        """An agent task's own rates with their intervals; None on a single-turn task."""
        keys = ("valid_call_rate", "valid_call_ci", "tool_error_rate", "tool_error_ci", "mean_turns", "mean_turns_ci")
        return {key: self.summary[key] for key in keys} if "valid_call_rate" in self.summary else None


@dataclass(frozen=True)
class Probe:
    """One model's answers to the general-ability probe, and its perplexity on general text."""

    accuracy: float
    perplexity: float | None
    items: int
    records: Path

    @classmethod
    def read(cls, folder: Path) -> "Probe":
        summary = read_json(folder / "summary.json")
        return cls(summary["probe_accuracy"], summary["perplexity"], summary["items"], folder / "records.jsonl")

    def to_json(self) -> dict:
        return {"probe_accuracy": self.accuracy, "perplexity": self.perplexity, "items": self.items,
                "records": str(self.records)}


@dataclass(frozen=True)
class Forgetting:
    """What a model lost of its base's general ability (evaluate.forgetting.compare's figures)."""

    n: int
    probe_base: float
    probe_student: float
    probe_change: float
    probe_change_ci: list[float]
    negative_flips: int
    negative_flip_rate: float
    positive_flips: int
    per_category: dict
    perplexity_base: float | None
    perplexity_student: float | None
    perplexity_ratio: float | None
    records: Path
    within_limit: bool

    def to_json(self) -> dict:
        return {**asdict(self), "records": str(self.records)}


@dataclass(frozen=True)
class Candidate:
    """A model the run may keep (a round's student or a merge of it), scored on test and dev and,
    when forgetting is measured, probed against its base."""

    model: Path
    test: Scored
    dev: Scored
    forgetting: Forgetting | None = None

    @property
    def over_forgetting_limit(self) -> bool:
        return self.forgetting is not None and not self.forgetting.within_limit

    @property
    def dev_accuracy(self) -> float:
        return self.dev.accuracy

    def to_json(self) -> dict:
        return {"model": str(self.model), "test_accuracy": self.test.accuracy, "test_ci": list(self.test.ci),
                "dev_accuracy": self.dev.accuracy, "test_records": str(self.test.records),
                "dev_records": str(self.dev.records),
                "forgetting": self.forgetting.to_json() if self.forgetting else None,
                "over_forgetting_limit": self.over_forgetting_limit, "test_agent": self.test.agent_rates()}


@dataclass(frozen=True)
class Curated:
    """A curation stage's files: what trains, the dev set that chooses, what was removed and why."""

    train: Path
    dev: Path
    removed: Path


@dataclass(frozen=True)
class RoundResult:
    round: int
    candidate: Candidate
    train_log: Path
    data: Curated
    train_examples: int
    new_examples: int
    teacher_requests: int  # charged to the request budget by the end of this round's evaluation
    failures: int | None = None  # mined for the next round; None: the loop stopped before mining
    stop: str | None = None  # why the loop ended after this round

    def to_json(self) -> dict:
        entry = {"round": self.round, **self.candidate.to_json(), "train_log": str(self.train_log),
                 "train_examples": self.train_examples, "new_examples": self.new_examples,
                 "data": str(self.data.train), "removed": str(self.data.removed), "failures": self.failures,
                 "teacher_requests": self.teacher_requests}
        return entry | ({"stop": self.stop} if self.stop else {})


@dataclass(frozen=True)
class SweepPoint:
    strength: float  # 1.0: the student itself
    candidate: Candidate

    def to_json(self) -> dict:
        return {"strength": self.strength, **self.candidate.to_json()}


@dataclass(frozen=True)
class Sweep:
    """The kept round merged back toward its base at each strength, and the strength chosen."""

    method: str
    params: dict
    round: int
    points: list[SweepPoint]
    chosen: float

    def point(self, strength: float) -> SweepPoint:
        return next(p for p in self.points if p.strength == strength)

    def to_json(self) -> dict:
        return {"method": self.method, "params": self.params, "round": self.round,
                "points": [p.to_json() for p in self.points], "chosen": self.chosen}


@dataclass(frozen=True)
class KeptStudent:
    """The student a run keeps: its best round, or the sweep's merge of it."""

    round: int
    candidate: Candidate
    base: Path
    merge: dict | None = None  # {"method", "strength"} when a merge was kept

    @property
    def scored(self) -> Scored:
        return self.candidate.test

    def to_json(self) -> dict:
        test = self.candidate.test
        return {"round": self.round, "accuracy": test.accuracy, "ci": list(test.ci),
                "model": str(self.candidate.model), "records": str(test.records), "merge": self.merge,
                "base": str(self.base)}


@dataclass(frozen=True)
class TeacherSpend:
    budget: int
    spent: int
    paid_this_run: int
    tokens_budget: int | None
    tokens_spent: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunSummary:
    """Everything summary.json holds; the report and `protege run`'s table are written from it."""

    task: str
    metric: str
    test_items: int
    confidence: float
    base: Scored
    teacher: Scored
    forgetting_base: Probe | None
    forgetting_limit: float | None
    rounds: list[RoundResult]
    student: KeptStudent
    vs_teacher: dict
    vs_base: dict
    judge: dict | None
    merge_sweep: Sweep | None
    teacher_requests: TeacherSpend
    wall_seconds: float
    device: str
    export: dict[str, Path] | None = None

    def to_json(self) -> dict[str, Any]:
        summary = {"task": self.task, "metric": self.metric, "test_items": self.test_items,
                   "confidence": self.confidence, "base": self.base.interval(), "teacher": self.teacher.interval(),
                   "forgetting_base": self.forgetting_base.to_json() if self.forgetting_base else None,
                   "forgetting_limit": self.forgetting_limit, "rounds": [r.to_json() for r in self.rounds],
                   "student": self.student.to_json(), "vs_teacher": self.vs_teacher, "vs_base": self.vs_base,
                   "judge": self.judge, "merge_sweep": self.merge_sweep.to_json() if self.merge_sweep else None,
                   "teacher_requests": self.teacher_requests.to_json(), "wall_seconds": self.wall_seconds,
                   "device": self.device}
        if self.export is not None:
            summary["export"] = {name: str(path) for name, path in self.export.items()}
        return summary
