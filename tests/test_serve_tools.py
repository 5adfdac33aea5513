"""`protege serve` speaks OpenAI tool calling: an agent loop written with the official openai client
(a real tool run by the client, several turns, plain and streamed) against a real server on loopback
with a tiny random model; forced calls always parse and match their schema."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest
import uvicorn
from test_serve import free_port, varied_tiny

from protege.models.acting import act_prompts
from protege.models.chat_format import schema_errors
from protege.models.generate import chat_prompts
from protege.serve import build_app
from protege.serve.app import chat_answer, chat_deltas
from protege.serve.batching import Generation

KEY = "tools-key"
NAME = "tiny-agent"
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}}}
TOOLS = [ADD, WEATHER]


def add(a: int, b: int) -> int:
    return a + b


def get_weather(city: str, unit: str) -> str:
    return f"{len(city)} degrees {unit} in {city}"


FUNCTIONS = {"add": add, "get_weather": get_weather}  # the client's real tools


def long_context_tiny(directory):
    """The tiny model with room for an agent's chat: its tokens are bytes, and the tool definitions in
    the system message alone take most of its 1024 positions."""
    directory = varied_tiny(directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 8192}))
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = build_app(long_context_tiny(tmp_path_factory.mktemp("tiny")), api_key=KEY, max_tokens_limit=256,
                    model_name=NAME)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.02)
    yield app, openai.OpenAI(base_url=f"http://127.0.0.1:{uv.config.port}/v1", api_key=KEY, max_retries=0)
    uv.should_exit = True
    thread.join(timeout=10)


def ask(client, messages, **kw):
    return client.chat.completions.create(model=NAME, messages=messages, tools=TOOLS,
                                          **{"max_tokens": 8, "temperature": 0, **kw})


def run_calls(message) -> list[dict]:
    """The client's side of the loop: each call executed, its result a tool message."""
    results = []
    for call in message.tool_calls:
        result = FUNCTIONS[call.function.name](**json.loads(call.function.arguments))
        results.append({"role": "tool", "tool_call_id": call.id, "content": str(result)})
    return results


def assistant_turn(message) -> dict:
    """The reply as the client sends it back: content None and the tool calls."""
    return message.model_dump(include={"role", "content", "tool_calls"}, exclude_none=False)


def test_an_agent_loop_with_the_openai_client_runs_a_real_tool(server):
    app, client = server
    messages = [{"role": "system", "content": "You add numbers."}, {"role": "user", "content": "What is 2 + 3?"}]
    for turn, choice in enumerate(["required", {"type": "function", "function": {"name": "add"}}]):
        reply = ask(client, messages, tool_choice=choice)
        message = reply.choices[0].message
        assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
        assert [call.id for call in message.tool_calls] == [f"call_{turn}"]  # numbered on from the chat's
        messages += [assistant_turn(message), *run_calls(message)]
    assert messages[-1]["content"] == str(add(**json.loads(message.tool_calls[0].function.arguments)))
    final = ask(client, messages, tool_choice="none")
    assert final.choices[0].message.tool_calls is None and isinstance(final.choices[0].message.content, str)
    assert final.choices[0].finish_reason in ("stop", "length")
    # the tool results and calls were in the prompt, rendered as in evaluation
    chats, template_tools = act_prompts([messages], None, app.state.server.tokenizer)
    assert final.usage.prompt_tokens == len(chat_prompts(app.state.server.tokenizer, chats, template_tools)[0])


def test_a_streamed_loop_is_accumulated_by_the_openai_client(server):
    _, client = server
    messages = [{"role": "user", "content": "Add 40 and 2."}]
    with client.chat.completions.stream(model=NAME, messages=messages, tools=TOOLS, temperature=1.0,
                                        tool_choice={"type": "function", "function": {"name": "add"}},
                                        max_tokens=8) as stream:
        completion = stream.get_final_completion()
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls" and message.content is None
    assert [(c.id, c.type, c.function.name) for c in message.tool_calls] == [("call_0", "function", "add")]
    assert schema_errors(json.loads(message.tool_calls[0].function.arguments), ADD["function"]["parameters"],
                         "arguments") == []
    messages += [assistant_turn(message), *run_calls(message)]
    chunks = list(ask(client, messages, tool_choice="none", stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_forced_calls_match_their_schema_whatever_is_sampled(server):
    _, client = server
    for temperature in (0.0, 0.7, 1.5):
        reply = ask(client, [{"role": "user", "content": f"weather at {temperature}?"}], temperature=temperature,
                    tool_choice={"type": "function", "function": {"name": "get_weather"}})
        call = reply.choices[0].message.tool_calls[0]
        assert call.function.name == "get_weather"
        assert schema_errors(json.loads(call.function.arguments), WEATHER["function"]["parameters"], "a") == []


def test_none_offers_no_tools_and_auto_offers_them(server):
    _, client = server
    question = [{"role": "user", "content": "hi"}]
    plain = client.chat.completions.create(model=NAME, messages=question, max_tokens=4, temperature=0)
    none = ask(client, question, tool_choice="none", max_tokens=4)
    auto = ask(client, question)
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens < auto.usage.prompt_tokens


def test_a_reply_with_a_call_block_is_returned_as_tool_calls():
    text = 'Let me add.\n<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    history = [{"role": "user", "content": "1+2?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_0", "type": "function", "function": {"name": "add", "arguments": '{"a": 0, "b": 0}'}}]},
               {"role": "tool", "tool_call_id": "call_0", "content": "0"}]
    answer = chat_answer(Generation(text, 10, 20, "stop"), history, TOOLS)
    assert answer.finish_reason == "tool_calls" and answer.message["content"] == "Let me add."
    assert answer.message["tool_calls"] == [{"id": "call_1", "type": "function",
                                             "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]
    plain = chat_answer(Generation("no call here", 10, 3, "length"), history, TOOLS)
    assert (plain.message, plain.finish_reason) == ({"role": "assistant", "content": "no call here"}, "length")


def test_streamed_deltas_follow_openais_tool_call_shape():
    arguments = json.dumps({"a": 123456789, "b": 987654321})
    message = {"role": "assistant", "content": None,
               "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "add", "arguments": arguments}}]}
    deltas = chat_deltas(message)
    assert deltas[0] == {"role": "assistant", "tool_calls": [
        {"index": 0, "id": "call_0", "type": "function", "function": {"name": "add", "arguments": ""}}]}
    assert len(deltas) > 2 and "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas) == arguments


@pytest.mark.parametrize(("tools", "choice", "message"), [
    ([{"type": "function", "function": {"description": "no name"}}], None, "function name"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], None, 'type "object"'),
    ([ADD, ADD], "auto", "same name"),
    (TOOLS, {"type": "function", "function": {"name": "divide"}}, "'divide', which is not among the tools"),
    (TOOLS, "sometimes", "tool_choice must be"),
    (None, "required", "has no tools"),
])
def test_bad_tools_or_tool_choice_are_400_in_openais_shape(server, tools, choice, message):
    _, client = server
    extra = {"tool_choice": choice} if choice is not None else {}
    with pytest.raises(openai.BadRequestError, match=message) as caught:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}],
                                       tools=tools or openai.omit, max_tokens=4, **extra)
    assert caught.value.code in ("invalid_tools", "invalid_tool_choice")


def test_a_call_whose_arguments_are_not_json_is_400(server):
    _, client = server
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"id": "c", "type": "function", "function": {"name": "add", "arguments": "{not json"}}]},
               {"role": "tool", "tool_call_id": "c", "content": "3"}]
    with pytest.raises(openai.BadRequestError, match="cannot be rendered"):
        ask(client, history)
