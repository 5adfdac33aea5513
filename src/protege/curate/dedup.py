"""Exact-duplicate removal on the normalized input; the first occurrence wins."""

from __future__ import annotations

from ..evaluate.metrics.exact import normalize
from ..synth.records import record_input


def dedup(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(kept, removed), each removed record annotated with why."""
    seen: dict[str, str] = {}
    kept, removed = [], []
    for record in records:
        key = normalize(record_input(record))
        if key in seen:
            removed.append({"id": record["id"], "reason": "duplicate", "of": seen[key]})
        else:
            seen[key] = record["id"]
            kept.append(record)
    return kept, removed
