"""Perplexity filter (as POINTS does for its data): the base student's perplexity of each teacher
answer given its question; the least likely answers (garbled, off-format, off-task) go first. The
user's seed examples are never dropped."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from ..config import Strict
from ..registry import CURATE
from .context import CurateContext, apply_verdicts, is_seed


class PerplexityStep(Strict):
    name: Literal["perplexity"] = Field("perplexity", description="Drop the examples whose answer the base "
                                        "student finds least likely (POINTS: low-perplexity data trains better).")
    keep: float = Field(0.9, gt=0, le=1, description="Share of the examples kept, lowest perplexity first.")
    max_perplexity: float | None = Field(None, gt=1, description="Also drop every answer above this perplexity; "
                                         "empty: no cap.")

REASON = "perplexity: the base student finds the answer unlikely"


def kept_by_rank(scores: list[float], share: float, cap: float | None = None) -> list[bool]:
    """Which scores (lower is better) stay: the lowest `share` of them, rounded up, and none over
    `cap`. At a tie across the cut the earlier score stays."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    chosen = set(order[:math.ceil(share * len(scores))])
    return [i in chosen and (cap is None or s <= cap) for i, s in enumerate(scores)]


@CURATE.register(PerplexityStep)
def run(records: list[dict], cfg: PerplexityStep, ctx: CurateContext) -> tuple[list[dict], list[dict]]:
    from .student_loss import perplexity, student_losses  # torch: when the step runs, not on import
    scored = [r for r in records if not is_seed(r)]
    values = [perplexity(loss) for loss, _ in student_losses(scored, ctx, cfg.name)]
    stays = kept_by_rank(values, cfg.keep, cfg.max_perplexity)
    return apply_verdicts(records, {r["id"]: {"reason": REASON, "perplexity": round(v, 4)}
                                    for r, v, keep in zip(scored, values, stays) if not keep})
