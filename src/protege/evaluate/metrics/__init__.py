"""Task metrics, selectable by name in the task YAML: one file per metric, which declares its options
model (a MetricConfig) and registers the metric with `@METRIC.register(Options)` (protege.registry).

Every metric is `fn(prediction, reference, cfg: MetricConfig, tests="") -> (score in [0, 1], details)`,
where details is a JSON-serializable dict. A bad prediction (empty, huge, not UTF-8, not JSON) scores
0 with a detail saying why; it never raises.
"""

from __future__ import annotations

import re
from typing import Callable

from ...config import MetricConfig
from ...registry import METRIC

Metric = Callable[[str, str, MetricConfig, str], tuple[float, dict]]

# Lone surrogates are what a decoder leaves for bytes that were not UTF-8; no UTF-8 file can hold them
SURROGATE = re.compile("[\ud800-\udfff]")


def as_metric(metric: MetricConfig | str) -> MetricConfig:
    """A metric's options; a bare name gets that metric's defaults."""
    return METRIC.make(metric) if isinstance(metric, str) else metric


def clean_text(text) -> str:
    """The text as a str that can be written as UTF-8 (None is empty)."""
    return SURROGATE.sub("\ufffd", "" if text is None else str(text))


def clip(text: str, limit: int = 1000) -> str:
    """Keeps details small when a prediction is huge; the record holds the whole prediction."""
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


def score(metric: MetricConfig | str, prediction: str, reference: str, tests: str = "") -> tuple[float, dict]:
    cfg = as_metric(metric)
    return METRIC.get(cfg.name)(clean_text(prediction), clean_text(reference), cfg, clean_text(tests))
