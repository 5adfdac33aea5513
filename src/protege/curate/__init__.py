"""Curation steps; each returns (kept, removed-with-reasons)."""

from __future__ import annotations

from ..config import CurateConfig
from .decontaminate import decontaminate
from .dedup import dedup


def curate(records: list[dict], test_inputs: list[str], cfg: CurateConfig) -> tuple[list[dict], list[dict]]:
    removed: list[dict] = []
    if cfg.decontaminate:
        records, gone = decontaminate(records, test_inputs)
        removed += gone
    if cfg.dedup:
        records, gone = dedup(records)
        removed += gone
    return records, removed
