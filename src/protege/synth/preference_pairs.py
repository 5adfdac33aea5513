"""On-policy preference pairs for DPO: the reference answer (the teacher's, or a seed's) or the
student's own verified answer is chosen, and one of the student's own wrong answers is rejected, so
the pair pushes down a mistake the student actually makes (rather than one a teacher imagines). An
input the student always gets right teaches DPO nothing and gives no pair. Training builds pairs
each round for train.method dpo (method_round.pairs_stage); the preference-pairs step builds them in
round 0 from the base student into the stage's pairs.jsonl."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

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


def first_right(text: str, samples: list[str], reference: str,
                is_correct: Callable[[str, str, str], bool]) -> str | None:
    """The first non-empty sample the verifier accepts."""
    for sample in dict.fromkeys((s or "").strip() for s in samples):
        if sample and is_correct(text, sample, reference):
            return sample
    return None


def preference_pairs(items: Iterable[tuple[str, str]], samples: list[list[str]],
                     is_correct: Callable[[str, str, str], bool], instruction: str,
                     chosen: str = "reference") -> list[dict]:
    """TRL conversational preference rows {prompt, chosen, rejected}, one per item the student got
    wrong at least once; items are (input, reference answer) and samples[i] the student's answers
    to item i. The prompt is the one the student sees in training and evaluation. chosen: reference
    (the item's answer) or verified (the student's first right sample, else the reference)."""
    items = list(items)
    if len(items) != len(samples):
        raise ValueError(f"{len(items)} items but samples for {len(samples)}")
    pairs = []
    for (text, reference), answers in zip(items, samples):
        rejected = first_wrong(text, answers, reference, is_correct) if reference.strip() else None
        if rejected is None:
            continue
        best = first_right(text, answers, reference, is_correct) if chosen == "verified" else None
        pairs.append({"prompt": task_chat(instruction, text),
                      "chosen": [{"role": "assistant", "content": best or reference}],
                      "rejected": [{"role": "assistant", "content": rejected}]})
    return pairs


def run(records: list[dict], step, ctx) -> list[dict]:
    """The preference-pairs step: pairs from the base student's samples on records of the data so
    far, added to ctx.pairs (with id and meta, as DESIGN.md's preference record); records unchanged."""
    from ..runs import digest
    from .registry import student_answers, task_items, verifier
    items = task_items(records, step.items, ctx.step_seed)
    samples = student_answers(ctx, step.name, items, step.samples, step.temperature)
    pairs = preference_pairs(items, samples, verifier(step.verifier, ctx), ctx.instruction, step.chosen)
    ctx.pairs += [{"id": digest([step.name, ctx.round, pair]), **pair,
                   "meta": {"source": step.name, "round": ctx.round, "chosen": step.chosen}} for pair in pairs]
    ctx.drop("no wrong answer", len(items) - len(pairs))
    return records


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


def sample_answers(model, tokenizer, instruction: str, items: Sequence[tuple[str, str | None]], k: int,
                   temperature: float, max_new_tokens: int, seed: int) -> list[list[str]]:
    """k answers of a student per (input, reference) item, sampled on the prompt it sees in training."""
    chats = [task_chat(instruction, text) for text, _ in items]
    return sample_student(model, tokenizer, chats, k, temperature, max_new_tokens, seed)
