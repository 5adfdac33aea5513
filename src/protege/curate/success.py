"""Success filtering of agent trajectories (AgentTuning, FireAct): an episode whose final answer the
task's metric or verifier found wrong, or that ran out of turns, is dropped, and removed.jsonl says
which way it failed. Episodes whose success nothing could tell (no reference, no verifier) stay,
unless unknown: drop says otherwise. Records that are not episodes pass untouched."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import Strict
from ..registry import CURATE
from .context import CurateContext, apply_verdicts


class SuccessStep(Strict):
    name: Literal["success"] = Field("success", description="Drop agent episodes that failed (wrong final "
                                     "answer, verifier said no, out of turns), saying why.")
    unknown: Literal["keep", "drop"] = Field("keep", description="Episodes whose success nothing can tell (no "
                                             "reference answer, no verifier): keep or drop them.")


def failure(record: dict, unknown: str) -> dict | None:
    """Why the episode is dropped; None when it stays."""
    meta = record.get("meta", {})
    if "success" not in meta or meta["success"] is True or (meta["success"] is None and unknown == "keep"):
        return None
    if meta["success"] is None:
        return {"reason": "success unknown"}
    why = "out of turns" if not meta.get("finished") else "wrong final answer"
    return {"reason": f"episode failed: {why}", "turns": meta.get("turns"), "tool_errors": meta.get("tool_errors")}


@CURATE.register(SuccessStep)
def run(records: list[dict], step: SuccessStep, ctx: CurateContext) -> tuple[list[dict], list[dict]]:
    verdicts = {r["id"]: failure(r, step.unknown) for r in records}
    return apply_verdicts(records, {key: why for key, why in verdicts.items() if why})
