"""What every stage reads and writes, so it sits beside config and runs: the SFT record
(docs/architecture.md) {id, messages, meta{source, round}}, the prompt the student sees, the seeded
sampler of task records, and the text normalization that compares answers and finds repeats."""

from __future__ import annotations

import random
import re
import unicodedata

from .runs import digest


def task_chat(instruction: str, text: str, context: list[dict] = ()) -> list[dict]:
    """The prompt the student sees, in training and in evaluation alike; context: the turns of a
    conversation before the one answered."""
    chat = [{"role": "system", "content": instruction}] if instruction else []
    return chat + list(context) + [{"role": "user", "content": text}]


def sft_record(instruction: str, text: str, answer: str, source: str, round_: int, context: list[dict] = (),
               **meta) -> dict:
    messages = task_chat(instruction, text, context) + [{"role": "assistant", "content": answer}]
    key = [source, round_, text, answer] + ([list(context)] if context else [])
    return {"id": digest(key), "messages": messages,
            "meta": {"source": source, "round": round_, **meta}}


def record_input(record: dict) -> str:
    """The turn answered: the last user turn (the only one of a single-turn record)."""
    return next(m["content"] for m in reversed(record["messages"]) if m["role"] == "user")


def record_answer(record: dict) -> str:
    return record["messages"][-1]["content"]


def is_task_answer(record: dict) -> bool:
    """Does the record answer the task? Critiques, reflections and refusals (meta.task_answer false)
    and the mixture's general data do not: they never become dev items or failures to learn from."""
    meta = record.get("meta", {})
    return meta.get("task_answer", True) and meta.get("source") != "general"


def sample_task_records(records: list[dict], count: int, seed: int) -> list[dict]:
    """Up to `count` records whose answer answers the task, drawn with a seeded sampler: what the
    student is tested on to mine failures, and sampled on for dpo pairs and cft candidates."""
    answers = [r for r in records if is_task_answer(r)]
    return random.Random(seed).sample(answers, min(count, len(answers)))


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
