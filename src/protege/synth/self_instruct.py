"""Seed expansion (Self-Instruct, Wang et al. 2023): new inputs from a task generator, or written by
the teacher from k random seeds per request and cleaned and checked (written.py); then labeled by the
teacher, or by several teachers of which enough must agree (Ensemble-Instruct, ensemble.py)."""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field

from ..config import Strict, TeacherOptions
from ..registry import SYNTH
from ..teachers import TeacherRequest, load_callable
from ..records import record_input
from .written import WrittenInputs, context_check, count_drops


class SelfInstructStep(Strict):
    name: Literal["self-instruct"] = Field("self-instruct", description="Seed expansion (Self-Instruct): the "
                                           "teacher writes new inputs from k random examples, then answers them.")
    n: int = Field(50, ge=0, description="New inputs asked for.")
    seeds_per_prompt: int = Field(3, gt=0, description="k examples (seeds, unlabeled inputs and the inputs of "
                                  "the data so far) shown per request, drawn at random.")
    ensemble: list[TeacherOptions] = Field(default_factory=list, description="Ensemble-Instruct: more teachers "
                                          "that answer every new input beside the task's teacher; an input is "
                                          "kept only when min_agree answers agree. Empty: no ensemble.")
    min_agree: int = Field(2, ge=1, description="Answers (the task teacher's included) that must agree for an "
                           "input to be kept; the answer kept is the one most others agree with.")
    agreement: Literal["metric", "rouge-l"] = Field(
        "metric", description="When two answers agree: metric: each scores at least threshold against the "
        "other by the task's metric; rouge-l: their ROUGE-L F1 is at least threshold.")
    threshold: float = Field(0.7, gt=0, le=1, description="Agreement threshold (see agreement).")


def inputs_from_generator(spec: str, task_dir, n: int, seed: int) -> list[str]:
    return [str(x) for x in load_callable(spec, task_dir)(n, seed)]


def inputs_from_teacher(teacher, instruction: str, pool: list[str], n: int, k: int, seed: int,
                        check: WrittenInputs) -> list[str]:
    """n requests, each showing the teacher k inputs drawn from pool; the replies cleaned, and those that
    are no new input dropped by `check` (which counts them)."""
    if not pool or n <= 0:
        return []
    rng = random.Random(seed)
    requests = [TeacherRequest("write_input", instruction, examples=tuple(rng.sample(pool, min(k, len(pool)))),
                               sample=i, temperature=1.0) for i in range(n)]
    kept = [check.keep(reply, request) for request, reply in zip(requests, teacher.complete(requests))]
    return [text for text in kept if text is not None]


@SYNTH.register(SelfInstructStep)
def run(records: list[dict], step: SelfInstructStep, ctx) -> list[dict]:
    """The self-instruct step: step.n new inputs written from k random inputs of the data so far,
    answered by the task's teacher or, with step.ensemble, kept only where the teachers agree."""
    from .ensemble import agreement, ensemble_label
    from .label import label_inputs
    from .registry import is_task_answer
    if step.ensemble and step.min_agree > len(step.ensemble) + 1:
        raise ValueError(f"self-instruct: min_agree {step.min_agree} but only {len(step.ensemble) + 1} teachers")
    pool = list(dict.fromkeys(record_input(r) for r in records if is_task_answer(r)))
    teachers = [ctx.teacher] + [ctx.other_teacher(cfg) for cfg in step.ensemble]
    n = min(step.n, ctx.left() // (1 + len(teachers))) if pool else 0  # nothing to show: nothing asked
    check = context_check(ctx, known=pool)
    new = inputs_from_teacher(ctx.teacher, ctx.instruction, pool, n, step.seeds_per_prompt, ctx.step_seed, check)
    count_drops(ctx, check)
    if not step.ensemble:
        labeled, unanswered = label_inputs(ctx.teacher, ctx.instruction, new, step.name, ctx.round)
        ctx.drop("unanswered", unanswered)
        return records + labeled
    ctx.extra_requests += len(new) * len(step.ensemble)
    agree = agreement(step.agreement, step.threshold, ctx.metric)
    labeled, disagreed = ensemble_label(teachers, ctx.instruction, new, agree, step.min_agree, step.name, ctx.round)
    ctx.drop("teachers disagree", disagreed)
    return records + labeled
