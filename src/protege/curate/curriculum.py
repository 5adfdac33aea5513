"""Curriculum: the examples ordered easy to hard, as a teacher orders lessons (and as curricula for
medical QA order questions). Difficulty is the base student's perplexity of the answer, its IFD, or
(needing no model) the length of input and answer. The order reaches the student only when training
reads the data in order (a sequential sampler), not shuffled. Removes nothing; each record's
difficulty goes into meta.difficulty."""

from __future__ import annotations

from ..config import CurriculumStep
from ..synth.records import record_answer, record_input
from .context import CurateContext, with_meta
from .student_loss import ifd, perplexity, student_losses


def difficulties(records: list[dict], by: str, ctx: CurateContext) -> list[float]:
    if by == "length":
        return [float(len(record_input(r)) + len(record_answer(r))) for r in records]
    losses = student_losses(records, ctx, f"curriculum by {by}")
    return [perplexity(q) if by == "perplexity" else ifd(q, alone) for q, alone in losses]


def easy_to_hard(records: list[dict], scores: list[float]) -> list[dict]:
    """Stable: equally hard records keep their order."""
    order = sorted(range(len(records)), key=lambda i: scores[i])
    return [with_meta(records[i], difficulty=round(scores[i], 4)) for i in order]


def run(records: list[dict], cfg: CurriculumStep, ctx: CurateContext) -> tuple[list[dict], list[dict]]:
    return easy_to_hard(records, difficulties(records, cfg.by, ctx)), []
