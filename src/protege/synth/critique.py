"""Critique data (CFT, Wang et al. 2025): the teacher checks candidate solutions (the student's own
samples, the teacher's own sampled answers, the reference) against the reference when there is one,
and writes what is right or wrong ending with a verdict; the student then learns to write those
critiques. Training builds them each round for train.method cft (loop/training.py, critique_stage); the
critique step builds them in round 0 and adds them to the data (meta.task_answer false: a critique is
no answer to the task).

A reply whose last line is not a verdict is dropped and counted, never trained on."""

from __future__ import annotations

import re
from typing import Iterator, Literal, NamedTuple, Sequence

from pydantic import Field

from ..registry import SYNTH
from ..teachers import TeacherRequest
from ..records import sft_record
from .registry import StudentSampledStep


class CritiqueStep(StudentSampledStep):
    name: Literal["critique"] = Field("critique", description="Critique data (CFT): the teacher critiques "
                                      "candidate solutions, the student's and its own, ending with a verdict.")
    samples: int = Field(2, ge=0, description="Student samples per input critiqued.")
    teacher_samples: int = Field(1, ge=0, description="Teacher answers per input critiqued, sampled at "
                                 "temperature.")
    reference: bool = Field(True, description="Show the critic the record's answer as the reference.")

# What the student sees when it learns to critique (it is not shown the reference).
CRITIQUE_STUDENT_SYSTEM = (
    "Critique a solution to this task: {instruction}\n\n"
    "Check the solution step by step, say what is right and what is wrong, and end with a last line "
    "that is exactly \"Verdict: correct\" or \"Verdict: incorrect\"."
)
CRITIQUE_STUDENT_USER = "Problem:\n{input}\n\nSolution:\n{candidate}"

# "Verdict: correct", tolerating the markdown and the full stop a chat model tends to add.
_VERDICT = re.compile(r"[*_`#>\s]*verdict[*_`\s]*:[*_`\s]*(correct|incorrect)[*_`.!\s]*", re.IGNORECASE)


def parse_verdict(text: str | None) -> bool | None:
    """True for a last line "Verdict: correct", False for "Verdict: incorrect", None otherwise."""
    if not isinstance(text, str):
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    match = _VERDICT.fullmatch(lines[-1]) if lines else None
    return match.group(1).lower() == "correct" if match else None


def _canonical(reply: str, verdict: bool) -> str:
    """The reply with its last line written exactly as the student should learn to write it."""
    lines = reply.strip().splitlines()
    body = "\n".join(lines[:-1]).rstrip()
    line = f"Verdict: {'correct' if verdict else 'incorrect'}"
    return f"{body}\n{line}" if body else line


def _pairs(items: Sequence[tuple[str, str | None]],
           candidates: Sequence[Sequence[str]]) -> Iterator[tuple[int, str, str, str]]:
    """(item index, input, reference, candidate) for every distinct non-empty candidate of each item:
    the one order both critique_requests and critique_records follow."""
    if len(items) != len(candidates):
        raise ValueError(f"{len(items)} items but candidates for {len(candidates)}")
    for i, ((text, reference), options) in enumerate(zip(items, candidates)):
        seen: set[str] = set()
        for candidate in options:
            candidate = candidate.strip() if isinstance(candidate, str) else ""
            if candidate and candidate not in seen:
                seen.add(candidate)
                yield i, text, reference or "", candidate


def critique_requests(instruction: str, items: Sequence[tuple[str, str | None]],
                      candidates: Sequence[Sequence[str]]) -> list[TeacherRequest]:
    """One critique request per distinct non-empty candidate of each (input, reference) item."""
    return [TeacherRequest("critique", instruction, input=text, candidate=candidate, reference=reference)
            for _, text, reference, candidate in _pairs(items, candidates)]


class Critiques(NamedTuple):
    """records, malformed, unanswered = critique_records(...) (or by name)."""

    records: list[dict]
    malformed: int = 0  # replies that did not end with a verdict line: dropped
    unanswered: int = 0  # requests the teacher gave nothing for

    @property
    def dropped(self) -> int:
        return self.malformed + self.unanswered

    def verdicts(self) -> dict:
        correct = sum(1 for r in self.records if r["verdict"])
        return {"correct": correct, "incorrect": len(self.records) - correct}


def critique_record(instruction: str, text: str, candidate: str, critique: str, verdict: bool,
                    round_: int = 0, **meta) -> dict:
    """A chat record (records.sft_record's shape, source "critique") whose answer is the critique."""
    record = sft_record(CRITIQUE_STUDENT_SYSTEM.format(instruction=instruction),
                        CRITIQUE_STUDENT_USER.format(input=text, candidate=candidate),
                        critique, "critique", round_, **meta)
    record["verdict"] = verdict
    record["meta"]["task_answer"] = False
    return record


def critique_records(instruction: str, items: Sequence[tuple[str, str | None]],
                     candidates: Sequence[Sequence[str]], replies: Sequence[str | None],
                     round_: int = 0) -> Critiques:
    """Records from the replies to critique_requests(instruction, items, candidates), in order;
    a reply without a parseable verdict on its last line is dropped and counted."""
    pairs = list(_pairs(items, candidates))
    if len(replies) != len(pairs):
        raise ValueError(f"{len(replies)} replies for {len(pairs)} critique requests")
    records, malformed, unanswered = [], 0, 0
    for (i, text, _, candidate), reply in zip(pairs, replies):
        if not isinstance(reply, str) or not reply.strip():
            unanswered += 1
            continue
        verdict = parse_verdict(reply)
        if verdict is None:
            malformed += 1
            continue
        records.append(critique_record(instruction, text, candidate, _canonical(reply, verdict), verdict,
                                       round_, item=i))
    return Critiques(records, malformed, unanswered)


def critique_candidates(teacher, instruction: str, items: Sequence[tuple[str, str | None]],
                        candidates: Sequence[Sequence[str]], round_: int = 0) -> Critiques:
    """Ask the teacher for every critique and keep the ones with a verdict."""
    replies = teacher.complete(critique_requests(instruction, items, candidates))
    return critique_records(instruction, items, candidates, replies, round_)


@SYNTH.register(CritiqueStep)
def run(records: list[dict], step: CritiqueStep, ctx) -> list[dict]:
    """The critique step: the student's and the teacher's sampled answers to records of the data so
    far, critiqued by the teacher (with the record's answer as the reference when step.reference)."""
    from .registry import student_answers, task_items, teacher_answers
    per_item = 2 * step.teacher_samples + step.samples  # teacher answers, then one critique per candidate
    items = task_items(records, step.items, ctx.step_seed)[:ctx.left() // max(1, per_item)]
    ours = student_answers(ctx, step.name, items, step.samples, step.temperature)
    theirs = teacher_answers(ctx.teacher, ctx.instruction, items, step.teacher_samples, step.temperature)
    shown = items if step.reference else [(text, None) for text, _ in items]
    result = critique_candidates(ctx.teacher, ctx.instruction, shown, [a + b for a, b in zip(ours, theirs)],
                                 ctx.round)
    ctx.drop("no verdict", result.malformed)
    ctx.drop("unanswered", result.unanswered)
    return records + result.records
