"""What curation steps may need besides the records: the test inputs, a judge, the base student, an
embedder. Everything costly is reached through a callable, so a step list that needs none of it
loads nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .embeddings import Embedder, minilm_embedder


@dataclass
class CurateContext:
    test_inputs: list[str] = field(default_factory=list)  # test and dev inputs: never trained on
    instruction: str = ""
    seed: int = 0
    round: int = 0
    device: str = "cpu"
    student: Callable[[], tuple] | None = None  # () -> (model, tokenizer) of the base student
    judge: Callable[[], Any] | None = None  # () -> the teacher that grades answers (quality)
    teacher: Any = None  # the task's teacher (mixture answer_by: teacher)
    embed: Embedder | None = None  # texts -> unit rows; None: the offline MiniLM model
    max_length: int = 512  # tokens per example when the student scores it, as in training
    say: Callable[[str], None] = lambda line: None
    losses: dict = field(default_factory=dict)  # record id -> (loss with question, loss without)

    def embedder(self) -> Embedder:
        if self.embed is None:
            self.embed = minilm_embedder(self.device)
        return self.embed

    def need(self, what: str, step: str):
        value = getattr(self, what)
        if value is None:
            raise ValueError(f"curate step '{step}' needs the {what}, which this run did not provide")
        return value


def is_seed(record: dict) -> bool:
    """The user's own labeled examples: scoring steps never drop them (they are the ground truth)."""
    return record.get("meta", {}).get("source") == "seed"


def apply_verdicts(records: list[dict], removals: dict[str, dict]) -> tuple[list[dict], list[dict]]:
    """(kept, removed) in the records' order; `removals` maps the id of each record to drop to the
    fields that say why (reason first)."""
    kept = [r for r in records if r["id"] not in removals]
    removed = [{"id": r["id"], **removals[r["id"]]} for r in records if r["id"] in removals]
    return kept, removed


def with_meta(record: dict, **fields) -> dict:
    """A copy of the record with fields added to its meta (the caller's records stay as they were)."""
    return {**record, "meta": {**record.get("meta", {}), **fields}}
