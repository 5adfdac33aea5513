"""examples/shop-agent: the scripted expert answers every request with one to four tool calls in a
fresh shop, the committed data is what make_data.py writes, and a refund does not outlive its episode."""

import importlib
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop-agent"


@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(SHOP))
    try:
        yield {name: importlib.import_module(name) for name in ("shop", "teacher", "make_data")}
    finally:  # other examples have a teacher.py too
        sys.path.remove(str(SHOP))
        for name in ("shop", "teacher", "make_data"):
            sys.modules.pop(name, None)


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (SHOP / name).read_text().splitlines()]


def episode(example, request: str) -> list[dict]:
    """The expert acting in a new shop until it answers (tool errors come back as one line)."""
    shop, messages = example["shop"].Shop(), [{"role": "user", "content": request}]
    for _ in range(8):
        messages.append(example["teacher"].act(messages))
        for call in messages[-1].get("tool_calls") or []:
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": run_tool(shop, call["function"])})
        if not messages[-1].get("tool_calls") and messages[-1]["role"] == "assistant":
            return messages
    raise AssertionError(f"no answer in 8 turns: {request}")


def run_tool(shop, function: dict) -> str:
    try:
        return json.dumps(getattr(shop, function["name"])(**json.loads(function["arguments"])))
    except (LookupError, ValueError) as exc:
        return f"error: {function['name']} raised {type(exc).__name__}: {exc}"


def test_the_expert_answers_every_request_with_one_to_four_calls(example):
    items = rows("seeds.jsonl") + rows("test.jsonl")
    calls = Counter()
    for item in items:
        messages = episode(example, item["input"])
        assert messages[-1]["content"] == item["output"], item
        calls[sum(m["role"] == "tool" for m in messages)] += 1
    assert set(calls) == {1, 2, 3, 4} and len(rows("test.jsonl")) >= 100


def test_the_data_is_what_make_data_writes_and_the_test_set_is_held_out(example, tmp_path, monkeypatch):
    monkeypatch.setattr(example["make_data"], "HERE", tmp_path)
    example["make_data"].main()
    for name in ("seeds.jsonl", "inputs.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_text() == (SHOP / name).read_text()
    test = {r["input"] for r in rows("test.jsonl")}
    assert len(test) == len(rows("test.jsonl")) and not test & {r["input"] for r in rows("seeds.jsonl") +
                                                               rows("inputs.jsonl")}


def test_a_refund_does_not_outlive_its_episode(example):
    first, second = example["shop"].Shop(), example["shop"].Shop()
    order = next(o for o in first.orders.values() if not example["shop"].refund_refusal(o, 1.0, False))
    assert first.issue_refund(order["order_id"], 1.0) == {"order_id": order["order_id"], "refunded": 1.0}
    with pytest.raises(ValueError, match="refunded already"):
        first.issue_refund(order["order_id"], 1.0)
    assert second.issue_refund(order["order_id"], 1.0)["refunded"] == 1.0
