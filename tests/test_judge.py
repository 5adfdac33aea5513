import re

import pytest

from openai_stub import StubServer
from protege.config import Example
from protege.evaluate.judge import (judge_pairwise, judge_pointwise, pairwise_summary, parse_score,
                                    parse_winner, pointwise_summary, swap_outcome)
from protege.teachers import CachedTeacher, TeacherCache, TeacherRequest
from protege.teachers.openai_api import OpenAITeacher, OpenAITeacherConfig

INSTRUCTION = "Add the two numbers."
RUBRIC = "The sum must be right."
REFERENCE = r"Reference answer \(known to be correct\)"


def cached_judge(server, tmp_path):
    cfg = OpenAITeacherConfig(base_url=server.base_url, model="judge", concurrency=4)
    return CachedTeacher(OpenAITeacher(cfg), TeacherCache(tmp_path / "judge.sqlite"), {"max_tokens": 64})


def section(prompt, label):
    """The text under `label:` in a judge prompt, up to the next blank line."""
    match = re.search(rf"{label}:\n(.*?)(?:\n\n|$)", prompt, re.DOTALL)
    return match.group(1) if match else None


def judge_by_reference(messages):
    """A fair judge: the answer equal to the reference wins, wherever it is shown."""
    prompt = messages[-1]["content"]
    reference = section(prompt, REFERENCE)
    a, b = section(prompt, "Answer A"), section(prompt, "Answer B")
    winner = "A" if a == reference != b else "B" if b == reference != a else "tie"
    return f"Comparing the two with the reference.\nWinner: {winner}"


@pytest.mark.parametrize("reply, score", [
    ("The sum is right.\nScore: 9", 9),
    ("score: 7\nThe format could be better.", 7),
    ("**Score:** 10", 10),
    ("Score: 4/10.", 4),
    ("I said Score: 2 at first, but on reflection\nScore: 6", 6),
    ("Score: 7.5", None),
    ("Score: 0", None),
    ("Score: 11", None),
    ("A fine answer, I would give it an 8.", None),
    ("", None),
    (None, None),
])
def test_parse_score_reads_messy_replies(reply, score):
    assert parse_score(reply) == score


@pytest.mark.parametrize("reply, winner", [
    ("B is closer to the reference.\nWinner: B", "B"),
    ("winner: a", "A"),
    ("Winner: **A**", "A"),
    ("**Winner:** Answer B.", "B"),
    ("Both are right.\nWinner: Tie", "tie"),
    ("Winner: A\nOn second thought they are equal.\nWinner: tie", "tie"),
    ("Winner: Apple", None),
    ("Answer A is better.", None),
    ("", None),
    (None, None),
])
def test_parse_winner_reads_messy_replies(reply, winner):
    assert parse_winner(reply) == winner


def test_swap_outcome_keeps_only_verdicts_both_orders_give():
    assert swap_outcome("student", "student") == "student"
    assert swap_outcome("tie", "tie") == "tie"
    assert swap_outcome("student", "teacher") == "inconsistent"
    assert swap_outcome("tie", "teacher") == "inconsistent"
    assert swap_outcome(None, "teacher") == "unparsed"


def test_pairwise_summary_counts_by_hand():
    outcomes = ["student", "student", "teacher", "tie", "inconsistent", "unparsed"]
    summary = pairwise_summary(outcomes, ("student", "teacher"), 0.95, 200, 0)
    # 5 items decided; margins +1 +1 -1 0 0 -> mean 1/5
    assert summary["n"] == 6 and summary["unparsed"] == 1
    assert summary["wins"] == {"student": 2, "teacher": 1}
    assert summary["ties"] == 1 and summary["inconsistent"] == 1
    assert summary["position_disagreement_rate"] == pytest.approx(1 / 5)
    assert summary["win_rate"] == pytest.approx({"student": 2 / 5, "teacher": 1 / 5})
    assert summary["score_a_minus_b"] == pytest.approx(0.2)
    low, high = summary["score_a_minus_b_ci"]
    assert -1 <= low <= 0.2 <= high <= 1 and low < high


def test_pointwise_summary_counts_by_hand():
    summary = pointwise_summary([7, None, 9, 2], 0.95, 200, 0)
    assert (summary["n"], summary["judged"], summary["unparsed"]) == (4, 3, 1)
    assert summary["mean_score"] == pytest.approx(6.0)  # (7 + 9 + 2) / 3
    assert 2 <= summary["ci"][0] <= 6.0 <= summary["ci"][1] <= 9
    assert pointwise_summary([None], 0.95, 200, 0)["mean_score"] is None
    assert pointwise_summary([None, 8], 0.95, 200, 0)["ci"] is None  # one score: nothing to resample


def test_swap_cancels_a_judge_that_always_picks_the_first_answer(tmp_path):
    items = [Example(input=f"{n} + {n}", output=str(2 * n)) for n in range(3)]
    with StubServer(lambda messages: "The first one looks better.\nWinner: A") as server:
        judge = cached_judge(server, tmp_path)
        records, summary = judge_pairwise(judge, INSTRUCTION, items, ["0", "2", "4"], ["9", "9", "9"], RUBRIC)
        assert server.requests == 6  # both orders of every item were asked
    assert summary["wins"] == {"student": 0, "teacher": 0}
    assert summary["inconsistent"] == 3 and summary["position_disagreement_rate"] == 1.0
    assert summary["win_rate"] == {"student": 0.0, "teacher": 0.0}
    assert records[0]["verdicts"] == ["student", "teacher"] and records[0]["outcome"] == "inconsistent"


def test_a_judge_that_reads_the_answers_agrees_with_itself(tmp_path):
    items = [Example(input=f"{n} + 1", output=str(n + 1)) for n in range(4)]
    student = ["1", "2", "0", "7"]  # right on items 0 and 1
    teacher = ["5", "5", "3", "8"]  # right on item 2; nobody is right on item 3
    with StubServer(judge_by_reference) as server:
        judge = cached_judge(server, tmp_path)
        records, summary = judge_pairwise(judge, INSTRUCTION, items, student, teacher, RUBRIC)
        _, again = judge_pairwise(judge, INSTRUCTION, items, student, teacher, RUBRIC)
        assert server.requests == 8 and judge.stats.paid == 8  # the second call came from the cache
    assert summary["wins"] == {"student": 2, "teacher": 1} and summary["ties"] == 1
    assert summary["inconsistent"] == 0 and summary["position_disagreement_rate"] == 0.0
    assert summary["score_a_minus_b"] == pytest.approx(1 / 4)  # (+1 +1 -1 +0) / 4
    assert [r["outcome"] for r in records] == ["student", "student", "teacher", "tie"]
    assert again == summary


def test_pointwise_scores_through_the_server_and_counts_unparsed(tmp_path):
    def grade(messages):
        prompt = messages[-1]["content"]
        answer = section(prompt, "Answer to grade")
        if answer == "?":
            return "I cannot tell what this answer means."
        return f"Checked.\nScore: {10 if answer == section(prompt, REFERENCE) else 3}"

    items = [Example(input=f"{n} + 1", output=str(n + 1)) for n in range(3)]
    with StubServer(grade) as server:
        records, summary = judge_pointwise(cached_judge(server, tmp_path), INSTRUCTION, items, ["1", "5", "?"],
                                           RUBRIC)
    assert [r["score"] for r in records] == [10, 3, None]
    assert (summary["n"], summary["judged"], summary["unparsed"]) == (3, 2, 1)
    assert summary["mean_score"] == pytest.approx(6.5)  # (10 + 3) / 2


def test_reference_and_rubric_reach_the_judge_only_when_given(tmp_path):
    seen = []

    def record(messages):
        seen.append(messages)
        return "Winner: tie"

    items = [Example(input="2 + 2", output="4"), Example(input="2 + 3")]
    with StubServer(record) as server:
        judge_pairwise(cached_judge(server, tmp_path), INSTRUCTION, items, ["4", "5"], ["5", "6"], RUBRIC)
    by_input = {section(m[-1]["content"], "Problem"): m for m in seen}
    with_reference, without = by_input["2 + 2"], by_input["2 + 3"]
    assert section(with_reference[-1]["content"], REFERENCE) == "4"
    assert "Reference" not in without[-1]["content"]
    assert RUBRIC in with_reference[0]["content"] and INSTRUCTION in with_reference[0]["content"]
    bare = TeacherRequest("judge-pointwise", INSTRUCTION, input="2 + 3", candidate="5").chat()
    assert "What matters" not in bare[0]["content"] and "Reference" not in bare[1]["content"]


def test_pairwise_refuses_names_it_cannot_tell_apart():
    with pytest.raises(ValueError, match="names"):
        judge_pairwise(None, INSTRUCTION, [], [], [], RUBRIC, names=("student", "student"))
