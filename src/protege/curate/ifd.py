"""Instruction-Following Difficulty (Li et al., 2024, "From Quantity to Quality", Cherry LLM): the
base student's perplexity of the answer with its question over without it. IFD >= 1 means the
question does not help predict the answer: question and answer do not fit, and the example goes.
Of the rest, the highest IFD are kept: the examples whose question helps the student least, which it
has most to learn from. The user's seed examples are never dropped."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import Strict
from ..registry import CURATE
from .context import CurateContext, apply_verdicts, is_seed
from .perplexity import kept_by_rank


class IFDStep(Strict):
    name: Literal["ifd"] = Field("ifd", description="Instruction-Following Difficulty (Cherry LLM): perplexity "
                                 "of the answer with its question over without; keep the hardest useful ones.")
    max_ifd: float = Field(1.0, gt=0, description="Drop examples at or above this IFD: the question does not "
                           "help predict the answer, so question and answer do not fit.")
    keep: float = Field(1.0, gt=0, le=1, description="Then keep this share, highest IFD first (the paper: 0.05-0.1).")

MISFIT_REASON = "IFD: the question does not help predict the answer"
EASY_REASON = "IFD: among the easiest to follow"


def ifd_reasons(values: list[float], max_ifd: float, keep: float) -> list[str | None]:
    """Why each score's example goes (None: it stays): at or over max_ifd it does not fit; of the rest
    the `keep` share with the highest IFD stays."""
    fitting = [i for i, v in enumerate(values) if v < max_ifd]
    stays = kept_by_rank([-values[i] for i in fitting], keep)
    reasons: list[str | None] = [MISFIT_REASON] * len(values)
    for i, stay in zip(fitting, stays):
        reasons[i] = None if stay else EASY_REASON
    return reasons


@CURATE.register(IFDStep)
def run(records: list[dict], cfg: IFDStep, ctx: CurateContext) -> tuple[list[dict], list[dict]]:
    from .student_loss import ifd, student_losses  # torch: when the step runs, not on import
    scored = [r for r in records if not is_seed(r)]
    values = [ifd(with_q, alone) for with_q, alone in student_losses(scored, ctx, cfg.name)]
    reasons = ifd_reasons(values, cfg.max_ifd, cfg.keep)
    return apply_verdicts(records, {r["id"]: {"reason": why, "ifd": round(v, 4)}
                                    for r, v, why in zip(scored, values, reasons) if why})
