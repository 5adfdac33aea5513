"""Failure-driven augmentation (LLM2LLM): for each item the student got wrong, the teacher
writes new inputs like it; the teacher then answers them."""

from __future__ import annotations

from ..teachers import TeacherRequest


def inputs_like_failures(teacher, instruction: str, failures: list[str], per_failure: int,
                         round_: int) -> list[tuple[str, str]]:
    """(new input, the failure it imitates) pairs."""
    requests = [TeacherRequest("write_input", instruction, examples=(failed,), sample=round_ * 1000 + j,
                               temperature=1.0)
                for failed in failures for j in range(per_failure)]
    replies = teacher.complete(requests)
    return [(reply, req.examples[0]) for req, reply in zip(requests, replies) if reply]
