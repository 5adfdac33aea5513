"""The SFT record (docs/architecture.md), {id, messages, meta{source, round}}, and the prompt the student sees:
what every stage reads and writes, so it sits beside config and runs."""

from __future__ import annotations

import random

from .runs import digest


def task_chat(instruction: str, text: str) -> list[dict]:
    """The prompt the student sees, in training and in evaluation alike."""
    chat = [{"role": "system", "content": instruction}] if instruction else []
    return chat + [{"role": "user", "content": text}]


def sft_record(instruction: str, text: str, answer: str, source: str, round_: int, **meta) -> dict:
    messages = task_chat(instruction, text) + [{"role": "assistant", "content": answer}]
    return {"id": digest([source, round_, text, answer]), "messages": messages,
            "meta": {"source": source, "round": round_, **meta}}


def record_input(record: dict) -> str:
    return next(m["content"] for m in record["messages"] if m["role"] == "user")


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
