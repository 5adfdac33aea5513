"""Mistake and reflection data (LEMMA, Pan et al. 2025; learning from mistakes): for an input the base
student gets wrong, its wrong solution, the teacher's reflection on the mistake and the right
solution become one target, so the student learns to notice and repair a mistake within an answer.
It follows LEMMA's "fresh and restart" form (the whole wrong solution, then the reflection, then a
whole correct one). The right solution is the record's answer; the teacher is asked for a
reflection that begins with "Wait,", and a reply that is empty or does not is dropped."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from ..registry import SYNTH
from ..teachers import TeacherRequest
from ..records import sft_record
from .registry import StudentSampledStep


class ReflectionStep(StudentSampledStep):
    name: Literal["reflection"] = Field("reflection", description="Mistake and reflection (LEMMA): the "
                                        "student's wrong solution, the teacher's reflection on it, the right "
                                        "solution, as one answer.")

# "Wait," opening the reply, with the markdown and quotes a chat model may put around it
_OPENING = re.compile(r"^[\s*_`#>\"']*wait\b([,.:;!]?)[*_`\"']*", re.IGNORECASE)


def reflection_text(reply: str | None) -> str | None:
    """The reply opening with a plain "Wait" when it opens with one; None otherwise."""
    if not isinstance(reply, str):
        return None
    text, found = _OPENING.subn(lambda m: "Wait" + m.group(1), reply.strip(), count=1)
    return text if found else None


def reflected_answer(wrong: str, reflection: str, right: str) -> str:
    return f"{wrong.strip()}\n\n{reflection.strip()}\n\n{right.strip()}"


@SYNTH.register(ReflectionStep)
def run(records: list[dict], step: ReflectionStep, ctx) -> list[dict]:
    from .preference_pairs import first_wrong
    from .registry import student_answers, task_items, verifier
    items = task_items(records, step.items, ctx.step_seed)
    samples = student_answers(ctx, step.name, items, step.samples, step.temperature)
    is_right = verifier(step.verifier, ctx)
    mistakes = [(text, reference, wrong) for (text, reference), answers in zip(items, samples)
                if (wrong := first_wrong(text, answers, reference, is_right)) is not None]
    ctx.drop("no wrong answer", len(items) - len(mistakes))
    mistakes = mistakes[:ctx.left()]
    replies = ctx.teacher.complete([TeacherRequest("reflect", ctx.instruction, input=text, candidate=wrong,
                                                   reference=reference) for text, reference, wrong in mistakes])
    made = []
    for (text, reference, wrong), reply in zip(mistakes, replies):
        reflection = reflection_text(reply)
        if reflection is None:
            ctx.drop("unanswered" if not reply else "not a reflection")
            continue
        made.append(sft_record(ctx.instruction, text, reflected_answer(wrong, reflection, reference), step.name,
                               ctx.round, task_answer=False, alternative=True))
    return records + made
