"""ROUGE-L F1 against the reference, computed by Google's rouge-score package."""

from __future__ import annotations

import functools

from rouge_score import rouge_scorer

from ...config import MetricConfig
from . import register

# rouge-score fills an LCS table of len(prediction) x len(reference) tokens in pure Python: a 1 MB
# prediction would take minutes and gigabytes. Beyond this many times the reference's length a
# prediction's precision (and so its F1) is already near 0, so the rest is cut and the cut reported.
MAX_LENGTH_RATIO = 4
MIN_KEPT_CHARACTERS = 2000


@functools.cache
def scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


@register("rouge-l")
def rouge_l(prediction: str, reference: str, cfg: MetricConfig, tests: str = "") -> tuple[float, dict]:
    kept = max(MAX_LENGTH_RATIO * len(reference), MIN_KEPT_CHARACTERS)
    result = scorer().score(reference, prediction[:kept])["rougeL"]
    details = {"precision": result.precision, "recall": result.recall, "f1": result.fmeasure}
    if len(prediction) > kept:
        details["truncated_to_characters"] = kept
    return float(result.fmeasure), details
