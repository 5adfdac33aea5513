"""ROUGE-L F1 against the reference, computed by Google's rouge-score package."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field

from ...config import MetricConfig
from ...registry import METRIC

# rouge-score fills an LCS table of len(prediction) x len(reference) tokens in pure Python: a 1 MB
# prediction would take minutes and gigabytes. Beyond this many times the reference's length a
# prediction's precision (and so its F1) is already near 0, so the rest is cut and the cut reported.
MAX_LENGTH_RATIO = 4
MIN_KEPT_CHARACTERS = 2000


class RougeMetric(MetricConfig):
    name: Literal["rouge-l"] = Field("rouge-l", description="ROUGE-L F1 against the reference.")


@functools.cache
def scorer():
    from rouge_score import rouge_scorer  # pulls in nltk: imported on first use, not when protege loads
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


@METRIC.register(RougeMetric)
def rouge_l(prediction: str, reference: str, cfg: RougeMetric, tests: str = "") -> tuple[float, dict]:
    kept = max(MAX_LENGTH_RATIO * len(reference), MIN_KEPT_CHARACTERS)
    result = scorer().score(reference, prediction[:kept])["rougeL"]
    details = {"precision": result.precision, "recall": result.recall, "f1": result.fmeasure}
    if len(prediction) > kept:
        details["truncated_to_characters"] = kept
    return float(result.fmeasure), details
