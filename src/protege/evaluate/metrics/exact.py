"""Exact match after normalization: whitespace, surrounding quotes, a trailing period; optionally
case, punctuation and articles (the SQuAD normalization)."""

from __future__ import annotations

import re
import unicodedata

from ...config import MetricConfig
from . import clip, register

ARTICLES = re.compile(r"\b(?:a|an|the)\b", re.IGNORECASE)


def strip_punctuation(text: str) -> str:
    # Unicode categories P*, so that « », ¿ and the like go too, not only ASCII punctuation
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))


def normalize(text: str, ignore_case: bool = True, ignore_punctuation: bool = False,
              ignore_articles: bool = False) -> str:
    text = " ".join(str(text).split())
    text = text.rstrip(".").strip("\"'` ").rstrip(".")
    if ignore_punctuation:
        text = strip_punctuation(text)
    if ignore_articles:
        text = ARTICLES.sub(" ", text)
    text = " ".join(text.split())
    return text.lower() if ignore_case else text


@register("exact")
def exact_match(prediction: str, reference: str, cfg: MetricConfig, tests: str = "") -> tuple[float, dict]:
    options = {"ignore_case": cfg.ignore_case, "ignore_punctuation": cfg.ignore_punctuation,
               "ignore_articles": cfg.ignore_articles}
    p, r = normalize(prediction, **options), normalize(reference, **options)
    return float(p == r), {"normalized_prediction": clip(p), "normalized_reference": clip(r)}
