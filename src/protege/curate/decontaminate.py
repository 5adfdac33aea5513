"""Decontamination: nothing close to a test or dev input is trained on.

Three checks, cheapest first: the normalized input is a test input; a share of the input's word
n-grams occurs in the test inputs (the n-gram overlap of GPT-3 and Llama 2 decontamination, as a share
so that a template the task repeats does not flag everything); and, when a threshold is set, the input's
embedding is within that cosine similarity of a test input's (paraphrases)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from ..config import Strict
from ..records import normalize
from ..records import record_input
from ..registry import CURATE
from .embeddings import Embedder, nearest


class DecontaminateStep(Strict):
    name: Literal["decontaminate"] = Field("decontaminate", description="Drop examples that repeat a test or "
                                           "dev input: exactly, by word n-grams, or (when set) by embedding.")
    ngram: int = Field(8, gt=0, description="Words per n-gram compared with the test and dev inputs.")
    ngram_overlap: float = Field(0.9, gt=0, le=1, description="Drop an example when this share of its n-grams "
                                 "occurs in the test or dev inputs: the same text with a word or two changed. "
                                 "Lower values flag inputs that merely share the task's template; inputs "
                                 "shorter than ngram words are matched exactly only.")
    embedding_threshold: float | None = Field(None, gt=0, le=1, description="Also drop an example whose input "
                                              "embedding has at least this cosine similarity with a test or dev "
                                              "input (0.85 suits free text). Empty: off; templated inputs (dates, "
                                              "sums) are all close to each other.")

EXACT_REASON = "in the held-out test or dev set"
NGRAM_REASON = "shares n-grams with the test or dev set"
EMBEDDING_REASON = "paraphrase of a test or dev input (embedding)"


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def ngram_overlap(text: str, banned: set[tuple[str, ...]], n: int) -> float:
    """Share of the text's word n-grams found in the banned set; 0 for a text shorter than n words."""
    grams = ngrams(text, n)
    return len(grams & banned) / len(grams) if grams else 0.0


def decontaminate(records: list[dict], test_inputs: list[str], cfg: DecontaminateStep = DecontaminateStep(),
                  embed: Embedder | None = None) -> tuple[list[dict], list[dict]]:
    """(kept, removed); `embed` is needed only when cfg.embedding_threshold is set."""
    exact = {normalize(t) for t in test_inputs}
    banned = set().union(*(ngrams(t, cfg.ngram) for t in test_inputs))
    kept, removed = [], []
    for record in records:
        text = record_input(record)
        overlap = ngram_overlap(text, banned, cfg.ngram)
        if normalize(text) in exact:
            removed.append({"id": record["id"], "reason": EXACT_REASON})
        elif overlap >= cfg.ngram_overlap:
            removed.append({"id": record["id"], "reason": NGRAM_REASON, "overlap": round(overlap, 4)})
        else:
            kept.append(record)
    if cfg.embedding_threshold is not None and kept and test_inputs:
        kept, close = _paraphrases(kept, test_inputs, cfg.embedding_threshold, embed)
        removed += close
    return kept, removed


def _paraphrases(records: list[dict], test_inputs: list[str], threshold: float,
                 embed: Embedder) -> tuple[list[dict], list[dict]]:
    similarity, match = nearest(embed([record_input(r) for r in records]), embed(test_inputs))
    kept, removed = [], []
    for record, sim, j in zip(records, similarity, match):
        if sim >= threshold:
            removed.append({"id": record["id"], "reason": EMBEDDING_REASON, "similarity": round(float(sim), 4),
                            "test_input": test_inputs[j]})
        else:
            kept.append(record)
    return kept, removed


@CURATE.register(DecontaminateStep)
def run(records: list[dict], cfg: DecontaminateStep, ctx) -> tuple[list[dict], list[dict]]:
    embed = ctx.embedder() if cfg.embedding_threshold is not None else None
    return decontaminate(records, ctx.test_inputs, cfg, embed)
