"""Exact match after normalization: case, surrounding whitespace and quotes, a trailing period."""

from __future__ import annotations


def normalize(text: str) -> str:
    text = " ".join(str(text).split())
    return text.rstrip(".").strip("\"'` ").rstrip(".").lower()


def exact_match(prediction: str, reference: str) -> tuple[float, dict]:
    p, r = normalize(prediction), normalize(reference)
    return float(p == r), {"normalized_prediction": p, "normalized_reference": r}
