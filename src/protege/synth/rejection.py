"""Rejection sampling with a verifier (STaR, Zelikman et al. 2022; RFT, Yuan et al. 2023): k answers
sampled per input, the ones a verifier accepts kept as training targets, at most `cap` distinct ones
per input (RFT keeps several distinct reasoning paths; STaR one). The self teacher (teachers/
self_verify.py) is the case k samples, cap 1, student sampler, as the task's teacher; this step
also lets the task's teacher be the sampler, and works on the data so far with a reference: the
verifier is the step's module:attr(input, answer), or the task's metric against the record's answer.

The answers kept are other answers to inputs the data already holds (meta.alternative true)."""

from __future__ import annotations

from typing import Callable, Literal

from pydantic import Field

from ..registry import SYNTH
from ..records import sft_record
from .registry import StudentSampledStep


class RejectionStep(StudentSampledStep):
    name: Literal["rejection"] = Field("rejection", description="Rejection sampling (STaR, RFT): k sampled "
                                       "answers per input, the verified ones kept.")
    sampler: Literal["student", "teacher"] = Field("student", description="Who samples: the base student "
                                                   "(self-improvement) or the task's teacher.")
    cap: int = Field(1, ge=1, description="Distinct verified answers kept per input.")


def verified(text: str, samples: list[str | None], reference: str, is_right: Callable[[str, str, str], bool],
             cap: int) -> list[str]:
    """The first `cap` distinct non-empty samples the verifier accepts, in sampled order."""
    kept = []
    for sample in dict.fromkeys((s or "").strip() for s in samples):
        if len(kept) == cap:
            break
        if sample and is_right(text, sample, reference):
            kept.append(sample)
    return kept


@SYNTH.register(RejectionStep)
def run(records: list[dict], step: RejectionStep, ctx) -> list[dict]:
    from .registry import student_answers, task_items, teacher_answers, verifier
    items = task_items(records, step.items, ctx.step_seed)
    if step.sampler == "teacher":
        items = items[:ctx.left() // step.samples]
        samples = teacher_answers(ctx.teacher, ctx.instruction, items, step.samples, step.temperature)
    else:
        samples = student_answers(ctx, step.name, items, step.samples, step.temperature)
    is_right = verifier(step.verifier, ctx)
    made = []
    for (text, reference), answers in zip(items, samples):
        kept = verified(text, answers, reference, is_right, step.cap)
        ctx.drop("no verified answer", not kept)
        made += [sft_record(ctx.instruction, text, answer, step.name, ctx.round, sampler=step.sampler,
                            alternative=True) for answer in kept]
    return records + made
