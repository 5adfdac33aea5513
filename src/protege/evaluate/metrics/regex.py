"""Regex match: the prediction passes when the pattern is found in it (re.search).

The pattern is cfg.pattern with {reference} replaced by the escaped reference, or the reference
itself when cfg.pattern is empty. An invalid pattern is a mistake in the task, not in the prediction,
so it raises ValueError naming the pattern instead of quietly scoring every answer 0.
"""

from __future__ import annotations

import functools
import re
from typing import Literal

from pydantic import Field, field_validator

from ...config import MetricConfig
from ...registry import METRIC
from . import clip


class RegexMetric(MetricConfig):
    name: Literal["regex"] = Field("regex", description="The answer matches a pattern (re.search).")
    pattern: str = Field("", description="The pattern the answer must match; {reference} in it is replaced by "
                         "the escaped reference. Empty: the reference is the pattern.")

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        # a broken pattern must stop the run before training, not at the first evaluation
        try:
            re.compile(value.replace("{reference}", ""))
        except re.error as exc:
            raise ValueError(f"invalid pattern {value!r}: {exc}") from None
        return value


def item_pattern(template: str, reference: str) -> str:
    # str.replace, not str.format: regex braces such as \d{3} must stay as written
    return template.replace("{reference}", re.escape(reference)) if template else reference


@functools.lru_cache(maxsize=1024)
def compiled(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"metric regex: invalid pattern {pattern!r}: {exc}") from None


@METRIC.register(RegexMetric)
def regex_match(prediction: str, reference: str, cfg: RegexMetric, tests: str = "") -> tuple[float, dict]:
    pattern = item_pattern(cfg.pattern, reference)
    found = compiled(pattern).search(prediction)
    return float(found is not None), {"pattern": clip(pattern), "match": clip(found.group(0)) if found else None}
