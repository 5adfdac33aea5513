"""JSON field match: the first JSON object in the prediction against the reference object, field by
field (numbers by value, strings normalized as the exact metric does)."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field, field_validator

from ...registry import METRIC
from ...records import normalize
from .exact import TextNormalization

DECODER = json.JSONDecoder()
# a huge prediction full of "{" would otherwise cost a failed parse per brace
MAX_ATTEMPTS = 1000


class JsonMetric(TextNormalization):
    name: Literal["json"] = Field("json", description="Field match of JSON objects: the first object in the "
                                  "answer against the reference's, numbers by value, strings normalized.")
    fields: list[str] = Field(default_factory=list, description="The fields compared (empty: every field of "
                              "the reference); the item scores the share of fields that match.")
    all_fields: bool = Field(False, description="Score 1 only when every field matches (else the share).")
    json_schema: dict | None = Field(None, description="The JSON schema the answers follow (an object's): an "
                                     "openai teacher asks for answers held to it (response_format json_schema, "
                                     "strict; OpenAI's strict mode wants every property required and "
                                     "additionalProperties false); empty: any JSON object (json_object). See "
                                     "teacher.structured_outputs.")

    @field_validator("json_schema")
    @classmethod
    def _schema_of_an_object(cls, value: dict | None) -> dict | None:
        # the metric scores the first JSON object of an answer: a schema of anything else cannot match
        if value is not None and value.get("type") != "object":
            raise ValueError("must be the JSON schema of an object (type: object)")
        return value


def first_object(text: str) -> dict | None:
    """The first JSON object in text, wherever it sits (```json fences, prose around it)."""
    start = text.find("{")
    for _ in range(MAX_ATTEMPTS):
        if start < 0:
            return None
        try:
            value, _end = DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def same_value(a, b, cfg: JsonMetric) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):  # True == 1 in Python, not in JSON
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, str) and isinstance(b, str):
        return normalize(a, cfg.ignore_case, cfg.ignore_punctuation, cfg.ignore_articles) == \
            normalize(b, cfg.ignore_case, cfg.ignore_punctuation, cfg.ignore_articles)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y, cfg) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k], cfg) for k in a)
    return a is None and b is None


def field_matches(predicted: dict, expected: dict, fields: list[str], cfg: JsonMetric) -> dict[str, bool]:
    return {f: f in predicted and f in expected and same_value(predicted[f], expected[f], cfg) for f in fields}


@METRIC.register(JsonMetric)
def json_match(prediction: str, reference: str, cfg: JsonMetric, tests: str = "") -> tuple[float, dict]:
    expected = first_object(reference)
    if expected is None:
        return 0.0, {"error": "the reference holds no JSON object"}
    predicted = first_object(prediction)
    if predicted is None:
        return 0.0, {"error": "the prediction holds no JSON object"}
    fields = cfg.fields or list(expected)
    if not fields:
        return float(predicted == {}), {"fields": {}}
    matches = field_matches(predicted, expected, fields, cfg)
    share = sum(matches.values()) / len(matches)
    value = float(share == 1.0) if cfg.all_fields else share
    return value, {"fields": matches}
