"""Constrained decoding of a forced tool call: random tiny models, greedy and sampled, always write a
call to the tool whose arguments parse and match its schema, within the call's token bound."""

from __future__ import annotations

import json

import pytest
from test_serve import varied_tiny

from protege.models import load_model
from protege.models.chat_format import parse_assistant, schema_errors
from protege.models.forced_calls import ForcedCall, key_options
from protege.models.generate import chat_prompts
from protege.models.tiny import build_tiny
from protege.serve.batching import generate_rows

SCHEMAS = {
    "string": {"type": "object", "properties": {"city": {"type": "string", "description": "a city"}},
               "required": ["city"]},
    "numbers": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "number"}},
                "required": ["a", "b"], "additionalProperties": False},
    "literals": {"type": "object", "properties": {
        "flag": {"type": "boolean"}, "unit": {"enum": ["celsius", "fahrenheit", "c"]},
        "size": {"enum": [1, 12, 123]}, "nothing": {"type": "null"}, "fixed": {"const": "v1"}},
        "required": ["flag", "unit", "size", "nothing", "fixed"]},
    "nested": {"type": "object", "properties": {
        "order": {"type": "object", "properties": {
            "sku": {"type": "string"}, "quantity": {"type": "integer"},
            "gift": {"type": "object", "properties": {"note": {"type": "string"}}}},
            "required": ["sku", "quantity"]}},
        "required": ["order"]},
    "arrays": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}},
        "points": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "number"}},
                                              "required": ["x"]}},
        "grid": {"type": "array", "items": {"type": "array", "items": {"type": "boolean"}}}},
        "required": ["tags", "points", "grid"]},
    "optional": {"type": "object", "properties": {
        "first": {"type": "string"}, "second": {"type": "integer"}, "third": {"type": "boolean"},
        "fourth": {"type": "number"}},
        "required": ["third"]},
    "alternatives": {"type": "object", "properties": {
        "id": {"anyOf": [{"type": "integer"}, {"type": "string"}]}, "maybe": {"type": ["string", "null"]},
        "loose": {}},
        "required": ["id", "maybe", "loose", "undescribed"]},
    "empty": {"type": "object", "properties": {}},
}


def tool(name: str, schema: dict | None) -> dict:
    function = {"name": name, "description": f"The {name} tool."}
    return {"type": "function", "function": {**function, **({"parameters": schema} if schema else {})}}


@pytest.fixture(scope="module", params=[0, 1])
def model(request, tmp_path_factory):
    """A tiny model at its initial scale (repeats one token) and one whose replies vary."""
    directory = tmp_path_factory.mktemp(f"forced-{request.param}")
    return load_model(varied_tiny(directory) if request.param else build_tiny(directory, seed=3), "cpu")


def forced_replies(model, tools: list[dict], choices: list[list[str] | None], temperature: float):
    """Row i forced to call one of choices[i] (None: a free row), all in one batch."""
    functions = {t["function"]["name"]: t["function"] for t in tools}
    calls = [names and ForcedCall({name: functions[name] for name in names}) for names in choices]
    prompts = chat_prompts(model[1], [[{"role": "user", "content": f"request {i}"}] for i in range(len(calls))])
    limits = [call.token_bound() if call else 8 for call in calls]
    return calls, generate_rows(*model, prompts, limits, temperature, calls)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_schema_is_written_as_a_valid_call(model, temperature):
    tools = [tool(name, schema) for name, schema in SCHEMAS.items()]
    calls, results = forced_replies(model, tools, [[name] for name in SCHEMAS], temperature)
    for (name, schema), call, result in zip(SCHEMAS.items(), calls, results):
        turn = parse_assistant(result.text, tools)
        assert turn.valid and len(turn.tool_calls) == 1, (name, result.text, turn.problems)
        assert turn.tool_calls[0]["function"]["name"] == name
        assert schema_errors(arguments(turn), schema, "arguments") == []
        assert result.finish_reason == "stop" and result.completion_tokens <= call.token_bound()


def test_required_calls_one_of_the_tools_by_the_models_choice(model):
    tools = [tool("get_weather", SCHEMAS["string"]), tool("get_time", SCHEMAS["numbers"]), tool("ping", None)]
    names = ["get_weather", "get_time", "ping"]
    for temperature in (0.0, 1.5):
        _, results = forced_replies(model, tools, [names] * 4 + [None], temperature)
        assert "<tool_call>" not in results[-1].text  # a free row in the same batch is not constrained
        for result in results[:-1]:
            turn = parse_assistant(result.text, tools)
            assert turn.valid and len(turn.tool_calls) == 1, (result.text, turn.problems)
            assert turn.tool_calls[0]["function"]["name"] in names


def test_a_missing_parameters_schema_is_an_empty_object(model):
    tools = [tool("ping", None)]
    _, results = forced_replies(model, tools, [["ping"]] * 2, 1.0)
    assert all(parse_assistant(r.text, tools).tool_calls[0]["function"]["arguments"] == "{}" for r in results)


def test_optional_keys_may_be_skipped_up_to_the_next_required_one():
    options = key_options(["a", "b", "c", "d"], {"c"}, first=True)
    assert options == {'"a": ': 0, '"b": ': 1, '"c": ': 2}
    assert key_options(["d"], {"c"}, first=False) == {', "d": ': 0, "}": None}


def arguments(turn) -> dict:
    return json.loads(turn.tool_calls[0]["function"]["arguments"])
