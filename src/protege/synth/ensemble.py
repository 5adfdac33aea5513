"""Output ensembling (Ensemble-Instruct, Lee et al. 2023): several teachers answer the same input, and
the input is kept only when enough of their answers agree, with the answer the most others agree
with. The paper picks the output with the highest ROUGE-L consensus and drops the instance when the
outputs disagree; here "agree" is the task's metric or ROUGE-L, at a threshold."""

from __future__ import annotations

from typing import Callable, Sequence

from ..config import MetricConfig
from ..evaluate.metrics import as_metric, score
from ..teachers import TeacherRequest
from ..records import sft_record

Agree = Callable[[str, str], bool]


def agreement(kind: str, threshold: float, metric: MetricConfig) -> Agree:
    """Two answers agree when each scores at least threshold against the other (the task's metric,
    or ROUGE-L F1): some metrics read the reference differently from the prediction."""
    measure = metric if kind == "metric" else as_metric("rouge-l")

    def agree(a: str, b: str) -> bool:
        return min(score(measure, a, b)[0], score(measure, b, a)[0]) >= threshold
    return agree


def consensus(answers: Sequence[str | None], agree: Agree, min_agree: int) -> tuple[int, int] | None:
    """(index, support) of the answer that the most answers agree with (itself included; the earliest
    on a tie), or None when fewer than min_agree do. A missing answer agrees with nothing."""
    support = [0 if a is None else 1 + sum(1 for j, b in enumerate(answers) if j != i and b is not None
                                           and agree(a, b)) for i, a in enumerate(answers)]
    best = max(range(len(answers)), key=lambda i: (support[i], -i), default=None)
    return (best, support[best]) if best is not None and support[best] >= min_agree else None


def ensemble_label(teachers: Sequence, instruction: str, inputs: list[str], agree: Agree, min_agree: int,
                   source: str, round_: int = 0) -> tuple[list[dict], int]:
    """Records for the inputs whose answers agree (meta.agree: how many answers agree with the one
    kept, meta.by: the index of the teacher that wrote it), and the number of inputs dropped."""
    requests = [TeacherRequest("answer", instruction, input=text) for text in inputs]
    answers = [teacher.complete(requests) for teacher in teachers]
    records = []
    for i, text in enumerate(inputs):
        options = [a[i] for a in answers]
        agreed = consensus(options, agree, min_agree)
        if agreed is not None:
            best, support = agreed
            records.append(sft_record(instruction, text, options[best], source, round_, agree=support,
                                      teachers=len(teachers), by=best))
    return records, len(inputs) - len(records)
