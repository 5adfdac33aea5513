"""Decontamination: nothing close to a test or dev input is trained on.

Three checks, cheapest first: the normalized input is a test input; a share of the input's word
n-grams occurs in the test inputs (the n-gram overlap of GPT-3 and Llama 2 decontamination, as a share
so that a template the task repeats does not flag everything); and, when a threshold is set, the input's
embedding is within that cosine similarity of a test input's (paraphrases)."""

from __future__ import annotations

import re

from ..config import DecontaminateStep
from ..evaluate.metrics.exact import normalize
from ..synth.records import record_input
from .embeddings import Embedder, nearest

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


def run(records: list[dict], cfg: DecontaminateStep, ctx) -> tuple[list[dict], list[dict]]:
    embed = ctx.embedder() if cfg.embedding_threshold is not None else None
    return decontaminate(records, ctx.test_inputs, cfg, embed)
