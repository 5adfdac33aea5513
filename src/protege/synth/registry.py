"""Synthesis methods by name: the steps of the task's `synth.methods` list, run in order in round 0
after labeling and expansion. Each method is a file here that declares its options model and
registers `run(records, step, ctx) -> records` with `@SYNTH.register(Options)` (protege.registry):
it gets the data so far and returns it with its own records added (refusal puts its records in place
of the ones they replace). Every record a step makes carries meta.source = the step's name; records
whose answer is no answer to the task (a critique, a reflection, a refusal) also carry
meta.task_answer = False. Preference pairs are no chat records: they go to ctx.pairs.

The context holds what the methods share: the task's teacher and the request budget they all draw
from, the base student (loaded on first use), the test inputs no method may add, and the notes
that say what each step made and dropped (the stage's methods.json).

A method works on single-turn tasks unless its options say otherwise: AgentStep's
`works_on = "agent"` marks one that acts in an agent task's environment (ctx.agent: the environment,
the success judge, the turn limit), and the task spec refuses a method on the other kind of task.
Agent methods make episode records (synth/trajectories.episode_record)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Literal, Sequence

from pydantic import Field

from ..config import MetricConfig, Strict, TeacherConfig
from ..records import normalize
from ..registry import METRIC, SYNTH
from ..teachers import TeacherRequest
from ..records import is_task_answer, record_answer, record_input  # noqa: F401 (is_task_answer: re-exported)

if TYPE_CHECKING:
    from ..agents.environment import Environment
    from ..agents.episodes import Episode

WorksOn = Literal["single-turn", "agent"]  # what config.works_on reads of a method's options


class AgentStep(Strict):
    """Options of a method that acts in an agent task's environment (it reads ctx.agent)."""

    works_on: ClassVar[WorksOn] = "agent"


@dataclass(frozen=True)
class AgentSynth:
    """What an agent method needs of the task: the environment every episode gets a fresh copy of, whether
    an episode succeeded (None: nothing can tell; it sees the episode while its environment is open),
    and the turns an episode may take."""

    environment: Environment
    judge: Callable[[Episode], bool | None]
    max_turns: int

    @property
    def schemas(self) -> list[dict]:
        return self.environment.schemas


class StudentSampledStep(Strict):
    """Options every method that samples the base student on the data so far shares."""

    items: int = Field(100, ge=0, description="Records of the data so far (those whose answer is a task answer) "
                       "drawn at random to work on.")
    samples: int = Field(4, ge=1, description="Answers sampled per input.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of those answers.")
    verifier: str = Field("", description="module:attr(input, answer) -> bool that says an answer is right; "
                          "empty: the task's metric against the record's answer scores 1.")


@dataclass
class SynthContext:
    teacher: Any  # the task's teacher (a CachedTeacher): every method's requests count against budget
    instruction: str
    budget: int  # teacher requests all the steps together may make
    metric: MetricConfig = field(default_factory=lambda: METRIC.make("exact"))
    task_dir: Path | None = None
    seed: int = 0
    round: int = 0
    exclude: list[str] = field(default_factory=list)  # test inputs: no method adds one as new data
    student: Callable[[], tuple] | None = None  # () -> (model, tokenizer) of the base student
    student_id: str = ""  # what identifies the base student (a self teacher in an ensemble needs it)
    device: str = "cpu"
    max_new_tokens: int = 32  # longest student answer sampled (the task's eval.max_new_tokens)
    say: Callable[[str], None] = lambda line: None
    pairs: list[dict] = field(default_factory=list)  # preference rows the steps made (pairs.jsonl)
    notes: list[dict] = field(default_factory=list)  # one per step run: what it made, dropped, asked
    extra_requests: int = 0  # requests to teachers other than the task's (an ensemble's), charged too
    step_seed: int = 0  # the seed of the step running: two steps of one kind ask different things
    agent: AgentSynth | None = None  # an agent task's environment and judge; None: a single-turn task
    input_validator: Callable[[str], bool] | None = None  # the task's synth.input_validator, loaded

    def __post_init__(self) -> None:
        self._start = self.teacher.stats.requests

    def used(self) -> int:
        return self.teacher.stats.requests - self._start + self.extra_requests

    def left(self) -> int:
        return max(0, self.budget - self.used())

    def drop(self, reason: str, count: int = 1) -> None:
        """Count outputs the running step threw away, by reason (methods.json)."""
        if count:
            dropped = self.notes[-1]["dropped"]
            dropped[reason] = dropped.get(reason, 0) + count

    def need_student(self, step: str) -> tuple:
        if self.student is None:
            raise ValueError(f"synthesis method '{step}' samples the student, which this run did not provide")
        return self.student()

    def need_agent(self, step: str) -> AgentSynth:
        if self.agent is None:
            raise ValueError(f"synthesis method '{step}' acts in an agent task's environment, which this run "
                             "did not provide")
        return self.agent

    def other_teacher(self, cfg: TeacherConfig):
        """A teacher besides the task's (an ensemble member), behind the same SQLite cache."""
        from ..teachers import cached_teacher
        return cached_teacher(cfg, self.task_dir or Path("."), (self.student, self.student_id))


def run_methods(records: list[dict], steps: Iterable, ctx: SynthContext) -> list[dict]:
    """Run each step on the data so far; a record a step adds must carry its name as meta.source."""
    for index, step in enumerate(steps):
        before, used = {r["id"] for r in records}, ctx.used()
        ctx.step_seed = ctx.seed + 7919 * (index + 1)
        ctx.notes.append({"method": step.name, "dropped": {}})
        pairs = len(ctx.pairs)
        records = SYNTH.get(step.name)(records, step, ctx)
        new = [r for r in records if r["id"] not in before]
        strays = {r["meta"].get("source") for r in new} - {step.name}
        if strays:
            raise ValueError(f"synthesis method '{step.name}' made records of source {sorted(map(str, strays))}")
        ctx.notes[-1].update(records=len(new), pairs=len(ctx.pairs) - pairs, requests=ctx.used() - used)
        ctx.say(f"synth {step.name}: {len(new)} records, {len(ctx.pairs) - pairs} pairs, "
                f"{ctx.used() - used} teacher requests, dropped {ctx.notes[-1]['dropped'] or 'none'}")
    return records


# ---- what several methods share ------------------------------------------------------------

def task_items(records: list[dict], count: int, seed: int) -> list[tuple[str, str]]:
    """(input, answer) of up to `count` records whose answer answers the task (0: all), one per
    input, drawn at random."""
    seen, items = set(), []
    for record in records:
        text = record_input(record)
        if is_task_answer(record) and text not in seen:
            seen.add(text)
            items.append((text, record_answer(record)))
    if count and count < len(items):
        items = random.Random(seed).sample(items, count)
    return items


def novel(texts: Iterable[str | None], ctx: SynthContext, known: Iterable[str] = ()) -> list[str]:
    """The texts that are new data: not empty, not a test input, not one of `known` (what the
    teacher was shown, the data so far), not a repeat; each one dropped is counted by reason."""
    banned = {normalize(t) for t in ctx.exclude}
    seen = {normalize(t) for t in known}
    kept = []
    for text in texts:
        key = normalize(text) if isinstance(text, str) else ""
        reason = "empty" if not key else "test input" if key in banned else "repeat" if key in seen else None
        if reason:
            ctx.drop(reason)
            continue
        seen.add(key)
        kept.append(text.strip())
    return kept


def verifier(spec: str, ctx: SynthContext) -> Callable[[str, str, str], bool]:
    """is_right(input, answer, reference): the step's module:attr(input, answer) when given, else the
    task's metric scoring the answer 1 against the reference."""
    if spec:
        from ..teachers import load_callable
        check = load_callable(spec, ctx.task_dir)
        return lambda text, answer, reference: bool(check(text, answer))
    from ..evaluate.metrics import score
    return lambda text, answer, reference: score(ctx.metric, answer, reference)[0] >= 1


def teacher_answers(teacher, instruction: str, items: Sequence[tuple[str, str | None]], k: int,
                    temperature: float) -> list[list[str]]:
    """k sampled answers of the teacher per item (empty replies left out)."""
    requests = [TeacherRequest("answer", instruction, input=text, sample=j, temperature=temperature)
                for text, _ in items for j in range(k)]
    replies = teacher.complete(requests)
    return [[r for r in replies[i * k:(i + 1) * k] if r] for i in range(len(items))]


def student_answers(ctx: SynthContext, step: str, items: list[tuple[str, str]], k: int,
                    temperature: float) -> list[list[str]]:
    """k answers of the base student per item, sampled on the prompt it sees in training."""
    from ..models.generate import sample_answers
    if not items or k == 0:
        return [[] for _ in items]
    model, tokenizer = ctx.need_student(step)
    return sample_answers(model, tokenizer, ctx.instruction, items, k, temperature, ctx.max_new_tokens, ctx.step_seed)
