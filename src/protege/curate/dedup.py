"""Exact and near-duplicate removal; the first occurrence wins.

Exact: the same normalized input. Near: MinHash LSH (datasketch) over character shingles of the
normalized input finds candidate pairs, and their exact Jaccard similarity confirms them, so the
similarity recorded for a removal is exact and nothing depends on a hash collision. By default a
near-duplicate must also give the same answer: "12 + 35" and "12 + 36" are nearly the same text and
both worth training on."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..config import Strict
from ..records import normalize
from ..records import record_answer, record_input
from ..registry import CURATE

if TYPE_CHECKING:  # imported where used: importing protege loads every step file
    from datasketch import MinHash


class DedupStep(Strict):
    name: Literal["dedup"] = Field("dedup", description="Drop exact and near-duplicate examples; the first wins.")
    near_threshold: float = Field(0.85, gt=0, le=1, description="Jaccard similarity of the inputs' character "
                                  "shingles (found with MinHash LSH, confirmed exactly) at or above which an "
                                  "example is a near-duplicate of an earlier one; 1: exact duplicates only.")
    shingle: int = Field(5, gt=0, description="Characters per shingle of the normalized input.")
    same_answer: bool = Field(True, description="A near-duplicate must also have the same answer: inputs that "
                              "differ in one number and have different answers both teach something.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations (more: fewer missed pairs, slower).")


def shingles(text: str, size: int) -> set[str]:
    """Overlapping character k-grams; a text shorter than k is one shingle."""
    if len(text) <= size:
        return {text}
    return {text[i:i + size] for i in range(len(text) - size + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def minhash(shingle_set: set[str], num_perm: int) -> MinHash:
    from datasketch import MinHash  # here: importing protege loads every step file
    sketch = MinHash(num_perm=num_perm, seed=1)
    sketch.update_batch([s.encode("utf-8") for s in sorted(shingle_set)])
    return sketch


def dedup(records: list[dict], cfg: DedupStep = DedupStep()) -> tuple[list[dict], list[dict]]:
    """(kept, removed), each removed record annotated with why and which kept record it repeats.
    A record marked meta.alternative (another verified answer to an input already there: rejection
    sampling, reflection) is a duplicate only when its answer repeats too."""
    exact: dict[str, str] = {}
    answers: dict[str, set[str]] = {}
    index = _NearIndex(cfg)
    kept, removed = [], []
    for record in records:
        key, answer = normalize(record_input(record)), normalize(reply_text(record))
        alternative = record.get("meta", {}).get("alternative", False)
        if key in exact and (not alternative or answer in answers[key]):
            removed.append({"id": record["id"], "reason": "duplicate", "of": exact[key]})
            continue
        match = None if alternative else index.match(record, key)
        if match:
            removed.append({"id": record["id"], "reason": "near-duplicate", "of": match[0],
                            "similarity": round(match[1], 4)})
            continue
        exact.setdefault(key, record["id"])
        answers.setdefault(key, set()).add(answer)
        index.add(record, key)
        kept.append(record)
    return kept, removed


def reply_text(record: dict) -> str:
    """What an alternative must not repeat: a record's answer, or an agent episode's every turn after the
    request (two episodes of one request that end in the same answer may still differ in their calls)."""
    if not record.get("tools"):
        return record_answer(record)
    last_user = max(i for i, m in enumerate(record["messages"]) if m["role"] == "user")
    return json.dumps([[m.get("content"), m.get("tool_calls")] for m in record["messages"][last_user + 1:]])


class _NearIndex:
    """The kept records' shingles in an LSH index; a query returns the most similar one over the
    threshold (and with the same answer when asked), or None."""

    def __init__(self, cfg: DedupStep):
        from datasketch import MinHashLSH
        self.cfg = cfg
        self.lsh = MinHashLSH(threshold=cfg.near_threshold, num_perm=cfg.num_perm) if cfg.near_threshold < 1 else None
        self.entries: dict[str, tuple[set[str], str]] = {}

    def match(self, record: dict, key: str) -> tuple[str, float] | None:
        if self.lsh is None:
            return None
        grams = shingles(key, self.cfg.shingle)
        answer = normalize(record_answer(record))
        scored = [(jaccard(grams, self.entries[c][0]), c) for c in self.lsh.query(minhash(grams, self.cfg.num_perm))
                  if not self.cfg.same_answer or self.entries[c][1] == answer]
        best = max(scored, default=None)
        return (best[1], best[0]) if best and best[0] >= self.cfg.near_threshold else None

    def add(self, record: dict, key: str) -> None:
        if self.lsh is None or record["id"] in self.entries:
            return
        grams = shingles(key, self.cfg.shingle)
        self.entries[record["id"]] = (grams, normalize(record_answer(record)))
        self.lsh.insert(record["id"], minhash(grams, self.cfg.num_perm))


@CURATE.register(DedupStep)
def run(records: list[dict], cfg: DedupStep, ctx) -> tuple[list[dict], list[dict]]:
    return dedup(records, cfg)
