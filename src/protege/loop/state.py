"""What one run owns: its task, its run directory, the teacher and the budget it charges, the base
student and the one student model loaded at a time. Nothing else in the loop keeps state."""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..config import LoadedTask, MetricConfig, TaskSpec
from ..models import load_model, model_dir, pick_device
from ..runs import Run, digest, is_main_process
from ..teachers import CachedTeacher, JsonAnswers, affordable, cached_teacher

if TYPE_CHECKING:
    from ..agents.environment import Environment


def say_progress(line: str) -> None:
    """Progress goes to stderr (beside the progress bars); stdout carries only results."""
    print(line, file=sys.stderr, flush=True)


@dataclass
class Budget:
    """The teacher budget: requests the synthesis may make and, optionally, tokens every stage that
    asks the task's teacher may use. Only the teacher-stage helper charges it."""

    requests: int
    tokens: int | None = None
    spent: int = 0  # requests charged so far
    spent_tokens: int = 0  # tokens (in + out) charged so far
    token_requests: int = 0  # the requests those tokens paid for

    def charge(self, used: dict, count_requests: bool) -> None:
        """Charge what a stage's teacher.json says it used; its requests (and those it made to other
        teachers, as an ensemble's) count against the request budget when `count_requests`."""
        self.spent_tokens += used.get("tokens_in", 0) + used.get("tokens_out", 0)
        self.token_requests += used["requests"]
        if count_requests:
            self.spent += used["requests"] + used.get("extra_requests", 0)

    @property
    def tokens_left(self) -> int | None:
        """What is left of the token budget; None: tokens are not budgeted."""
        return None if self.tokens is None else max(0, self.tokens - self.spent_tokens)

    @property
    def left(self) -> int:
        """Requests still affordable: the rest of the request budget and, when tokens are budgeted,
        no more than the rest of those buys at the mean cost of a request so far."""
        requests = max(0, self.requests - self.spent)
        if self.tokens_left is None:
            return requests
        return min(requests, affordable(self.tokens_left, self.spent_tokens, self.token_requests, requests))


@dataclass(frozen=True)
class ModelRef:
    """A model a stage evaluates or starts from: its directory (None: the base student itself) and
    the identity that goes into stage keys."""

    path: Path | None
    identity: str


class StudentLoader:
    """A round's test, dev and mining evaluations share one loaded (and merged) model; loading
    another frees the last."""

    def __init__(self, base: Path, device: str):
        self.base, self.device = base, device
        self.loaded: tuple | None = None  # (adapter, model, tokenizer)

    def load(self, adapter: Path | None = None) -> tuple:
        if self.loaded is None or self.loaded[0] != adapter:
            self.loaded = None  # free the previous model before loading the next
            self.loaded = (adapter, *load_model(self.base, self.device, adapter))
        return self.loaded[1:]


@dataclass(frozen=True)
class AgentSetup:
    """An agent task's tools, loaded once: the environment each episode gets a fresh copy of, the
    verifier that judges an episode (None: the metric on the final answer), and an identity for stage
    keys that changes when the tools' code or settings do."""

    environment: Environment
    verifier: Callable | None
    identity: str


def agent_setup(task: LoadedTask) -> AgentSetup:
    """A tool, environment or verifier that cannot be loaded is an error in the task file's tools
    section (exit 2, nothing written), said with its line."""
    from ..agents.environment import load_tools
    from ..teachers import load_callable
    cfg = task.spec.tools
    try:
        environment = load_tools(cfg, task.directory)
        verifier = load_callable(cfg.verifier, task.directory) if cfg.verifier else None
    except (ValueError, ImportError, AttributeError) as exc:
        raise task.config_error("tools", str(exc)) from None
    sources = sorted({inspect.getsourcefile(code) for code in environment.code()})
    return AgentSetup(environment, verifier, digest([cfg.model_dump(), *(Path(f).read_text() for f in sources)]))


@dataclass
class RunState:
    task: LoadedTask
    run: Run
    device: str
    base: ModelRef
    students: StudentLoader
    teacher: CachedTeacher
    budget: Budget
    say: Callable[[str], None] = say_progress
    judge: CachedTeacher | None = field(default=None)  # None: the task's teacher judges
    agent: AgentSetup | None = None  # an agent task's tools; None: a single-turn task

    @property
    def spec(self) -> TaskSpec:
        return self.task.spec

    @property
    def base_dir(self) -> Path:
        return self.students.base

    def base_student(self) -> tuple:
        """(model, tokenizer) of the base student, loaded on first use."""
        return self.students.load(None)

    def judge_teacher(self) -> CachedTeacher:
        return self.judge or self.teacher


def base_identity(spec_model: str, directory: Path) -> str:
    return digest([spec_model, (directory / "config.json").read_text()])


def json_answers(metric: MetricConfig) -> JsonAnswers | None:
    """Where the task's metric is json its answers are JSON (of the metric's schema, if it gives one):
    a teacher that can ask for that shape does."""
    return JsonAnswers(metric.json_schema) if metric.name == "json" else None


def prepare(task: LoadedTask, run_dir: Path, say: Callable[[str], None] = say_progress) -> RunState:
    """Resolve the student, build the teachers, open the run directory."""
    spec = task.spec
    device = pick_device(spec.train.device)
    base_dir = model_dir(spec.student.model, task.directory)
    base = ModelRef(None, base_identity(spec.student.model, base_dir))
    students = StudentLoader(base_dir, device)
    teacher = cached_teacher(spec.teacher, task.directory, (lambda: students.load(None), base.identity),
                             json_answers(spec.metric))
    judge = cached_teacher(spec.judge.teacher, task.directory) if spec.judge.teacher else None
    agent = agent_setup(task) if spec.tools else None
    run = Run(run_dir, say)
    if is_main_process():
        run.lock()
    return RunState(task=task, run=run, device=device, base=base, students=students, teacher=teacher,
                    budget=Budget(spec.budget.requests, spec.budget.tokens), say=say, judge=judge, agent=agent)
