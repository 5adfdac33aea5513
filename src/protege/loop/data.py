"""Data stages: round 0's synthesis (seeds, teacher labels, expansion, the synthesis methods), the
curation of each round's data (with the dev set held out in round 0), failure mining (LLM2LLM: the
student on its own training data) and the teacher's new examples like the failures."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import CurateConfig, Example, MetricConfig, SynthConfig
from ..runs import read_jsonl, write_json, write_jsonl
from ..records import is_task_answer, record_answer, record_input, sample_task_records, sft_record
from .results import Curated
from .scoring import evaluate
from .stage import StageInputs, teacher_stage
from .state import ModelRef, RunState

if TYPE_CHECKING:
    from ..synth.registry import AgentSynth


@dataclass(frozen=True)
class Round0Inputs(StageInputs):
    teacher: str
    instruction: str
    seeds: list[Example]
    inputs: list[str]
    synth: SynthConfig
    budget: int
    seed: int
    # read by the synthesis methods only: None without methods, so adding none keeps the stage
    student: str | None = None
    metric: MetricConfig | None = None
    test: list[str] | None = None
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class AgentRound0Inputs(Round0Inputs):
    tools: str = ""  # the identity of the tools: their settings and the code they run


@dataclass(frozen=True)
class Round0Data:
    data: Path  # the chat records
    pairs: Path | None  # preference pairs a synthesis method made (round 0's dpo learns from them too)


def synthesize_round0(state: RunState) -> Round0Data:
    """Seeds as they are, the teacher's answers to the unlabeled inputs, expanded inputs, then the
    synthesis methods of synth.methods in order (their preference pairs go to pairs.jsonl, what each
    made, dropped and asked to methods.json)."""
    spec, task = state.spec, state.task
    with_methods = {"student": state.base.identity, "metric": spec.metric,
                    "max_new_tokens": spec.eval.max_new_tokens} if spec.synth.methods else {}
    # the teacher's new inputs are checked against the test inputs: they are read only where it writes some
    with_test = {"test": [t.input for t in task.test]} if spec.synth.methods or teacher_writes(spec.synth) else {}
    inputs = Round0Inputs(state.teacher.backend.identity(), spec.instruction, task.seeds, task.inputs, spec.synth,
                          spec.budget.requests, spec.train.seed, **with_methods, **with_test)
    if state.agent:
        inputs = AgentRound0Inputs(**vars(inputs), tools=state.agent.identity)
    folder = teacher_stage(state, "synth-r0", inputs, lambda out: write_round0(out, state, inputs),
                           count_requests=True)
    pairs = folder / "pairs.jsonl"
    return Round0Data(folder / "data.jsonl", pairs if pairs.is_file() else None)


def teacher_writes(synth: SynthConfig) -> bool:
    """Whether round 0's expansion asks the teacher to write inputs (not the task's generator)."""
    return bool(synth.expand) and not synth.generator


def write_round0(out: Path, state: RunState, inputs: Round0Inputs) -> int:
    """Writes data.jsonl (and the methods' files, and written.json where the teacher wrote inputs);
    returns the requests made to other teachers."""
    from ..synth.written import load_validator
    validator = load_validator(inputs.synth.input_validator, state.task.directory)  # before anything is asked
    start, cost = state.teacher.stats.requests, answer_cost(state)
    records = seed_records(state, inputs.seeds)
    left = max(0, inputs.budget - (state.teacher.stats.requests - start))  # the seeds are used whatever they cost
    labeled = inputs.inputs[:labeled_inputs(state, inputs, left)]
    records += label(state, labeled, "teacher")
    records += expanded(out, state, inputs, left - len(labeled) * cost, validator)
    extra = 0
    if inputs.synth.methods:
        records, extra = run_synth_methods(out, state, inputs, records,
                                           inputs.budget - (state.teacher.stats.requests - start), validator)
    write_jsonl(out / "data.jsonl", records)
    return extra


def expansion_cost(state: RunState, synth: SynthConfig) -> int:
    """Requests the expansion asks for: each new input written by the teacher (unless the task's
    generator writes it), then answered."""
    return synth.expand * (answer_cost(state) + teacher_writes(synth))


def labeled_inputs(state: RunState, inputs: Round0Inputs, left: int) -> int:
    """How many of the unlabeled inputs the teacher answers: all the budget affords, less the share
    synth.expand_share keeps for the expansion where labeling and expanding do not both fit."""
    synth, cost = inputs.synth, answer_cost(state)
    wanted = len(inputs.inputs) * cost if synth.label_inputs else 0
    expanding = expansion_cost(state, synth)
    if not wanted or wanted + expanding <= left:
        return wanted // cost
    count = min(wanted, left - min(expanding, int(left * synth.expand_share))) // cost
    state.say(budget_split(left, len(inputs.inputs), count, left - count * cost, synth))
    return count


def budget_split(left: int, given: int, labeled: int, kept: int, synth: SynthConfig) -> str:
    """The one line that says how a budget too small for both is split between labeling and expansion."""
    share = f"synth.expand_share {synth.expand_share:g}"
    expansion = ("no expansion asked (synth.expand 0)" if not synth.expand else
                 f"expansion of {synth.expand} inputs gets nothing ({share}: raise it to keep some)" if not kept else
                 f"{kept} kept for the expansion of {synth.expand} inputs ({share})")
    return f"synth budget: {left} teacher requests: labeling {labeled} of {given} inputs, {expansion}"


def answer_cost(state: RunState) -> int:
    """Teacher requests one labeled input may take: an answer is one, an agent's episode one a turn,
    up to max_turns. Inputs are taken only as far as the request budget affords that much."""
    return state.spec.tools.max_turns if state.agent else 1


def seed_records(state: RunState, seeds: list[Example]) -> list[dict]:
    """The seeds as training records (a conversation seed with its earlier turns). On an agent task a
    seed's reference trajectory is trained on as it is; the teacher acts on the seeds without one,
    its episodes judged against their answers."""
    instruction = state.spec.instruction
    if not state.agent:
        return [sft_record(instruction, s.input, s.output, "seed", 0, s.context()) for s in seeds]
    from ..synth.trajectories import reference_record
    given = [reference_record(instruction, state.agent.environment.schemas, s) for s in seeds if s.messages]
    return given + trajectories(state, [s for s in seeds if not s.messages], "seed", 0)


def label(state: RunState, texts: list[str], source: str, round_: int = 0) -> list[dict]:
    """The teacher's answers to new inputs; on an agent task, its episodes on new requests."""
    from ..synth.label import label_inputs
    if state.agent:
        return trajectories(state, [Example(input=text) for text in texts], source, round_)
    return label_inputs(state.teacher, state.spec.instruction, texts, source, round_)[0]


def trajectories(state: RunState, requests: list[Example], source: str, round_: int) -> list[dict]:
    from ..synth.trajectories import teacher_trajectories
    agent, spec = state.agent, state.spec
    state.say(f"{source}: the teacher acts on {len(requests)} requests")
    return teacher_trajectories(state.teacher, agent.environment, spec.instruction, requests, spec.tools.max_turns,
                                source, round_, spec.metric, agent.verifier)


def expanded(out: Path, state: RunState, inputs: Round0Inputs, budget: int, validator) -> list[dict]:
    """New inputs from the task's generator, or written by the teacher from k random seeds and checked
    (what was dropped and why: written.json); labeled."""
    from ..synth.self_instruct import inputs_from_generator, inputs_from_teacher
    from ..synth.written import WrittenInputs
    synth = inputs.synth
    cost = answer_cost(state)
    if synth.generator:
        new = inputs_from_generator(synth.generator, state.task.directory, synth.expand, inputs.seed)[:budget // cost]
        return label(state, new, "expand")
    pool = [s.input for s in inputs.seeds] + inputs.inputs
    check = WrittenInputs(never=inputs.test or [], known=pool, validator=validator)
    new = inputs_from_teacher(state.teacher, inputs.instruction, pool, min(synth.expand, budget // (1 + cost)),
                              synth.seeds_per_prompt, inputs.seed, check)
    if synth.expand:
        state.say(check.line("expand"))
        write_json(out / "written.json", check.summary())
    return label(state, new, "expand")


def run_synth_methods(out: Path, state: RunState, inputs: Round0Inputs, records: list[dict],
                      budget: int, validator=None) -> tuple[list[dict], int]:
    from ..synth.registry import SynthContext, run_methods
    methods = SynthContext(state.teacher, inputs.instruction, budget, metric=inputs.metric,
                           task_dir=state.task.directory, seed=inputs.seed, exclude=inputs.test,
                           student=state.base_student, student_id=inputs.student, device=state.device,
                           max_new_tokens=inputs.max_new_tokens, say=state.say, agent=agent_synth(state),
                           input_validator=validator)
    records = run_methods(records, inputs.synth.methods, methods)
    write_jsonl(out / "pairs.jsonl", methods.pairs)
    write_json(out / "methods.json", {"steps": methods.notes, "extra_requests": methods.extra_requests})
    return records, methods.extra_requests


def agent_synth(state: RunState) -> AgentSynth | None:
    """What an agent method acts with (None on a single-turn task): its episodes are judged as the
    teacher's are, by the verifier or the metric against a seed's answer."""
    from ..synth.registry import AgentSynth
    from ..synth.trajectories import success_judge
    if not state.agent:
        return None
    judge = success_judge(state.task.seeds, state.spec.metric, state.agent.verifier)
    return AgentSynth(state.agent.environment, judge, state.spec.tools.max_turns)


@dataclass(frozen=True)
class CurateInputs(StageInputs):
    data: list[Path]
    test: list[str]
    curate: CurateConfig
    dev_size: int
    seed: int
    dev: Path | None  # round 0 holds the dev set out; later rounds keep round 0's
    instruction: str
    max_length: int
    # scoring steps read the base student, the judge and the teacher: a change of any must re-curate
    student: str
    judge: str
    teacher: str


def curate_round(state: RunState, round_: int, data_files: list[Path], dev_from: Path | None) -> Curated:
    """Run the curation steps over all data so far; in round 0 also hold out the dev set. A step that
    asks the judge (quality) or the teacher (mixture) is recorded and charged like a synthesis stage."""
    spec = state.spec
    judge = state.judge_teacher()
    inputs = CurateInputs(data_files, [t.input for t in state.task.test], spec.curate, spec.eval.dev_size,
                          spec.train.seed, dev_from, spec.instruction, spec.train.max_length, state.base.identity,
                          judge.backend.identity(), state.teacher.backend.identity())
    folder = teacher_stage(state, f"curate-r{round_}", inputs, lambda out: write_curated(out, state, round_, inputs),
                           judge, count_requests=True)
    return Curated(folder / "train.jsonl", folder / "dev.jsonl", folder / "removed.jsonl")


def write_curated(out: Path, state: RunState, round_: int, inputs: CurateInputs) -> None:
    from ..curate import CurateContext, curate
    records = [r for p in inputs.data for r in read_jsonl(p)]
    dev = read_jsonl(inputs.dev) if inputs.dev else []
    kept, removed = curate(records, inputs.curate, CurateContext(
        test_inputs=inputs.test + [record_input(d) for d in dev], instruction=inputs.instruction, seed=inputs.seed,
        round=round_, device=state.device, student=state.base_student, judge=state.judge_teacher,
        teacher=state.teacher, max_length=inputs.max_length, say=state.say))
    if inputs.dev is None:
        dev, kept = hold_out_dev(kept, inputs.dev_size, inputs.seed)
    write_jsonl(out / "train.jsonl", kept)
    write_jsonl(out / "dev.jsonl", dev)
    write_jsonl(out / "removed.jsonl", removed)


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


def mine_failures(state: RunState, round_: int, student: ModelRef, train_file: Path) -> list[str]:
    """LLM2LLM: test the student on (a sample of) its own training data; the misses seed new data."""
    spec = state.spec
    sample = sample_task_records(read_jsonl(train_file), spec.synth.mine_size, spec.train.seed + round_)
    misses = evaluate(state, f"mine-r{round_}", student, as_examples(sample)).failed_inputs()
    return misses[:spec.synth.max_failures]


@dataclass(frozen=True)
class FailureSynthInputs(StageInputs):
    teacher: str
    failures: list[str]
    per: int
    instruction: str
    round: int
    never: list[str]  # the test inputs: no new input may copy one
    validator: str  # synth.input_validator: what says a new input is one of the task's


@dataclass(frozen=True)
class AgentFailureSynthInputs(FailureSynthInputs):
    tools: str


def synthesize_failures(state: RunState, round_: int, failures: list[str]) -> Path:
    """The teacher writes new inputs like each failure the budget affords, and answers them."""
    spec = state.spec
    per = spec.synth.per_failure
    affordable = state.budget.left // max(1, per * (1 + answer_cost(state)))  # a new input: written, then answered
    inputs = FailureSynthInputs(state.teacher.backend.identity(), failures[:affordable], per, spec.instruction,
                                round_, [t.input for t in state.task.test], spec.synth.input_validator)
    if state.agent:
        inputs = AgentFailureSynthInputs(**vars(inputs), tools=state.agent.identity)

    def build(out: Path) -> None:
        from ..synth.llm2llm import inputs_like_failures
        from ..synth.written import WrittenInputs, load_validator
        check = WrittenInputs(never=inputs.never, known=inputs.failures,
                              validator=load_validator(inputs.validator, state.task.directory))
        written = inputs_like_failures(state.teacher, inputs.instruction, inputs.failures, inputs.per, inputs.round,
                                       check)
        state.say(check.line(f"failure round {round_}"))
        write_json(out / "written.json", check.summary())
        write_jsonl(out / "data.jsonl", label(state, [p for p, _ in written], f"failure-round-{round_}", round_))

    return teacher_stage(state, f"synth-r{round_}", inputs, build, count_requests=True) / "data.jsonl"


def given_records(state: RunState, path: Path) -> Path:
    """`protege train --data FILE`: protege's JSONL as it is; a ShareGPT file, or any JSON array of
    chats (LLaMA-Factory's data files), converted on read into records in the run directory."""
    from ..config import ConfigError, read_chat_file
    from ..conversations import chat_layout
    if not path.is_file():
        raise ConfigError(f"{path}:1: field 'data': file not found")
    layout = chat_layout(path)
    if layout == "messages":  # protege's own records: read through to check them, trained on as they are
        read_chat_file(path, "data", "given")
    if layout not in ("array", "conversations"):
        return path
    converted = state.run.root / f"given-{path.stem}.jsonl"
    write_jsonl(converted, read_chat_file(path, "data", "given"))
    return converted
