"""On-policy preference pairs for DPO: the reference answer is chosen, and one of the student's own
wrong answers is rejected, so the pair pushes down a mistake the student actually makes (rather
than one a teacher imagines). An input the student always gets right teaches DPO nothing and
gives no pair."""

from __future__ import annotations

from typing import Callable, Iterable

from ..evaluate.generate import generate
from ..evaluate.task_eval import task_chat


def first_wrong(text: str, samples: list[str], reference: str,
                is_correct: Callable[[str, str, str], bool]) -> str | None:
    """The first sample that is wrong. Empty samples and repeats are skipped without asking the
    verifier (it may be slow); so is the reference itself, as a pair of equal answers is no preference."""
    seen = {reference.strip()}
    for sample in samples:
        answer = (sample or "").strip()
        if not answer or answer in seen:
            continue
        seen.add(answer)
        if not is_correct(text, answer, reference):
            return answer
    return None


def preference_pairs(items: Iterable[tuple[str, str]], samples: list[list[str]],
                     is_correct: Callable[[str, str, str], bool], instruction: str) -> list[dict]:
    """TRL conversational preference rows {prompt, chosen, rejected}, one per item the student got
    wrong at least once; items are (input, reference answer) and samples[i] the student's answers
    to item i. The prompt is the one the student sees in training and evaluation."""
    items = list(items)
    if len(items) != len(samples):
        raise ValueError(f"{len(items)} items but samples for {len(samples)}")
    pairs = []
    for (text, reference), answers in zip(items, samples):
        rejected = first_wrong(text, answers, reference, is_correct) if reference.strip() else None
        if rejected is not None:
            pairs.append({"prompt": task_chat(instruction, text),
                          "chosen": [{"role": "assistant", "content": reference}],
                          "rejected": [{"role": "assistant", "content": rejected}]})
    return pairs


def sample_student(model, tokenizer, chats: list[list[dict]], k: int, temperature: float, max_new_tokens: int,
                   seed: int, batch_size: int = 32) -> list[list[str]]:
    """k sampled answers per chat. The chats are repeated k times in one generate call rather than
    generated k times: generate sorts prompts by length, so the k copies of a prompt share batches
    with no padding between them, and the batches stay full even when there are few chats."""
    if temperature <= 0:  # greedy decoding gives k equal answers: generate them once
        return [[reply] * k for reply in generate(model, tokenizer, chats, max_new_tokens, batch_size,
                                                  seed=seed, desc="sample")]
    repeated = [chat for chat in chats for _ in range(k)]
    replies = generate(model, tokenizer, repeated, max_new_tokens, batch_size, temperature=temperature,
                       seed=seed, desc="sample")
    return [replies[i * k:(i + 1) * k] for i in range(len(chats))]
