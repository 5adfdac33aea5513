"""LLM-as-judge through any teacher backend: pointwise (a 1-10 score against a rubric) and pairwise.

Pairwise judging follows JudgeLM's swap augmentation: every item is asked twice, once with each
answer shown first, and a model wins the item only when both orders name it. A judge that prefers
whatever comes first (position bias) then wins nobody anything; how often the two orders disagree
is reported as the position-disagreement rate. The reference answer is shown whenever the item
has one."""

from __future__ import annotations

import re
from typing import Literal, Sequence

from ..config import Example
from ..teachers import TeacherRequest
from .bootstrap import bootstrap_ci

Winner = Literal["A", "B", "tie"]

# "Score: 7", tolerating markdown, "7/10" and a full stop; "7.5" is no whole score and does not match.
_SCORE = re.compile(r"score[*_`\s]*[:=][*_`\s]*(\d+)(?![\d.]*\d)", re.IGNORECASE)
# "Winner: A", tolerating markdown, brackets and "Answer A".
_WINNER = re.compile(r"winner[*_`\s]*[:=][*_`\s\[(\"']*(?:answer\s+)?(A|B|tie)\b", re.IGNORECASE)


def parse_score(reply: str | None) -> int | None:
    """The whole score 1-10 of the last "Score: N" in the reply; None when there is none."""
    matches = _SCORE.findall(reply or "")
    score = int(matches[-1]) if matches else None
    return score if score is not None and 1 <= score <= 10 else None


def parse_winner(reply: str | None) -> Winner | None:
    """"A", "B" or "tie" from the last "Winner: X" in the reply (the verdict, not a quote of the
    prompt's instructions before it); None when there is none."""
    matches = _WINNER.findall(reply or "")
    if not matches:
        return None
    winner = matches[-1]
    return "tie" if winner.lower() == "tie" else winner.upper()


def judge_pointwise(teacher, instruction: str, items: Sequence[Example], answers: Sequence[str],
                    rubric: str, *, confidence: float = 0.95, resamples: int = 1000,
                    seed: int = 0) -> tuple[list[dict], dict]:
    """Score each answer 1-10. Records: one per item with the judge's reply and score (None when the
    judge gave no reply or no score). Summary: {n, judged, unparsed, mean_score, ci}."""
    requests = [TeacherRequest("judge-pointwise", instruction, input=item.input, candidate=answer or "",
                               reference=item.output, rubric=rubric)
                for item, answer in zip(items, answers, strict=True)]
    replies = teacher.complete(requests)
    records = [{"id": i, "input": item.input, "reference": item.output, "answer": answer, "reply": reply,
                "score": parse_score(reply)}
               for i, (item, answer, reply) in enumerate(zip(items, answers, replies))]
    return records, pointwise_summary([r["score"] for r in records], confidence, resamples, seed)


def pointwise_summary(scores: Sequence[int | None], confidence: float, resamples: int, seed: int) -> dict:
    """Items without a score (no reply, or no "Score: N" in it) count as unparsed, outside the mean."""
    judged = [s for s in scores if s is not None]
    mean, ci = _mean_and_ci(judged, confidence, resamples, seed)
    return {"n": len(scores), "judged": len(judged), "unparsed": len(scores) - len(judged),
            "mean_score": mean, "ci": ci}


def judge_pairwise(teacher, instruction: str, items: Sequence[Example], answers_a: Sequence[str],
                   answers_b: Sequence[str], rubric: str, names: tuple[str, str] = ("student", "teacher"),
                   *, confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> tuple[list[dict], dict]:
    """Compare answers_a (model names[0]) with answers_b (names[1]) item by item, in both orders.
    Records: per item both replies (the first asked with names[0] shown as A), both verdicts as model
    names ("tie", or None when unparsed) and the outcome (a name, "tie", "inconsistent" or "unparsed")."""
    _check_names(names)
    requests = []
    for item, a, b in zip(items, answers_a, answers_b, strict=True):
        requests += [_pairwise_request(instruction, item, a, b, rubric),
                     _pairwise_request(instruction, item, b, a, rubric)]
    replies = teacher.complete(requests)  # one batch: backends run it concurrently
    records = []
    for i, (item, a, b) in enumerate(zip(items, answers_a, answers_b)):
        forward, swapped = replies[2 * i], replies[2 * i + 1]
        verdicts = [_as_name(parse_winner(forward), names), _as_name(parse_winner(swapped), names[::-1])]
        records.append({"id": i, "input": item.input, "reference": item.output,
                        "answers": {names[0]: a, names[1]: b}, "replies": [forward, swapped],
                        "verdicts": verdicts, "outcome": swap_outcome(*verdicts)})
    return records, pairwise_summary([r["outcome"] for r in records], names, confidence, resamples, seed)


def _check_names(names: tuple[str, str]) -> None:
    # outcomes are model names or these words, so a model must not be called by one of them
    if len(set(names)) != 2 or set(names) & {"tie", "inconsistent", "unparsed"}:
        raise ValueError(f"names must be two distinct model names, not {names!r}")


def _pairwise_request(instruction: str, item: Example, answer_a: str, answer_b: str,
                      rubric: str) -> TeacherRequest:
    return TeacherRequest("judge-pairwise", instruction, input=item.input, candidate=answer_a or "",
                          answer_b=answer_b or "", reference=item.output, rubric=rubric)


def _as_name(winner: Winner | None, shown: tuple[str, str]) -> str | None:
    """The verdict of one order as a model name; shown = (the model shown as A, the one shown as B)."""
    return {"A": shown[0], "B": shown[1], "tie": "tie", None: None}[winner]


def swap_outcome(forward: str | None, swapped: str | None) -> str:
    """JudgeLM's swap rule: a verdict stands only when both orders give it."""
    if forward is None or swapped is None:
        return "unparsed"
    return forward if forward == swapped else "inconsistent"


def pairwise_summary(outcomes: Sequence[str], names: tuple[str, str], confidence: float, resamples: int,
                     seed: int) -> dict:
    """Rates are over the items both orders of which were parsed; an inconsistent item counts as a tie
    in the win rates and in score_a_minus_b (per item +1 when names[0] wins, -1 when names[1] does)."""
    decided = [o for o in outcomes if o != "unparsed"]
    wins = {name: decided.count(name) for name in names}
    inconsistent = decided.count("inconsistent")
    margins = [1 if o == names[0] else -1 if o == names[1] else 0 for o in decided]
    mean, ci = _mean_and_ci(margins, confidence, resamples, seed)
    return {"n": len(outcomes), "names": list(names), "wins": wins, "ties": decided.count("tie"),
            "inconsistent": inconsistent, "unparsed": len(outcomes) - len(decided),
            "position_disagreement_rate": inconsistent / len(decided) if decided else None,
            "win_rate": {name: wins[name] / len(decided) if decided else None for name in names},
            "score_a_minus_b": mean, "score_a_minus_b_ci": ci}


def _mean_and_ci(values: Sequence[float], confidence: float, resamples: int,
                 seed: int) -> tuple[float | None, list[float] | None]:
    """The mean and its bootstrap interval; one value has a mean but no interval to resample."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    low, high = bootstrap_ci(list(values), confidence, resamples, seed)
    return mean, [low, high]
