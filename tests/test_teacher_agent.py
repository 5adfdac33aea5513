"""Teachers acting as agents (purpose "act"): the OpenAI teacher through OpenAI's tool-calling protocol
against a real HTTP server on 127.0.0.1, cached like every other request, and the function teacher."""

import json

from openai_stub import StubServer, tool_call
from protege.agents.tools import Toolbox, call_tool
from protege.teachers import CachedTeacher, TeacherCache, TeacherRequest, act_request
from protege.teachers.function import FunctionTeacher
from protege.teachers.openai_api import OpenAITeacher, OpenAITeacherConfig

INSTRUCTION = "Answer questions about the shop's prices with its tools."
QUESTION = "What do a pen and a book cost together?"
PRICES = {"pen": 2.5, "book": 12.0}


def price(item: str) -> float:
    """The price of one item.

    Args:
        item: The item's name.
    """
    return PRICES[item]


def add(a: float, b: float) -> float:
    """The sum of two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def toolbox() -> Toolbox:
    return Toolbox.of(price, add)


def expert(messages: list[dict]) -> dict | str:
    """The stub's handler: looks both prices up (two calls in one turn), adds them, then answers.
    Every tool result must answer a call of the assistant message before it."""
    asked = {c["id"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []}
    results = {m["tool_call_id"]: m["content"] for m in messages if m["role"] == "tool"}
    assert set(results) <= asked, "a tool message answers no call"
    if "call_sum" in results:
        return f"Together they cost {results['call_sum']}."
    if "call_pen" in results:
        total = {"a": float(results["call_pen"]), "b": float(results["call_book"])}
        return {"content": "Now the sum.", "tool_calls": [tool_call("add", total, "call_sum")]}
    return {"content": None, "tool_calls": [tool_call("price", {"item": "pen"}, "call_pen"),
                                            tool_call("price", {"item": "book"}, "call_book")]}


def openai_cfg(server, **kw) -> OpenAITeacherConfig:
    fast = {"retry_base_delay": 0.01, "retry_max_delay": 0.05, "timeout": 5.0}
    return OpenAITeacherConfig(base_url=server.base_url, model="m", **{**fast, **kw})


def run_episode(teacher: CachedTeacher, tools: Toolbox, question: str = QUESTION, turns: int = 5) -> list[dict]:
    """Ask for the next message, run its tool calls and append their results, until a final answer."""
    messages = [{"role": "user", "content": question}]
    for _ in range(turns):
        [reply] = teacher.complete([act_request(INSTRUCTION, messages, tools.schemas)])
        assert reply is not None
        message = json.loads(reply)
        messages.append(message)
        if not message.get("tool_calls"):
            break
        for call in message["tool_calls"]:
            result = call_tool(tools, call["function"]["name"], call["function"]["arguments"])
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result.content})
    return messages


def test_openai_teacher_runs_a_tool_calling_episode_over_http(tmp_path):
    tools = toolbox()
    with StubServer(expert) as server:
        teacher = CachedTeacher(OpenAITeacher(openai_cfg(server)), TeacherCache(tmp_path / "c.sqlite"))
        messages = run_episode(teacher, tools)
        bodies = list(server.bodies)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "assistant", "tool", "assistant"]
    assert messages[-1] == {"role": "assistant", "content": "Together they cost 14.5."}
    assert messages[1]["tool_calls"] == [tool_call("price", {"item": "pen"}, "call_pen"),
                                         tool_call("price", {"item": "book"}, "call_book")]
    assert messages[4]["content"] == "Now the sum."  # content and tool calls in one message are both kept
    # what went over the wire: three turns, each with the tools and tool_choice, the episode so far
    assert server.requests == 3 and len(bodies) == 3
    for body, seen in zip(bodies, (1, 4, 6)):
        assert body["tools"] == tools.schemas and body["tool_choice"] == "auto"
        assert body["messages"][0] == {"role": "system", "content": INSTRUCTION}
        assert body["messages"][1:] == messages[:seen]
    second = bodies[1]["messages"]
    echoed = second[2]  # the assistant's calls sent back as they came, content null
    assert echoed["role"] == "assistant" and echoed["content"] is None
    assert [c["id"] for c in echoed["tool_calls"]] == [m["tool_call_id"] for m in second[3:5]]
    assert [m["content"] for m in second[3:5]] == ["2.5", "12.0"]
    assert {t["function"]["name"] for t in bodies[0]["tools"]} == {"price", "add"}
    # the stub counts words: the content's plus those of the calls' arguments ('{"item": "pen"}' is two)
    assert teacher.stats.paid == 3 and teacher.stats.tokens_out == (2 + 2) + (3 + 4) + 4


def test_a_rerun_of_the_episode_is_answered_by_the_cache(tmp_path):
    tools = toolbox()
    with StubServer(expert) as server:
        backend = OpenAITeacher(openai_cfg(server))
        first = run_episode(CachedTeacher(backend, TeacherCache(tmp_path / "c.sqlite")), tools)
        again = CachedTeacher(backend, TeacherCache(tmp_path / "c.sqlite"))  # a new process, same file
        assert run_episode(again, tools) == first
        assert server.requests == 3  # nothing more went out
        assert again.stats.paid == 0 and again.stats.requests == 3 and again.stats.tokens_out > 0
        # the tools are part of the key: the same episode offered other tools is a new request
        fewer = Toolbox.of(price)
        [reply] = again.complete([act_request(INSTRUCTION, first[:1], fewer.schemas)])
        assert json.loads(reply)["tool_calls"][0]["function"]["name"] == "price"
        assert server.requests == 4 and server.bodies[-1]["tools"] == fewer.schemas


def test_an_act_reply_with_neither_content_nor_tool_calls_is_retried_then_dropped(tmp_path):
    empty = [{"content": None, "tool_calls": []}, {"content": "  \n"}, {"content": None}]
    blank_tries = []

    def handler(messages):
        if messages[-1]["content"] != "blank":
            return "Hello."
        blank_tries.append(1)
        return empty[len(blank_tries) % len(empty)]

    with StubServer(handler) as server:
        cached = CachedTeacher(OpenAITeacher(openai_cfg(server, max_retries=2)), TeacherCache(tmp_path / "c.sqlite"))
        steps = [act_request(INSTRUCTION, [{"role": "user", "content": text}], toolbox().schemas)
                 for text in ("hi", "blank")]
        hello = json.dumps({"role": "assistant", "content": "Hello."})
        assert cached.complete(steps) == [hello, None]
        assert len(blank_tries) == 3 and server.requests == 4  # one try and two retries
        assert (cached.stats.retried, cached.stats.failed, cached.stats.dropped) == (2, 1, 1)
        hey = act_request(INSTRUCTION, [{"role": "user", "content": "hey"}], toolbox().schemas)
        assert cached.complete([steps[1], hey]) == [None, hello]  # a drop is never cached: asked again
        assert server.requests == 4 + 3 + 1 and cached.stats.paid == 4 and cached.stats.dropped == 2


def test_a_malformed_tool_call_is_retried_and_an_untidy_one_normalized(tmp_path):
    replies = iter([
        {"tool_calls": [{"id": "c1", "type": "function", "function": {"arguments": "{}"}}]},  # no name
        {"tool_calls": [{"function": {"name": "price", "arguments": {"item": "pen"}}}]},  # an object, no id
    ])
    with StubServer(lambda messages: next(replies)) as server:
        teacher = OpenAITeacher(openai_cfg(server, max_retries=1))
        step = act_request(INSTRUCTION, [{"role": "user", "content": "A pen?"}], toolbox().schemas)
        [reply] = teacher.complete([step])
        assert server.requests == 2 and teacher.stats.retried == 1 and teacher.stats.dropped == 0
    assert json.loads(reply) == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "price", "arguments": '{"item": "pen"}'}}]}
    call = json.loads(reply)["tool_calls"][0]["function"]
    assert call_tool(toolbox(), call["name"], call["arguments"]).content == "2.5"


def test_other_purposes_send_no_tools(tmp_path):
    with StubServer(lambda messages: "fine") as server:
        teacher = OpenAITeacher(openai_cfg(server))
        no_tools = act_request(INSTRUCTION, [{"role": "user", "content": "Hello"}], [])
        assert teacher.complete([TeacherRequest("answer", "Say fine.", input="x"), no_tools]) == [
            "fine", json.dumps({"role": "assistant", "content": "fine"})]
        assert all("tools" not in b and "tool_choice" not in b for b in server.bodies)


FUNCTION_TEACHER = '''
def teacher(request):
    """Looks the price up, then answers; a user message "drop" or "blank" gives nothing usable."""
    assert request.purpose == "act"
    last = request.messages()[-1]
    if last["role"] == "tool":
        return f"It costs {last['content']}."
    if last["content"] == "drop":
        return None
    if last["content"] == "blank":
        return "   "
    name = request.tool_schemas()[0]["function"]["name"]
    return {"content": "", "tool_calls": [{"function": {"name": name, "arguments": {"item": last["content"]}}}]}
'''


def test_function_teacher_acts_with_tool_calls_a_final_answer_or_nothing(tmp_path):
    (tmp_path / "agent_teacher.py").write_text(FUNCTION_TEACHER)
    teacher = CachedTeacher(FunctionTeacher("agent_teacher:teacher", tmp_path), TeacherCache(tmp_path / "c.sqlite"))
    tools = toolbox()
    user = [{"role": "user", "content": "pen"}]
    [calls] = teacher.complete([act_request(INSTRUCTION, user, tools.schemas)])
    assert json.loads(calls) == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "price", "arguments": '{"item": "pen"}'}}]}
    call = json.loads(calls)["tool_calls"][0]
    result = call_tool(tools, call["function"]["name"], call["function"]["arguments"])
    episode = [*user, json.loads(calls), {"role": "tool", "tool_call_id": call["id"], "content": result.content}]
    steps = [act_request(INSTRUCTION, episode, tools.schemas),
             act_request(INSTRUCTION, [{"role": "user", "content": "drop"}], tools.schemas),
             act_request(INSTRUCTION, [{"role": "user", "content": "blank"}], tools.schemas)]
    final, dropped, blank = teacher.complete(steps)
    assert json.loads(final) == {"role": "assistant", "content": "It costs 2.5."}
    assert dropped is None and blank is None
    assert teacher.stats.failed == 2 and teacher.stats.paid == 4
    assert teacher.complete(steps[:1]) == [final] and teacher.stats.paid == 4  # cached
