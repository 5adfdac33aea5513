"""Regex match: the prediction passes when the pattern is found in it (re.search).

The pattern is cfg.pattern with {reference} replaced by the escaped reference, or the reference
itself when cfg.pattern is empty. An invalid pattern is a mistake in the task, not in the prediction,
so it raises ValueError naming the pattern instead of quietly scoring every answer 0.
"""

from __future__ import annotations

import functools
import re

from ...config import MetricConfig
from . import clip, register


def item_pattern(template: str, reference: str) -> str:
    # str.replace, not str.format: regex braces such as \d{3} must stay as written
    return template.replace("{reference}", re.escape(reference)) if template else reference


@functools.lru_cache(maxsize=1024)
def compiled(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"metric regex: invalid pattern {pattern!r}: {exc}") from None


@register("regex")
def regex_match(prediction: str, reference: str, cfg: MetricConfig, tests: str = "") -> tuple[float, dict]:
    pattern = item_pattern(cfg.pattern, reference)
    found = compiled(pattern).search(prediction)
    return float(found is not None), {"pattern": clip(pattern), "match": clip(found.group(0)) if found else None}
