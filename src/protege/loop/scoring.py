"""Scoring stages: a model's task score on test or dev items, the teacher's score, the general-
ability probe and what a model lost against its base, the judge, and paired comparisons."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import EvalConfig, Example, JudgeConfig, MetricConfig
from ..runs import read_json, read_jsonl, write_json, write_jsonl
from .results import Candidate, Forgetting, Probe, Scored
from .stage import StageInputs, stage, teacher_stage
from .state import ModelRef, RunState


def write_scored(out: Path, records: list[dict], summary: dict) -> None:
    write_jsonl(out / "records.jsonl", records)
    write_json(out / "summary.json", summary)


@dataclass(frozen=True)
class EvalInputs(StageInputs):
    model: str
    items: list[Example]
    metric: MetricConfig
    eval: EvalConfig
    instruction: str


@dataclass(frozen=True)
class AgentEvalInputs(EvalInputs):
    tools: str  # the identity of the tools: their settings and the code they run


def eval_inputs(state: RunState, model: ModelRef, items: list[Example]) -> EvalInputs:
    spec = state.spec
    inputs = EvalInputs(model.identity, items, spec.metric, spec.eval, spec.instruction)
    return AgentEvalInputs(**vars(inputs), tools=state.agent.identity) if state.agent else inputs


def evaluate(state: RunState, name: str, model: ModelRef, items: list[Example]) -> Scored:
    """The base (model.path None) or a trained student answers `items`, scored by the task's metric;
    on an agent task it acts on each item in the task's environment."""
    inputs = eval_inputs(state, model, items)

    def build(out: Path) -> None:
        loaded = state.students.load(model.path)
        write_scored(out, *(student_episodes(state, loaded, inputs, name) if state.agent else
                            student_answers(loaded, inputs, name)))

    return Scored.read(stage(state, name, inputs, build))


def student_answers(loaded: tuple, inputs: EvalInputs, name: str) -> tuple[list, dict]:
    from ..evaluate.task_eval import evaluate_model
    return evaluate_model(*loaded, inputs.items, inputs.instruction, inputs.metric, inputs.eval, desc=name)


def student_episodes(state: RunState, loaded: tuple, inputs: EvalInputs, name: str) -> tuple[list, dict]:
    from ..agents.episodes import student_policy
    from ..evaluate.agent_eval import evaluate_episodes
    agent = state.agent
    policy = student_policy(*loaded, inputs.instruction, agent.environment.schemas, inputs.eval.max_new_tokens,
                            inputs.eval.batch_size)
    state.say(f"{name}: {len(inputs.items)} episodes")
    return evaluate_episodes(agent.environment, inputs.items, policy, state.spec.tools.max_turns, inputs.metric,
                             inputs.eval, agent.verifier)


@dataclass(frozen=True)
class TeacherEvalInputs(StageInputs):
    teacher: str
    test: list[Example]
    metric: MetricConfig
    eval: EvalConfig
    instruction: str


def evaluate_teacher(state: RunState) -> Scored:
    """The teacher answers the test set too (on an agent task: acts on it), so its score sits beside
    the student's. Its tokens are charged; its requests are reported, not charged to the synthesis
    budget."""
    spec = state.spec
    inputs = TeacherEvalInputs(state.teacher.backend.identity(), state.task.test, spec.metric, spec.eval,
                               spec.instruction)
    if state.agent:
        inputs = AgentTeacherEvalInputs(**vars(inputs), tools=state.agent.identity)

    def build(out: Path) -> None:
        write_scored(out, *(teacher_episodes(state, inputs) if state.agent else teacher_answers(state, inputs)))

    return Scored.read(teacher_stage(state, "eval-teacher", inputs, build))


@dataclass(frozen=True)
class AgentTeacherEvalInputs(TeacherEvalInputs):
    tools: str


def teacher_answers(state: RunState, inputs: TeacherEvalInputs) -> tuple[list, dict]:
    from ..evaluate.task_eval import score_predictions
    from ..teachers import TeacherRequest
    requests = [TeacherRequest("answer", inputs.instruction, input=t.input, context=conversation_context(t))
                for t in inputs.test]
    replies = state.teacher.complete(requests)
    return score_predictions(inputs.test, [r or "" for r in replies], inputs.metric, inputs.eval)


def conversation_context(item: Example) -> str:
    """The earlier turns of a conversation item, as a teacher request carries them ("" when none, so
    single-turn requests and their cache keys stay as they were)."""
    return json.dumps(item.context()) if item.messages else ""


def teacher_episodes(state: RunState, inputs: TeacherEvalInputs) -> tuple[list, dict]:
    from ..agents.episodes import teacher_policy
    from ..evaluate.agent_eval import evaluate_episodes
    agent = state.agent
    policy = teacher_policy(state.teacher, inputs.instruction, agent.environment.schemas)
    return evaluate_episodes(agent.environment, inputs.test, policy, state.spec.tools.max_turns, inputs.metric,
                             inputs.eval, agent.verifier)


@dataclass(frozen=True)
class ProbeInputs(StageInputs):
    model: str
    items: list[dict]
    perplexity: bool
    max_new_tokens: int
    text: Path | None  # the general text perplexity is measured on


def probe(state: RunState, name: str, model: ModelRef) -> Probe:
    """The general-ability probe and the perplexity of general text, for one model."""
    from ..evaluate import forgetting
    cfg = state.spec.forgetting
    items = forgetting.load_probe(cfg.categories, cfg.probe_items, state.spec.train.seed)
    inputs = ProbeInputs(model.identity, items, cfg.perplexity, cfg.max_new_tokens,
                         forgetting.GENERAL_TEXT if cfg.perplexity else None)

    def build(out: Path) -> None:
        loaded = state.students.load(model.path)
        records = forgetting.run_probe(*loaded, inputs.items, state.spec.eval.batch_size, inputs.max_new_tokens)
        perplexity = forgetting.general_perplexity(*loaded) if inputs.perplexity else None
        write_scored(out, records, {"probe_accuracy": sum(r["correct"] for r in records) / len(records),
                                    "perplexity": perplexity, "items": len(records)})

    return Probe.read(stage(state, name, inputs, build))


def forgetting_of(state: RunState, base: Probe, student: Probe) -> Forgetting:
    """What the student lost against its base: probe change with its interval, negative flips,
    perplexity ratio; and whether that is inside the task's limit."""
    from ..evaluate import forgetting
    spec = state.spec
    result = forgetting.compare(read_jsonl(base.records), read_jsonl(student.records), base.perplexity,
                                student.perplexity, spec.eval.confidence, spec.eval.bootstrap, spec.train.seed)
    return Forgetting(**result, records=student.records,
                      within_limit=forgetting.within_limit(result, spec.forgetting.limit))


def evaluate_candidate(state: RunState, tag: str, model: ModelRef, dev_items: list[Example],
                       base_probe: Probe | None) -> Candidate:
    """Test, dev and (when measured) forgetting of a model a run may keep: a round's student or a merge."""
    test = evaluate(state, f"eval-{tag}", model, state.task.test)
    dev = evaluate(state, f"dev-{tag}", model, dev_items) if dev_items else test
    lost = forgetting_of(state, base_probe, probe(state, f"probe-{tag}", model)) if base_probe else None
    return Candidate(model.path, test, dev, lost)


def versus(state: RunState, a: Scored, b: Scored) -> dict:
    """Paired bootstrap of two models' per-item test scores: is the difference real?"""
    from ..evaluate.bootstrap import paired_difference
    spec = state.spec
    return paired_difference(a.scores(), b.scores(), spec.eval.confidence, spec.eval.bootstrap, spec.train.seed)


@dataclass(frozen=True)
class JudgeInputs(StageInputs):
    judge: str
    cfg: dict  # the judge config without its teacher (which `judge` identifies)
    items: list[Example]
    answers: dict[str, list[str]]
    instruction: str
    interval: dict  # confidence, resamples and seed of the bootstrap intervals


def judge(state: RunState, answers: dict[str, Scored]) -> dict | None:
    """LLM-as-judge over the test set: pointwise scores for each model in `answers`, pairwise student
    against teacher in both orders; None when the task asks for no judge."""
    cfg = state.spec.judge
    if cfg.mode == "none":
        return None
    items = state.task.test[:cfg.items or len(state.task.test)]
    inputs = JudgeInputs(state.judge_teacher().backend.identity(), cfg.model_dump(exclude={"teacher"}), items,
                         {name: s.predictions()[:len(items)] for name, s in answers.items()},
                         state.spec.instruction, {"confidence": state.spec.eval.confidence,
                                                  "resamples": state.spec.eval.bootstrap,
                                                  "seed": state.spec.train.seed})
    folder = teacher_stage(state, "judge", inputs, lambda out: write_judged(out, state, cfg, inputs),
                           state.judge_teacher())
    return {**read_json(folder / "judge.json"), "folder": str(folder)}


def write_judged(out: Path, state: RunState, cfg: JudgeConfig, inputs: JudgeInputs) -> None:
    from ..evaluate import judge as judging
    teacher, result = state.judge_teacher(), {}
    if cfg.mode in ("pointwise", "both"):
        result["pointwise"] = {}
        for name, answers in inputs.answers.items():
            records, summary = judging.judge_pointwise(teacher, inputs.instruction, inputs.items, answers,
                                                       cfg.rubric, **inputs.interval)
            write_jsonl(out / f"pointwise-{name}.jsonl", records)
            result["pointwise"][name] = summary
    if cfg.mode in ("pairwise", "both"):
        records, summary = judging.judge_pairwise(teacher, inputs.instruction, inputs.items,
                                                  inputs.answers["student"], inputs.answers["teacher"], cfg.rubric,
                                                  ("student", "teacher"), **inputs.interval)
        write_jsonl(out / "pairwise.jsonl", records)
        result["pairwise"] = summary
    write_json(out / "judge.json", result)
