"""How hard the base student finds each example: the mean loss of the answer's tokens with its
question (the chat as trained on), and without it (the same chat with the system and user turns
emptied, so the answer is tokenized and labeled the same way). Perplexity is exp(loss); IFD is the
ratio of the two perplexities (Cherry LLM). The perplexity, IFD and curriculum steps share one scoring
per record through the curation context."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..train.sft import tokenize_chat
from .context import CurateContext


def perplexity(loss: float) -> float:
    return math.exp(loss)


def ifd(loss_with_question: float, loss_alone: float) -> float:
    """perplexity(A | Q) / perplexity(A) = exp(loss(A | Q) - loss(A)); > 1: the question makes the
    answer less likely, so the two do not fit."""
    if math.isinf(loss_with_question):
        return math.inf
    return math.exp(loss_with_question - loss_alone)


def without_question(messages: list[dict]) -> list[dict]:
    """The chat with only the answers: an empty user turn stands for the question, since chat
    templates refuse a conversation that starts with the assistant."""
    return [{"role": "user", "content": ""}] + [m for m in messages if m["role"] == "assistant"]


@torch.inference_mode()
def mean_answer_losses(model, tokenizer, rows: list[dict], batch_size: int = 8) -> list[float]:
    """Mean cross-entropy of each row's labeled tokens; inf for a row with none (cut off by max_length)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    losses = [math.inf] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, labels, mask = _right_padded([rows[i] for i in chunk], tokenizer.pad_token_id, model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
        counts = (target != -100).sum(dim=1)
        for i, total, count in zip(chunk, nll.sum(dim=1).tolist(), counts.tolist()):
            losses[i] = total / count if count else math.inf
    return losses


def _right_padded(rows: list[dict], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[k, :n], labels[k, :n], mask[k, :n] = torch.tensor(row["input_ids"]), torch.tensor(row["labels"]), 1
    return ids.to(device), labels.to(device), mask.to(device)


def student_losses(records: list[dict], ctx: CurateContext, step: str) -> list[tuple[float, float]]:
    """(loss with the question, loss without) per record, computed once per record and context."""
    todo = [r for r in records if r["id"] not in ctx.losses]
    if todo:
        model, tokenizer = ctx.need("student", step)()
        ctx.say(f"curate {step}: the base student scores {len(todo)} examples")
        chats = [r["messages"] for r in todo] + [without_question(r["messages"]) for r in todo]
        rows = [tokenize_chat(tokenizer, chat, ctx.max_length) for chat in chats]
        losses = mean_answer_losses(model, tokenizer, rows)
        for k, record in enumerate(todo):
            ctx.losses[record["id"]] = (losses[k], losses[len(todo) + k])
    return [ctx.losses[r["id"]] for r in records]
