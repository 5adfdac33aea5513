"""Decontamination: nothing whose normalized input appears in the test set is trained on."""

from __future__ import annotations

from ..evaluate.metrics.exact import normalize
from ..synth.records import record_input


def decontaminate(records: list[dict], test_inputs: list[str]) -> tuple[list[dict], list[dict]]:
    banned = {normalize(t) for t in test_inputs}
    kept, removed = [], []
    for record in records:
        if normalize(record_input(record)) in banned:
            removed.append({"id": record["id"], "reason": "in the held-out test or dev set"})
        else:
            kept.append(record)
    return kept, removed
