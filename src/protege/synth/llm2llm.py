"""Failure-driven augmentation (LLM2LLM, Lee et al. 2024): for each item the student got wrong, the
teacher writes new inputs like it; the teacher then answers them. The new inputs are cleaned and
checked (written.py): one that repeats a test input, the failure it imitates, or another new input is
dropped, as the teacher may copy what it is shown, and a test item must never become training data.
Between rounds the loop mines the trained student's failures (loop/data.py, mine_failures); the llm2llm
step does the same in round 0 with the base student on the data so far."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..registry import SYNTH
from ..teachers import TeacherRequest
from .registry import StudentSampledStep
from .written import WrittenInputs, context_check, count_drops


class LLM2LLMStep(StudentSampledStep):
    name: Literal["llm2llm"] = Field("llm2llm", description="LLM2LLM in round 0: the teacher writes new inputs "
                                     "like the ones the base student gets wrong, then answers them.")
    samples: int = Field(1, ge=1, description="Answers sampled per input; an input is a failure when any is wrong.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature (0: one greedy answer).")
    per_failure: int = Field(2, ge=1, description="New inputs the teacher writes per failure.")


def inputs_like_failures(teacher, instruction: str, failures: list[str], per_failure: int, round_: int,
                         check: WrittenInputs) -> list[tuple[str, str]]:
    """(new input, the failure it imitates) pairs: the replies cleaned, and those `check` finds no new
    input dropped (a copy of the failure, of a test input, of an earlier new input among them)."""
    requests = [TeacherRequest("write_input", instruction, examples=(failed,), sample=round_ * 1000 + j,
                               temperature=1.0)
                for failed in failures for j in range(per_failure)]
    kept = [(check.keep(reply, request), request.examples[0])
            for request, reply in zip(requests, teacher.complete(requests))]
    return [(text, failed) for text, failed in kept if text is not None]


@SYNTH.register(LLM2LLMStep)
def run(records: list[dict], step: LLM2LLMStep, ctx) -> list[dict]:
    """The llm2llm step: the base student answers records of the data so far; the teacher writes
    step.per_failure new inputs like each one it got wrong, and answers them."""
    from .label import label_inputs
    from .registry import student_answers, task_items, verifier
    from ..records import record_input
    items = task_items(records, step.items, ctx.step_seed)
    is_right = verifier(step.verifier, ctx)
    samples = student_answers(ctx, step.name, items, step.samples, step.temperature)
    failures = [text for (text, reference), answers in zip(items, samples)
                if any(not is_right(text, answer, reference) for answer in answers)]
    failures = failures[:ctx.left() // (2 * step.per_failure)]
    check = context_check(ctx, known=[*failures, *(record_input(r) for r in records)])
    pairs = inputs_like_failures(ctx.teacher, ctx.instruction, failures, step.per_failure, ctx.round, check)
    count_drops(ctx, check)
    labeled, unanswered = label_inputs(ctx.teacher, ctx.instruction, [text for text, _ in pairs], step.name,
                                       ctx.round)
    ctx.drop("unanswered", unanswered)
    return records + labeled
