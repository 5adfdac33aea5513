"""Numeric answer match: the last number in the prediction against the last in the reference."""

from __future__ import annotations

import math
import re

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> float | None:
    found = NUMBER.findall(str(text))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_match(prediction: str, reference: str, tolerance: float = 1e-6) -> tuple[float, dict]:
    p, r = last_number(prediction), last_number(reference)
    ok = p is not None and r is not None and math.isclose(p, r, abs_tol=tolerance, rel_tol=0.0)
    return float(ok), {"predicted_number": p, "reference_number": r}
