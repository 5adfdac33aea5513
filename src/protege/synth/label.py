"""Teacher labeling: the teacher answers inputs; its answers become the student's targets."""

from __future__ import annotations

from ..teachers import TeacherRequest
from ..records import sft_record


def label_inputs(teacher, instruction: str, inputs: list[str], source: str, round_: int,
                 temperature: float = 0.0) -> tuple[list[dict], int]:
    """Records for every input the teacher answered; also the number it left unanswered."""
    requests = [TeacherRequest("answer", instruction, input=text, temperature=temperature) for text in inputs]
    replies = teacher.complete(requests)
    records = [sft_record(instruction, text, reply, source, round_)
               for text, reply in zip(inputs, replies) if reply]
    return records, len(inputs) - len(records)
