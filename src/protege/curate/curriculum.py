"""Curriculum: the examples ordered easy to hard, as a teacher orders lessons (and as curricula for
medical QA order questions). Difficulty is the base student's perplexity of the answer, its IFD, or
(needing no model) the length of input and answer. The order reaches the student only when training
reads the data in order (a sequential sampler), not shuffled. Removes nothing; each record's
difficulty goes into meta.difficulty."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import Strict
from ..records import record_answer, record_input
from ..registry import CURATE
from .context import CurateContext, with_meta


class CurriculumStep(Strict):
    name: Literal["curriculum"] = Field("curriculum", description="Order the examples easy to hard; removes "
                                        "nothing.")
    by: Literal["perplexity", "ifd", "length"] = Field(
        "perplexity", description="Difficulty: the base student's perplexity of the answer, its IFD, or the "
        "length of input and answer in characters (no model needed).")


def difficulties(records: list[dict], by: str, ctx: CurateContext) -> list[float]:
    if by == "length":
        return [float(len(record_input(r)) + len(record_answer(r))) for r in records]
    from .student_loss import ifd, perplexity, student_losses  # torch: when the step runs, not on import
    losses = student_losses(records, ctx, f"curriculum by {by}")
    return [perplexity(q) if by == "perplexity" else ifd(q, alone) for q, alone in losses]


def easy_to_hard(records: list[dict], scores: list[float]) -> list[dict]:
    """Stable: equally hard records keep their order."""
    order = sorted(range(len(records)), key=lambda i: scores[i])
    return [with_meta(records[i], difficulty=round(scores[i], 4)) for i in order]


@CURATE.register(CurriculumStep)
def run(records: list[dict], cfg: CurriculumStep, ctx: CurateContext) -> tuple[list[dict], list[dict]]:
    return easy_to_hard(records, difficulties(records, cfg.by, ctx)), []
