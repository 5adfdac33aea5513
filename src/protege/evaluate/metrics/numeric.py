"""Numeric answer match: the last number in the prediction against the last in the reference."""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field

from ...config import MetricConfig
from ...registry import METRIC

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


class NumericMetric(MetricConfig):
    name: Literal["numeric"] = Field("numeric", description="The last number of the answer against the last "
                                     "number of the reference.")
    tolerance: float = Field(1e-6, ge=0, description="Absolute tolerance.")
    relative_tolerance: float = Field(0.0, ge=0, description="Relative tolerance (either one passes).")


def last_number(text: str) -> float | None:
    found = NUMBER.findall(str(text))
    if not found:
        return None
    try:
        value = float(found[-1].replace(",", ""))
    except ValueError:
        return None
    # a run of a thousand digits overflows to inf: that is no answer, and JSON cannot hold it
    return value if math.isfinite(value) else None


@METRIC.register(NumericMetric)
def numeric_match(prediction: str, reference: str, cfg: NumericMetric, tests: str = "") -> tuple[float, dict]:
    p, r = last_number(prediction), last_number(reference)
    ok = p is not None and r is not None and math.isclose(p, r, abs_tol=cfg.tolerance,
                                                          rel_tol=cfg.relative_tolerance)
    return float(ok), {"predicted_number": p, "reference_number": r}
