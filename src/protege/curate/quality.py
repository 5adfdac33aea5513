"""Quality filter by a judge (as Magpie and OpenBezoar filter their synthetic data): the judge, the
task's teacher unless `judge.teacher` names another, grades each answer 1-10 against a rubric, and
answers under min_score go. An answer the judge gave no score stays (a judge's failure is no
evidence against the data); the score is written to meta.quality, which the diversity step then
prefers within a cluster. The user's seed examples are never judged."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import Strict
from ..records import record_answer, record_input
from ..registry import CURATE
from ..teachers import TeacherRequest
from .context import CurateContext, apply_verdicts, is_seed, with_meta


class QualityStep(Strict):
    name: Literal["quality"] = Field("quality", description="A judge scores each teacher answer 1-10; "
                                     "examples under min_score are dropped.")
    min_score: int = Field(7, ge=1, le=10, description="Lowest judge score kept.")
    rubric: str = Field("Is the answer correct, complete, and in the form the task asks for?",
                        description="What the judge weighs.")

REASON = "quality: judge score under the threshold"


def judge_scores(judge, instruction: str, records: list[dict], rubric: str) -> list[int | None]:
    requests = [TeacherRequest("judge-pointwise", instruction, input=record_input(r), candidate=record_answer(r),
                               rubric=rubric) for r in records]
    from ..evaluate.judge import parse_score  # scipy (its bootstrap): not when protege loads this file
    return [parse_score(reply) for reply in judge.complete(requests)]


@CURATE.register(QualityStep)
def run(records: list[dict], cfg: QualityStep, ctx: CurateContext) -> tuple[list[dict], list[dict]]:
    judged = [r for r in records if not is_seed(r)]
    scores = judge_scores(ctx.need("judge", cfg.name)(), ctx.instruction, judged, cfg.rubric) if judged else []
    by_id = {r["id"]: s for r, s in zip(judged, scores) if s is not None}
    records = [with_meta(r, quality=by_id[r["id"]]) if r["id"] in by_id else r for r in records]
    return apply_verdicts(records, {key: {"reason": REASON, "score": score} for key, score in by_id.items()
                                    if score < cfg.min_score})
