"""Episodes: every live episode takes its turn together, tool results come back as messages, and a
policy's failures end an episode or are counted, never a crash."""

import json
from pathlib import Path

from protege.agents.environment import load_tools
from protege.agents.episodes import Step, run_episodes, teacher_policy
from protege.teachers import CachedTeacher, TeacherCache
from protege.teachers.function import FunctionTeacher

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop-agent"


def shop():
    return load_tools({"environment": "shop:Shop"}, SHOP)


def test_the_scripted_teacher_answers_in_batched_turns(tmp_path):
    items = [json.loads(line) for line in (SHOP / "test.jsonl").read_text().splitlines()][:24]
    teacher = CachedTeacher(FunctionTeacher("teacher:teacher", SHOP), TeacherCache(tmp_path / "c.sqlite"))
    asked = []
    policy = teacher_policy(teacher, "Help the customer.", shop().schemas)

    def counted(histories):
        asked.append(len(histories))
        return policy(histories)
    episodes = run_episodes(shop(), [i["input"] for i in items], counted, max_turns=8,
                            score=lambda e: e.answer == next(i["output"] for i in items if i["input"] == e.request))
    assert all(e.score == 1.0 and e.finished for e in episodes)
    # one policy call per turn for all live episodes: 24 at first, fewer as episodes answer
    assert asked[0] == 24 and asked == sorted(asked, reverse=True) and len(asked) == max(e.turns for e in episodes)
    assert sum(e.calls for e in episodes) == sum(1 for e in episodes for m in e.messages if m["role"] == "tool")
    calls = [m for m in episodes[0].messages if m.get("tool_calls")]
    assert episodes[0].messages[calls and 2 or 1]["tool_call_id"] == calls[0]["tool_calls"][0]["id"]


def call(name, arguments):
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}]}


def test_bad_turns_are_counted_and_end_or_fail_the_episode():
    steps = iter([[Step(call("nope", "{}")), Step(None), Step(call("get_shipment", "{bad json"), valid=False)],
                  [Step({"role": "assistant", "content": "done"}), Step(call("get_shipment", '{"order_id": 1004}'))]])
    episodes = run_episodes(shop(), ["a", "b", "c"], lambda histories: next(steps), max_turns=2)
    unknown, dropped, malformed = episodes
    assert unknown.tool_errors == 1 and unknown.messages[2]["content"].startswith("error: unknown tool 'nope'")
    assert unknown.finished and unknown.answer == "done"
    assert dropped.turns == 1 and not dropped.finished and dropped.answer == ""  # gave nothing: failed, ended
    assert malformed.invalid_turns == 1 and malformed.tool_errors == 1
    assert not malformed.finished and malformed.turns == 2  # cut off by max_turns while still calling tools


def test_the_scorer_sees_the_environment_before_it_is_thrown_away():
    seen = []

    def policy(histories):
        return [Step(call("issue_refund", '{"order_id": 1004, "amount": 1.0}')) if len(h) == 1 else
                Step({"role": "assistant", "content": "ok"}) for h in histories]

    def verifier(episode):
        seen.append(dict(episode.toolbox.environment.refunds))
        return bool(episode.toolbox.environment.refunds)
    episodes = run_episodes(shop(), ["refund it", "refund it too"], policy, max_turns=3, score=verifier)
    assert [e.score for e in episodes] == [1.0, 1.0] and seen == [{1004: 1.0}, {1004: 1.0}]  # one shop each
    assert all(e.toolbox is None for e in episodes)
