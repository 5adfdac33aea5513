"""Curation: the steps of the task's `curate:` list, run in order. Each step is a file here with
`run(records, step_config, context) -> (kept, removed)`; every removed row says why (`reason`, plus
the numbers behind it) and gets the name of the step that removed it, for the report."""

from __future__ import annotations

from importlib import import_module

from ..config import CurateConfig
from .context import CurateContext

STEPS = ("decontaminate", "dedup", "diversity", "quality", "perplexity", "ifd", "curriculum", "mixture")


def step_function(name: str):
    # imported on use: steps that score with the student or embed pull in torch and models
    if name not in STEPS:
        raise ValueError(f"unknown curate step {name!r}; known: {', '.join(STEPS)}")
    return import_module(f".{name}", __name__).run


def curate(records: list[dict], cfg: CurateConfig, ctx: CurateContext) -> tuple[list[dict], list[dict]]:
    removed: list[dict] = []
    for step in cfg.root:
        records, gone = step_function(step.name)(records, step, ctx)
        removed += [{**row, "step": step.name} for row in gone]
        ctx.say(f"curate {step.name}: {len(gone)} removed, {len(records)} kept")
    return records, removed


__all__ = ["CurateContext", "curate", "STEPS"]
