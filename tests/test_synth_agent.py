"""The synthesis methods for agent tasks: learning from expert failures (EEF) and refinement
(AgentRefine), each on a small shop environment with a scripted function teacher whose mistakes are
known; and a task's kind deciding which methods it takes."""

import json
import shutil
from pathlib import Path

import pytest

from protege.agents.continuation import continue_episodes
from protege.agents.environment import load_tools
from protege.agents.episodes import Step
from protege.config import ConfigError, Example, SynthConfig, TaskSpec, load_task, parse_spec
from protege.registry import METRIC
from protege.runs import read_json, read_jsonl
from protege.synth.registry import AgentSynth, SynthContext, run_methods
from protege.synth.trajectories import teacher_trajectories
from protege.teachers import CachedTeacher, TeacherCache
from protege.teachers.function import FunctionTeacher

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop-agent"
INSTRUCTION = "Buy what the customer asks for, then say what you bought."

STORE = '''
class Store:
    def __init__(self):
        self.stock = {"apple": 3, "pear": 5, "plum": 4}
        self.basket = []

    def look(self, item: str) -> int:
        """How many of an item are in stock.

        Args:
            item: The item's name.
        """
        return self.stock[item]

    def add(self, item: str, count: int) -> str:
        """Put items in the basket.

        Args:
            item: The item's name.
            count: How many.
        """
        self.basket.append([item, count])
        return "ok"
'''

# The expert looks the item up, adds it to the basket, then says so. Its known mistakes: greedy (sample 0)
# it gives up on apples after looking; sample 1 first calls a tool that does not exist and adds one too
# many. A call the tools refused (an error result) it reads and makes again; others are what it knows.
TEACHER = '''
import json
import re


def call(name, **arguments):
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def teacher(request):
    messages = request.messages()
    count, item = re.fullmatch(r"buy (\\d+) (\\w+)", messages[0]["content"]).groups()
    count = int(count)
    done = [m for m in messages if m["role"] == "tool" and not m["content"].startswith("error")]
    if request.sample == 1 and len(messages) == 1:
        return call("peek", item=item)
    if not done:
        return call("look", item=item)
    if len(done) == 1:
        if request.sample == 0 and item == "apple":
            return "sorry, none left"
        return call("add", item=item, count=count + (request.sample == 1))
    return f"bought {count} {item}"
'''


def bought(episode):
    """The judge: the basket holds exactly what was asked for, and the answer says so."""
    count, item = episode.request.split()[1:]
    return (episode.finished and episode.answer == f"bought {count} {item}"
            and episode.toolbox.environment.basket == [[item, int(count)]])


@pytest.fixture
def store(tmp_path):
    (tmp_path / "store.py").write_text(STORE)
    (tmp_path / "expert.py").write_text(TEACHER)
    teacher = CachedTeacher(FunctionTeacher("expert:teacher", tmp_path), TeacherCache(tmp_path / "cache.sqlite"))
    environment = load_tools({"environment": "store:Store"}, tmp_path)
    return teacher, environment


def episodes_of(teacher, environment, requests):
    """The teacher's own greedy episodes, judged: the data an agent method starts from."""
    return teacher_trajectories(teacher, environment, INSTRUCTION, [Example(input=r) for r in requests], 6,
                                "teacher", 0, METRIC.make("exact"), verifier=bought)


def context(teacher, environment, budget=200):
    return SynthContext(teacher, INSTRUCTION, budget, agent=AgentSynth(environment, bought, 6))


def step(name, **options):
    return SynthConfig(methods=[{"name": name, **options}]).methods[0]


def assistant_turns(record):
    return [m for m in record["messages"] if m["role"] == "assistant"]


def calls(record):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for m in record["messages"] for c in m.get("tool_calls") or []]


# ---- learning from expert failures ------------------------------------------------------------

def test_expert_failures_continue_failed_episodes_from_their_useful_states(store):
    teacher, environment = store
    data = episodes_of(teacher, environment, ["buy 2 apple", "buy 1 pear"])
    assert [r["meta"]["success"] for r in data] == [False, True]  # greedy, the expert gives up on apples
    ctx = context(teacher, environment)
    out = run_methods(data, [step("expert-failures", items=0, samples=1, prefixes=2, temperature=0.7)], ctx)
    made = out[len(data):]
    assert {r["meta"]["source"] for r in made} == {"expert-failures"} and all(r["meta"]["success"] for r in made)
    # apple: the data's failure continued after its lookup; the sampled failure (peek, look, add one too
    # many) continued after its lookup, while after its wrong add the continuation could only fail
    by_origin = {(record_request(r), r["meta"]["explored"]): r for r in made}
    assert sorted(by_origin) == [("buy 1 pear", "sampled"), ("buy 2 apple", data[0]["id"]),
                                 ("buy 2 apple", "sampled")]
    from_data = by_origin["buy 2 apple", data[0]["id"]]
    assert from_data["messages"][:4] == data[0]["messages"][:4]  # system, request, look, its result
    assert from_data["meta"]["prefix_turns"] == 1 and from_data["meta"]["sample"] == 2
    assert calls(from_data) == [("look", {"item": "apple"}), ("add", {"item": "apple", "count": 2})]
    assert from_data["messages"][-1]["content"] == "bought 2 apple" and from_data["meta"]["alternative"]
    assert not any("train" in m for m in from_data["messages"])
    # a prefix that holds a failed call (peek) keeps it as context, out of the loss
    sampled = by_origin["buy 2 apple", "sampled"]
    peek = next(m for m in assistant_turns(sampled) if m.get("tool_calls")
                and m["tool_calls"][0]["function"]["name"] == "peek")
    assert peek["train"] is False and sampled["meta"]["prefix_turns"] == 2
    assert [m.get("train", True) for m in assistant_turns(sampled)] == [False, True, True, True]
    note = ctx.notes[-1]
    assert note["dropped"] == {"continuation failed": 2} and note["records"] == 3
    # sampled episodes: 4 turns each for 2 requests; continuations: 2 + 1 + 2 (apple) + 1 + 2 (pear)
    assert note["requests"] == ctx.used() == 16


def record_request(record):
    return next(m["content"] for m in record["messages"] if m["role"] == "user")


def test_expert_failures_stop_at_the_budget_and_say_so(store):
    teacher, environment = store
    data = episodes_of(teacher, environment, ["buy 2 apple"])
    # 5 requests afford no sampled episode (it may take 6 turns), but the data failure's continuation (5)
    ctx = context(teacher, environment, budget=5)
    out = run_methods(data, [step("expert-failures", samples=1)], ctx)
    assert ctx.notes[-1]["dropped"] == {"budget": 1} and ctx.used() <= 5
    assert [r["meta"]["explored"] for r in out[1:]] == [data[0]["id"]]


def test_a_continuation_restores_the_state_by_running_the_prefix_calls_again(store):
    _, environment = store
    add = {"id": "a", "type": "function", "function": {"name": "add", "arguments": '{"item": "plum", "count": 1}'}}
    prefix = [{"role": "user", "content": "buy 1 plum"}, {"role": "assistant", "content": None, "tool_calls": [add]},
              {"role": "tool", "tool_call_id": "a", "content": "ok"}]
    answer = [Step({"role": "assistant", "content": "bought 1 plum"})]
    done, = continue_episodes(environment, [prefix], lambda histories: answer, 6, bought)
    assert done.score == 1.0 and done.turns == 2 and done.calls == 1  # the basket the replayed add filled
    differs = [*prefix[:2], {**prefix[2], "content": "not what the tool says"}]
    assert continue_episodes(environment, [differs], lambda histories: answer, 6) == [None]


# ---- refinement --------------------------------------------------------------------------------

def test_agent_refine_breaks_a_call_and_keeps_the_corrected_episode_with_the_mistake_untrained(store):
    teacher, environment = store
    data = episodes_of(teacher, environment, ["buy 2 apple", "buy 1 pear", "buy 3 plum"])
    ctx = context(teacher, environment)
    out = run_methods(data, [step("agent-refine", items=0)], ctx)
    made = out[len(data):]
    assert len(made) == 2 and ctx.notes[-1]["dropped"] == {}  # the two successful episodes, each refined
    for record in made:
        original = next(r for r in data if r["id"] == record["meta"]["refined"])
        broken = record["meta"]["broken_turn"]
        wrong, error = record["messages"][broken], record["messages"][broken + 1]
        assert record["meta"]["source"] == "agent-refine" and record["meta"]["success"] is True
        assert wrong["train"] is False and [m.get("train", True) for m in assistant_turns(record)].count(False) == 1
        assert error["role"] == "tool" and error["content"].startswith("error: ")
        assert record["messages"][:broken] == original["messages"][:broken]  # the episode up to the mistake
        assert wrong["tool_calls"] != original["messages"][broken]["tool_calls"]
        # the teacher read the error and made the right call: the original calls, in order, after the mistake
        k = (broken - 2) // 2  # the broken call's place: after the system message and the request, a call a turn
        assert calls(record)[:k] + calls(record)[k + 1:] == calls(original)
        assert record["messages"][-1] == original["messages"][-1] and record["meta"]["tool_errors"] == 1
    assert {r["meta"]["mistake"] for r in made} <= {"unknown-tool", "missing-argument", "wrong-type"}
    again = run_methods(data, [step("agent-refine", items=0)], context(teacher, environment))
    assert again[len(data):] == made  # the mistakes are drawn by a seed


@pytest.mark.parametrize("mistake, error", [("unknown-tool", "unknown tool"), ("missing-argument", "Field required"),
                                            ("wrong-type", "bad arguments")])
def test_each_mistake_gives_the_tools_real_error(store, mistake, error):
    teacher, environment = store
    data = episodes_of(teacher, environment, ["buy 1 pear"])
    made = run_methods(data, [step("agent-refine", mistakes=[mistake])], context(teacher, environment))[1:]
    assert made[0]["meta"]["mistake"] == mistake
    assert error in made[0]["messages"][made[0]["meta"]["broken_turn"] + 1]["content"]


def test_agent_refine_drops_an_episode_the_teacher_does_not_recover(store, tmp_path):
    teacher, environment = store
    data = episodes_of(teacher, environment, ["buy 1 pear"])
    # a teacher that repeats whatever it did last when a call fails never recovers
    (tmp_path / "stubborn.py").write_text(TEACHER.replace('    done = [', '    if messages[-1]["role"] == "tool" and '
                                                          'messages[-1]["content"].startswith("error"):\n'
                                                          '        return "I give up"\n    done = ['))
    stubborn = CachedTeacher(FunctionTeacher("stubborn:teacher", tmp_path), TeacherCache(tmp_path / "s.sqlite"))
    ctx = context(stubborn, environment)
    assert run_methods(data, [step("agent-refine")], ctx) == data
    assert ctx.notes[-1]["dropped"] == {"not corrected: the episode failed": 1}


# ---- which tasks take which methods ----------------------------------------------------------------

def test_a_method_for_the_other_kind_of_task_is_refused_in_one_line():
    test = [Example(input="a", output="b")]
    with pytest.raises(ValueError) as refused:
        TaskSpec(test=test, tools={"environment": "shop:Shop"}, synth={"methods": ["magpie"]})
    assert ("synth method magpie works on single-turn tasks, and this is an agent task (it has tools); "
            "methods for it: agent-refine, expert-failures") in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        parse_spec("test: [{input: a, output: b}]\nsynth:\n  methods: [agent-refine]\n", "task.yaml")
    message = str(refused.value)
    assert "\n" not in message and "synth method agent-refine works on agent tasks" in message
    assert "a single-turn task (no tools)" in message
    TaskSpec(test=test, tools={"environment": "shop:Shop"}, synth={"methods": ["expert-failures", "agent-refine"]})


def test_the_methods_tables_say_which_methods_are_for_agent_tasks():
    from protege.config import works_on
    from protege.registry import SYNTH
    for name in SYNTH.names():
        description = SYNTH.options(name).model_fields["name"].description
        assert ("agent tasks" in description) == (works_on(SYNTH.options(name)) == "agent"), name


# ---- in the loop ------------------------------------------------------------------------------------

def test_round0_runs_agent_methods_and_a_change_of_their_options_reruns_the_stage(tmp_path):
    from protege.loop.data import synthesize_round0
    from protege.loop.state import prepare
    shop = tmp_path / "shop"
    shutil.copytree(SHOP, shop)
    sets = ["student.model=tiny:0", "budget.requests=120", "synth.label_inputs=false",
            "synth.methods=[{name: agent-refine, items: 4}]"]
    state = prepare(load_task(shop, sets), tmp_path / "run")
    folder = synthesize_round0(state).data.parent
    data, notes = read_jsonl(folder / "data.jsonl"), read_json(folder / "methods.json")
    refined = [r for r in data if r["meta"]["source"] == "agent-refine"]
    assert len(refined) == 4 and notes["steps"][0]["method"] == "agent-refine"
    assert all(r["meta"]["success"] and sum(m.get("train") is False for m in r["messages"]) == 1 for r in refined)
    assert state.budget.spent <= 120
    again = prepare(load_task(shop, [*sets[:3], "synth.methods=[{name: agent-refine, items: 2}]"]), tmp_path / "run")
    assert synthesize_round0(again).data.parent != folder
