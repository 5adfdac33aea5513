"""Exact match after normalization: whitespace, surrounding quotes, a trailing period; optionally
case, punctuation and articles (the SQuAD normalization)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...config import MetricConfig
from ...records import normalize
from ...registry import METRIC
from . import clip

class TextNormalization(MetricConfig):
    """How text is normalized before two strings are compared (exact, and the json metric's strings)."""

    ignore_case: bool = Field(True, description="Compare case-insensitively.")
    ignore_punctuation: bool = Field(False, description="Drop punctuation before comparing.")
    ignore_articles: bool = Field(False, description="Drop the articles a, an, the (SQuAD style).")


class ExactMetric(TextNormalization):
    name: Literal["exact"] = Field("exact", description="Normalized string match: whitespace, surrounding "
                                   "quotes and a trailing period ignored, and case unless told otherwise.")


@METRIC.register(ExactMetric)
def exact_match(prediction: str, reference: str, cfg: ExactMetric, tests: str = "") -> tuple[float, dict]:
    options = {"ignore_case": cfg.ignore_case, "ignore_punctuation": cfg.ignore_punctuation,
               "ignore_articles": cfg.ignore_articles}
    p, r = normalize(prediction, **options), normalize(reference, **options)
    return float(p == r), {"normalized_prediction": clip(p), "normalized_reference": clip(r)}
