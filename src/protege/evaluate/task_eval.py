"""Score predictions on a test set: one record per item plus a summary."""

from __future__ import annotations

from ..config import EvalConfig, Example
from .generate import generate
from .metrics import score


def task_chat(instruction: str, text: str) -> list[dict]:
    """The prompt the student sees, in training and in evaluation alike."""
    chat = [{"role": "system", "content": instruction}] if instruction else []
    return chat + [{"role": "user", "content": text}]


def score_predictions(items: list[Example], predictions: list[str], metric: str,
                      tolerance: float = 1e-6) -> tuple[list[dict], dict]:
    records = []
    for i, (item, prediction) in enumerate(zip(items, predictions)):
        value, details = score(metric, prediction or "", item.output, tolerance)
        records.append({"id": i, "input": item.input, "reference": item.output,
                        "prediction": prediction, "score": value, "details": details})
    correct = sum(r["score"] for r in records)
    n = len(records)
    return records, {"metric": metric, "n": n, "correct": correct, "accuracy": correct / n if n else 0.0}


def evaluate_model(model, tokenizer, items: list[Example], instruction: str, metric: str,
                   cfg: EvalConfig, desc: str = "eval") -> tuple[list[dict], dict]:
    chats = [task_chat(instruction, item.input) for item in items]
    predictions = generate(model, tokenizer, chats, cfg.max_new_tokens, cfg.batch_size, desc=desc)
    return score_predictions(items, predictions, metric, cfg.tolerance)
