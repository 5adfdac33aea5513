"""Refusal-aware data (R-Tuning, Zhang et al. 2024): the base student samples k answers to each input
of the data so far; where less than certain_share of them are right (against the record's answer,
or the step's verifier), the student does not know the answer, and the record is replaced:

- style refuse: the target is the refusal text ("I am not sure I know the answer to this.");
- style unsure: the paper's padding, the answer followed by "Are you sure you accurately answered the
  question based on your internal knowledge? I am unsure." (and "I am sure." on the inputs the student
  knows, which the paper pads too).

Only tasks that list the refusal step get it: it trades answers for honesty."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..registry import SYNTH
from ..records import record_input, sft_record
from .registry import StudentSampledStep


class RefusalStep(StudentSampledStep):
    name: Literal["refusal"] = Field("refusal", description="R-Tuning: inputs the base student cannot answer get "
                                     "an uncertainty target in place of their answer.")
    certain_share: float = Field(0.5, gt=0, le=1, description="Share of the samples that must be right for "
                                 "the student to know the answer.")
    style: Literal["refuse", "unsure"] = Field(
        "refuse", description="refuse: the target is the refusal text; unsure: the paper's padding, the answer "
        "then \"Are you sure you accurately answered the question based on your internal knowledge? I am "
        "unsure.\" (\"I am sure.\" on the inputs it knows).")
    refusal: str = Field("I am not sure I know the answer to this.", description="The target of style refuse.")

R_TUNING_QUESTION = "Are you sure you accurately answered the question based on your internal knowledge?"


def share_right(text: str, samples: list[str], reference: str, is_right) -> float:
    return sum(1 for s in samples if s and is_right(text, s, reference)) / len(samples) if samples else 0.0


def target(style: str, answer: str, knows: bool, refusal: str) -> str | None:
    """The new answer of an input, or None when the record stays as it is."""
    if style == "refuse":
        return None if knows else refusal
    return f"{answer}\n\n{R_TUNING_QUESTION} I am {'sure' if knows else 'unsure'}."


@SYNTH.register(RefusalStep)
def run(records: list[dict], step: RefusalStep, ctx) -> list[dict]:
    from .registry import is_task_answer, student_answers, task_items, verifier
    items = task_items(records, step.items, ctx.step_seed)
    samples = student_answers(ctx, step.name, items, step.samples, step.temperature)
    is_right = verifier(step.verifier, ctx)
    new = {}
    for (text, reference), answers in zip(items, samples):
        knows = share_right(text, answers, reference, is_right) >= step.certain_share
        answer = target(step.style, reference, knows, step.refusal)
        if answer is not None:
            new[text] = sft_record(ctx.instruction, text, answer, step.name, ctx.round, task_answer=False,
                                   knows=knows)
    # the records of a replaced input give way to one new record, where the first of them was
    kept, placed = [], set()
    for record in records:
        text = record_input(record)
        if text not in new or not is_task_answer(record):
            kept.append(record)
        elif text not in placed:
            placed.add(text)
            kept.append(new[text])
    return kept
