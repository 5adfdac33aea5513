"""The local and self teachers act as agents the way the student acts in evaluation (models.acting), their
turns are cached and checked like anyone's, and an OpenAI teacher's step that fails alone fails alone.

A tiny model trained here for a few seconds to take two exact turns (call price for the pen, then answer)
on the prompts the student's renderer writes makes the success path deterministic: a teacher that
rendered the episode in any other way (no tool definitions, another system message, other call ids)
would not reproduce them. The untrained tiny model gives garbage, which must come back as None or valid
JSON, never as a crash."""

import json

import pytest
from openai_stub import StubServer, tool_call

from protege.agents.environment import load_tools
from protege.agents.episodes import run_episodes, teacher_policy
from protege.models.acting import agent_chat
from protege.models.chat_format import chat_text, parse_assistant
from protege.teachers import CachedTeacher, TeacherCache, TeacherError, TeacherRequest, act_request
from protege.teachers.function import FunctionTeacher
from protege.teachers.local import LocalTeacher, LocalTeacherConfig, batches, turn_reply
from protege.teachers.openai_api import OpenAITeacher, OpenAITeacherConfig
from protege.teachers.self_verify import SelfTeacher

INSTRUCTION = "Answer with the shop's tools."
PRICES = '''
def price(item: str) -> float:
    """The price of one item.

    Args:
        item: The item's name.
    """
    return {"pen": 2.5, "book": 12.0}[item]
'''
CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_0", "type": "function", "function": {"name": "price", "arguments": '{"item": "pen"}'}}]}
TURNS = [  # (episode so far, what the trained model writes next)
    ([{"role": "user", "content": "pen?"}], '<tool_call>{"name": "price", "arguments": {"item": "pen"}}</tool_call>'),
    ([{"role": "user", "content": "pen?"}, CALL, {"role": "tool", "tool_call_id": "call_0", "content": "2.5"}],
     "It costs 2.5."),
]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shop")
    (folder / "prices.py").write_text(PRICES)
    return load_tools({"functions": ["prices:price"]}, folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shop):
    """A tiny model that writes TURNS' replies on the student's own prompts, saved as a model folder."""
    import torch

    from protege.models import load_model
    from protege.models.acting import act
    from protege.models.tiny import build_tiny

    folder = build_tiny(tmp_path_factory.mktemp("trained") / "model", seed=0)
    model, tokenizer = load_model(folder)
    rows = []
    for history, reply in TURNS:
        prompt = tokenizer.encode(chat_text(agent_chat(INSTRUCTION, history), shop.schemas, tokenizer, True),
                                  add_special_tokens=False)
        rows.append((prompt, tokenizer.encode(reply, add_special_tokens=False) + [tokenizer.eos_token_id]))
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    episodes = [agent_chat(INSTRUCTION, history) for history, _ in TURNS]
    for step in range(400):
        model.train()
        loss = sum(model(input_ids=torch.tensor([p + t]), labels=torch.tensor([[-100] * len(p) + t])).loss
                   for p, t in rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 5 == 4 and loss.item() < 0.2:
            model.eval()
            if [t.message for t in act(model, tokenizer, episodes, shop.schemas, 80)] == \
                    [CALL, {"role": "assistant", "content": "It costs 2.5."}]:
                break
    else:
        pytest.fail("the tiny model did not learn its two turns")
    model.save_pretrained(folder)
    return folder


def local_teacher(model: str, **kw) -> LocalTeacher:
    return LocalTeacher(LocalTeacherConfig(model=model, device="cpu", **{"max_tokens": 80, **kw}))


def run_shop(teacher: CachedTeacher, shop, requests=("pen?",), turns=3):
    return run_episodes(shop, list(requests), teacher_policy(teacher, INSTRUCTION, shop.schemas), turns,
                        score=lambda e: e.answer == "It costs 2.5.")


def test_the_local_teacher_acts_as_the_student_would_and_a_rerun_pays_nothing(tmp_path, trained, shop):
    backend = local_teacher(str(trained))
    cached = CachedTeacher(backend, TeacherCache(tmp_path / "c.sqlite"))
    [episode] = run_shop(cached, shop)
    assert episode.messages == [*TURNS[1][0], {"role": "assistant", "content": "It costs 2.5."}]
    assert episode.finished and episode.score == 1.0 and episode.calls == 1 and episode.invalid_turns == 0
    assert (cached.stats.paid, cached.stats.failed) == (2, 0) and cached.stats.tokens_out > 0
    fresh = local_teacher(str(trained))
    again = CachedTeacher(fresh, TeacherCache(tmp_path / "c.sqlite"))
    assert run_shop(again, shop)[0].messages == episode.messages
    assert again.stats.paid == 0 and again.stats.requests == 2 and fresh._loaded is None


def test_the_self_teacher_acts_through_the_same_path(tmp_path, trained, shop):
    from protege.models import load_model
    loads = []

    def load():
        loads.append(1)
        return load_model(trained)

    def teacher():
        return CachedTeacher(SelfTeacher(load, lambda text, answer: True, samples=2, temperature=0.0,
                                         max_new_tokens=80, identity="trained"), TeacherCache(tmp_path / "c.sqlite"))
    first = teacher()
    [episode] = run_shop(first, shop)
    assert episode.finished and episode.score == 1.0 and episode.messages[1] == CALL
    assert first.stats.paid == 2 and loads == [1]
    again = teacher()
    assert run_shop(again, shop)[0].messages == episode.messages
    assert again.stats.paid == 0 and loads == [1]  # answered by the cache: the student never loaded again


def test_the_self_teacher_keeps_no_invalid_turn(shop):
    from protege.models import load_model, model_dir
    loaded = load_model(model_dir("tiny:0"))  # random: its turns never hold a valid tool call
    teacher = SelfTeacher(lambda: loaded, lambda text, answer: True, samples=2, max_new_tokens=12)
    request = act_request(INSTRUCTION, TURNS[0][0], shop.schemas)
    [reply] = teacher.complete([request])
    assert reply is None or (json.loads(reply)["content"] and "tool_calls" not in json.loads(reply))


def test_a_random_local_teacher_gives_none_or_valid_turns_and_counts_what_it_drops(tmp_path, shop):
    cached = CachedTeacher(local_teacher("tiny:0", max_tokens=12, batch_size=2), TeacherCache(tmp_path / "c.sqlite"))
    acts = [act_request(INSTRUCTION, [{"role": "user", "content": t}], shop.schemas) for t in ("pen?", "book?", "ink?")]
    replies = cached.complete([*acts, TeacherRequest("answer", INSTRUCTION, input="pen?")])
    for reply in replies[:3]:
        message = json.loads(reply) if reply else {"role": "assistant", "content": "x"}
        assert message["role"] == "assistant" and (message["content"] or message["tool_calls"])
    assert cached.stats.failed == replies.count(None) == cached.stats.dropped
    episodes = run_shop(cached, shop, ("pen?", "book?", "ink?", "cup?"))
    assert all(e.turns >= 1 for e in episodes) and sum(e.score for e in episodes) == 0


def test_turn_reply_keeps_calls_and_answers_and_drops_what_cannot_be_read(shop):
    tools = shop.schemas
    call = turn_reply(parse_assistant(TURNS[0][1], tools, first_id=3))
    assert json.loads(call)["tool_calls"][0] == {**CALL["tool_calls"][0], "id": "call_3"}
    assert json.loads(turn_reply(parse_assistant("It costs 2.5.", tools))) == {
        "role": "assistant", "content": "It costs 2.5."}
    unknown = turn_reply(parse_assistant('<tool_call>{"name": "nope", "arguments": {}}</tool_call>', tools))
    assert json.loads(unknown)["tool_calls"][0]["function"]["name"] == "nope"  # kept: the tool answers with an error
    assert turn_reply(parse_assistant("Let me look. <tool_call>{price: pen}</tool_call>", tools)) is None
    assert turn_reply(parse_assistant("  \n", tools)) is None


def test_agent_steps_batch_apart_from_other_requests_and_by_their_tools(shop):
    step = act_request(INSTRUCTION, TURNS[0][0], shop.schemas)
    other = act_request(INSTRUCTION, TURNS[0][0], [])
    answer = TeacherRequest("answer", INSTRUCTION, input="pen?")
    assert batches([step, answer, other, step, answer], 8) == [[0, 3], [1, 4], [2]]


BAD_TEACHER = '''
def teacher(request):
    """Calls a tool that does not exist, then one with an argument its schema refuses, then answers."""
    turn = sum(m["role"] == "assistant" for m in request.messages())
    calls = [("nope", {}), ("price", {"item": 3})]
    if turn == len(calls):
        return "done"
    name, arguments = calls[turn]
    return {"tool_calls": [{"function": {"name": name, "arguments": arguments}}]}
'''


def test_a_teachers_turns_are_checked_against_the_schemas_like_the_students(tmp_path, shop):
    (tmp_path / "bad_teacher.py").write_text(BAD_TEACHER)
    teacher = CachedTeacher(FunctionTeacher("bad_teacher:teacher", tmp_path), TeacherCache(tmp_path / "c.sqlite"))
    [episode] = run_shop(teacher, shop, turns=4)
    assert episode.finished and episode.turns == 3 and episode.invalid_turns == 2 and episode.tool_errors == 2
    assert episode.messages[2]["content"].startswith("error: unknown tool 'nope'")


# --- the OpenAI teacher: a step that fails alone fails alone

def openai_cfg(server, **kw) -> OpenAITeacherConfig:
    fast = {"retry_base_delay": 0.01, "retry_max_delay": 0.05, "timeout": 5.0, "max_retries": 1}
    return OpenAITeacherConfig(base_url=server.base_url, model="m", **{**fast, **kw})


def test_an_episodes_step_failing_alone_ends_that_episode_and_the_run_goes_on(tmp_path, shop):
    """"pen?" calls price, then its second step, alone in its batch, gets empty replies; "hi" answers at
    once. Neither the empty replies nor a 400 stop the run: the server is up, the fault is the step's."""
    def expert(messages):
        if messages[-1]["content"] == "hi":
            return "Hello."
        if messages[-1]["role"] == "tool":
            return ""
        return {"tool_calls": [tool_call("price", {"item": "pen"})]}

    with StubServer(expert) as server:
        cached = CachedTeacher(OpenAITeacher(openai_cfg(server)), TeacherCache(tmp_path / "c.sqlite"))
        pen, hi = run_shop(cached, shop, ("pen?", "hi"))
        assert hi.finished and hi.answer == "Hello."
        assert pen.turns == 2 and not pen.finished and pen.messages[-1] == {"role": "assistant", "content": ""}
        assert (cached.stats.paid, cached.stats.failed, cached.stats.dropped) == (3, 1, 1)
    with StubServer(expert, fault=lambda body, attempt: "400") as server:
        teacher = OpenAITeacher(openai_cfg(server, concurrency=1))
        assert teacher.complete([act_request(INSTRUCTION, TURNS[0][0], shop.schemas)]) == [None]
        assert teacher.complete([act_request(INSTRUCTION, [{"role": "user", "content": t}], shop.schemas)
                                 for t in ("a", "b", "c")]) == [None] * 3
        assert server.requests == 4 and teacher.stats.failed == 4  # a 400 is not retried


def test_a_step_whose_server_is_gone_is_still_one_clear_error(shop):
    step = act_request(INSTRUCTION, TURNS[0][0], shop.schemas)
    with StubServer(lambda messages: "x", fault=lambda body, attempt: "drop") as server, \
            pytest.raises(TeacherError, match=r"failed every request \(1 of them, up to 2 tries each\)"):
        OpenAITeacher(openai_cfg(server)).complete([step])
