"""Curation: the steps of the task's `curate:` list, run in order. Each step is a file here that
declares its options model and registers `run(records, step_config, context) -> (kept, removed)` with
`@CURATE.register(Options)` (protege.registry); every removed row says why (`reason`, plus the numbers
behind it) and gets the name of the step that removed it, for the report."""

from __future__ import annotations

from ..config import CurateConfig
from ..registry import CURATE
from .context import CurateContext


def curate(records: list[dict], cfg: CurateConfig, ctx: CurateContext) -> tuple[list[dict], list[dict]]:
    removed: list[dict] = []
    for step in cfg.root:
        records, gone = CURATE.get(step.name)(records, step, ctx)
        removed += [{**row, "step": step.name} for row in gone]
        ctx.say(f"curate {step.name}: {len(gone)} removed, {len(records)} kept")
    return records, removed


__all__ = ["CurateContext", "curate"]
