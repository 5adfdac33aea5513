"""On-policy preference pairs for DPO: the reference answer (the teacher's, or a seed's) or the
student's own verified answer is chosen, and one of the student's own wrong answers is rejected, so
the pair pushes down a mistake the student actually makes (rather than one a teacher imagines). An
input the student always gets right teaches DPO nothing and gives no pair. Training builds pairs
each round for train.method dpo (loop/training.py, pairs_stage); the preference-pairs step builds them in
round 0 from the base student into the stage's pairs.jsonl."""

from __future__ import annotations

from typing import Callable, Iterable, Literal

from pydantic import Field

from ..records import task_chat
from ..registry import SYNTH
from .registry import StudentSampledStep


class PreferencePairsStep(StudentSampledStep):
    name: Literal["preference-pairs"] = Field("preference-pairs", description="On-policy DPO pairs: chosen = "
                                              "the reference or a verified answer, rejected = the base student's "
                                              "own wrong answer; written to pairs.jsonl.")
    chosen: Literal["reference", "verified"] = Field("reference", description="reference: the record's answer "
                                                     "(the teacher's, or a seed's); verified: the student's own "
                                                     "first right sample, else the reference.")


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


@SYNTH.register(PreferencePairsStep)
def run(records: list[dict], step: PreferencePairsStep, ctx) -> list[dict]:
    """The preference-pairs step: pairs from the base student's samples on records of the data so
    far, added to ctx.pairs (with id and meta, as docs/architecture.md describes the preference record); records unchanged."""
    from ..runs import digest
    from .registry import student_answers, task_items, verifier
    items = task_items(records, step.items, ctx.step_seed)
    samples = student_answers(ctx, step.name, items, step.samples, step.temperature)
    pairs = preference_pairs(items, samples, verifier(step.verifier, ctx), ctx.instruction, step.chosen)
    ctx.pairs += [{"id": digest([step.name, ctx.round, pair]), **pair,
                   "meta": {"source": step.name, "round": ctx.round, "chosen": step.chosen}} for pair in pairs]
    ctx.drop("no wrong answer", len(items) - len(pairs))
    return records

