"""The teacher layer made dependable: bounded concurrency, retries, faults, budget, crash-safe cache,
the local teacher. Every OpenAI-protocol test talks to a real HTTP server on 127.0.0.1."""

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from openai_stub import FAULTS, StubServer, seeded_faults
from protege.config import load_task
from protege.runs import Run, read_json
from protege.synth.label import label_inputs
from protege.teachers import CachedTeacher, TeacherCache, TeacherError, TeacherRequest, affordable, build_teacher
from protege.teachers.base import cache_key
from protege.teachers.local import LocalTeacherConfig, batches
from protege.teachers.openai_api import (OpenAITeacher, OpenAITeacherConfig, Unusable, backoff_delay, reply_text,
                                         retry_after)

SRC = Path(__file__).resolve().parents[1] / "src"


def shout(messages):
    return messages[-1]["content"].upper()


def ask(texts):
    return [TeacherRequest("answer", "Shout it.", input=t) for t in texts]


def openai_cfg(server, **kw):
    fast = {"retry_base_delay": 0.01, "retry_max_delay": 0.05, "timeout": 5.0}
    return OpenAITeacherConfig(base_url=server.base_url, model="m", **{**fast, **kw})


# --- pure functions, against numbers worked out by hand

def test_backoff_doubles_up_to_the_cap_and_waits_in_the_upper_half():
    assert backoff_delay(0, 0.5, 8.0, 0.0) == 0.25  # ceiling 0.5, lower end of [0.25, 0.5)
    assert backoff_delay(3, 0.5, 8.0, 0.5) == 3.0  # ceiling 0.5 * 2^3 = 4, 2 * 1.5
    assert backoff_delay(10, 0.5, 8.0, 0.75) == 7.0  # ceiling capped at 8, 4 * 1.75


def test_retry_after_reads_milliseconds_seconds_and_dates():
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "3"}) == 3.0
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert retry_after({"retry-after": date}, now=parsedate_to_datetime(date).timestamp() - 5) == 5.0
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None


def test_affordable_is_what_the_rest_of_the_budget_buys_at_the_mean_cost():
    assert affordable(1000, 300, 3, unpriced=7) == 10  # 100 tokens a request so far
    assert affordable(99, 300, 3, unpriced=7) == 0  # not enough left for one more average request
    assert affordable(0, 300, 3, unpriced=7) == 0
    assert affordable(50, 0, 4, unpriced=7) == 7  # no cost seen: the caller decides


def test_reply_text_takes_the_first_choice_and_rejects_empty_or_malformed_answers():
    assert reply_text({"choices": [{"message": {"content": "  hi \n"}}]}) == "hi"
    for body in [{"choices": [{"message": {"content": " "}}]}, {"choices": []}, {"id": "c"}, "text",
                 {"choices": [{"message": {"content": None}}]}]:
        with pytest.raises(Unusable):
            reply_text(body)


# --- the OpenAI backend against a real local server

def test_requests_in_flight_never_pass_the_concurrency_bound():
    with StubServer(shout, delay=0.05) as server:
        teacher = OpenAITeacher(openai_cfg(server, concurrency=4))
        texts = [f"w{i}" for i in range(24)]
        assert teacher.complete(ask(texts)) == [t.upper() for t in texts]
    assert server.max_in_flight == 4 and server.requests == 24


def test_each_reply_is_handed_on_as_it_arrives():
    def slow_first(messages):
        if messages[-1]["content"] == "slow":
            time.sleep(1.5)
        return shout(messages)

    seen = []
    with StubServer(slow_first) as server:
        start = time.perf_counter()
        OpenAITeacher(openai_cfg(server, concurrency=4)).complete(
            ask(["slow", "a", "b"]), on_reply=lambda i, reply, usage: seen.append((i, time.perf_counter() - start)))
    assert sorted(i for i, _ in seen[:2]) == [1, 2] and seen[2][0] == 0
    assert seen[1][1] < 1.0 < seen[2][1]  # the fast replies did not wait for the slow one


def test_429_waits_what_retry_after_says():
    with StubServer(shout, fault=lambda body, attempt: "429" if attempt == 0 else None, retry_after="0.4") as server:
        teacher = OpenAITeacher(openai_cfg(server, retry_base_delay=0.001))
        start = time.perf_counter()
        assert teacher.complete(ask(["x"])) == ["X"]
        assert time.perf_counter() - start >= 0.4
    assert server.requests == 2 and teacher.stats.retried == 1 and teacher.stats.failed == 0


def test_a_request_failing_every_try_gives_none_and_the_rest_still_come_back():
    def fault(body, attempt):
        return "500" if body["messages"][-1]["content"] == "bad" else None

    with StubServer(shout, fault=fault) as server:
        teacher = OpenAITeacher(openai_cfg(server, max_retries=3, concurrency=2))
        assert teacher.complete(ask(["a", "bad", "c"])) == ["A", None, "C"]
    assert server.requests == 2 + 4 and teacher.stats.failed == 1 and teacher.stats.retried == 3


def test_every_request_failing_every_try_is_one_clear_error():
    with StubServer(shout, fault=lambda body, attempt: "503") as server:
        with pytest.raises(TeacherError, match=rf"{server.base_url}.*3 of them, up to 3 tries each.*503"):
            OpenAITeacher(openai_cfg(server, max_retries=2, concurrency=3)).complete(ask(["a", "b", "c"]))
    assert server.requests == 9


def test_an_endpoint_that_never_answers_fails_after_one_round_not_after_every_request():
    with StubServer(shout, fault=lambda body, attempt: "timeout", stall=3.0) as server:
        cfg = openai_cfg(server, concurrency=4, max_retries=1, timeout=0.3)
        start = time.perf_counter()
        with pytest.raises(TeacherError, match=rf"{server.base_url}.*4 of them, up to 2 tries each\): timeout"):
            OpenAITeacher(cfg).complete(ask([f"q{i}" for i in range(200)]))
        assert time.perf_counter() - start < 2.5
    assert server.requests <= 4 * 2 + 4  # the first round's tries, and the next four's first tries at most


def test_a_wrong_key_stops_at_once_without_retrying():
    with StubServer(shout, fault=lambda body, attempt: "401") as server:
        with pytest.raises(TeacherError, match="401"):
            OpenAITeacher(openai_cfg(server, concurrency=1)).complete(ask(["a", "b", "c"]))
    assert server.requests == 1


def test_malformed_and_empty_replies_are_retried_then_dropped_and_never_cached(tmp_path):
    def fault(body, attempt):
        return {"x": "garbage", "y": "empty"}.get(body["messages"][-1]["content"])

    with StubServer(shout, fault=fault) as server:
        teacher = CachedTeacher(OpenAITeacher(openai_cfg(server, max_retries=2)), TeacherCache(tmp_path / "c.sqlite"))
        assert teacher.complete(ask(["x", "y", "z"])) == [None, None, "Z"]
    assert server.requests == 3 + 3 + 1
    s = teacher.stats
    assert (s.paid, s.failed, s.dropped, s.retried) == (3, 2, 2, 4)
    keys = [cache_key(teacher.backend.identity(), r, {}) for r in ask(["x", "y", "z"])]
    assert [teacher.cache.get(k) for k in keys] == [None, None, "Z"]


def test_complete_works_inside_a_running_event_loop():
    async def from_a_notebook(teacher):
        return teacher.complete(ask(["a"]))

    with StubServer(shout) as server:
        assert asyncio.run(from_a_notebook(OpenAITeacher(openai_cfg(server)))) == ["A"]


def test_thirty_percent_faults_of_every_kind_give_the_same_dataset_as_none(tmp_path):
    inputs = [f"item number {i}" for i in range(120)]

    def dataset(fault, name):
        with StubServer(shout, fault=fault, stall=3.0) as server:
            cfg = openai_cfg(server, concurrency=16, max_retries=8, timeout=0.5)
            teacher = CachedTeacher(OpenAITeacher(cfg), TeacherCache(tmp_path / f"{name}.sqlite"))
            records, unanswered = label_inputs(teacher, "Shout it.", inputs, "teacher", 0)
        return records, unanswered, teacher.stats, server

    clean, clean_missing, _, _ = dataset(None, "clean")
    faulty, faulty_missing, stats, server = dataset(seeded_faults(0.3, seed=3), "faulty")
    assert faulty == clean and len(clean) == 120 and clean_missing == faulty_missing == 0
    injected = sum(server.faults.values())
    assert set(server.faults) == set(FAULTS) and 0.2 < injected / server.requests < 0.4
    assert stats.retried >= injected and stats.failed == 0  # a client timeout may add a retry of its own


# --- the cache: token counts, and a run killed midway

def test_tokens_in_and_out_are_counted_for_paid_and_cached_replies(tmp_path):
    # the stub counts words: "Shout it." + "a b" = 4 in, "A B" = 2 out; "Shout it." + "c" = 3 in, "C" = 1 out
    with StubServer(shout) as server:
        first = CachedTeacher(OpenAITeacher(openai_cfg(server)), TeacherCache(tmp_path / "c.sqlite"))
        first.complete(ask(["a b", "c"]))
        again = CachedTeacher(OpenAITeacher(openai_cfg(server)), TeacherCache(tmp_path / "c.sqlite"))
        again.complete(ask(["c", "a b"]))
    assert (first.stats.tokens_in, first.stats.tokens_out, first.stats.paid) == (7, 3, 2)
    assert (again.stats.tokens_in, again.stats.tokens_out, again.stats.paid) == (7, 3, 0)


def test_a_token_allowance_stops_sending_once_the_next_request_would_not_fit(tmp_path):
    # every request costs 3 tokens in ("Shout it." + one word) and 1 out: 4 in all
    with StubServer(shout) as server:
        teacher = CachedTeacher(OpenAITeacher(openai_cfg(server)), TeacherCache(tmp_path / "c.sqlite"))
        with teacher.allowance(14):
            replies = teacher.complete(ask([f"w{i}" for i in range(10)]))
        assert teacher.token_limit is None
    # one request prices the rest (4 tokens), 10 left buy 2 more, the 2 left after them buy none
    assert replies == ["W0", "W1", "W2"] + [None] * 7
    assert server.requests == 3 and teacher.stats.tokens == 12 and teacher.stats.over_budget == 7


KILLED_RUN = """
import sys
from protege.teachers import CachedTeacher, TeacherCache, TeacherRequest
from protege.teachers.openai_api import OpenAITeacher, OpenAITeacherConfig
cfg = OpenAITeacherConfig(base_url=sys.argv[1], model="m", concurrency=4)
requests = [TeacherRequest("answer", "Shout it.", input=f"item {i}") for i in range(200)]
CachedTeacher(OpenAITeacher(cfg), TeacherCache(sys.argv[2])).complete(requests)
"""


def test_a_run_killed_midway_repays_only_what_never_came_back(tmp_path):
    path = tmp_path / "c.sqlite"
    texts = [f"item {i}" for i in range(200)]
    with StubServer(shout, delay=0.02) as server:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, server.base_url, str(path)], env=env)
        deadline = time.time() + 30
        while server.answered < 60 and time.time() < deadline and child.poll() is None:
            time.sleep(0.005)
        answered_before_kill = server.answered
        child.send_signal(signal.SIGKILL)
        child.wait()
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        cached = db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
        db.close()
        # at most one answer per connection (4) was on its way to the process when it died
        assert answered_before_kill - 4 <= cached < 200
        before = server.requests
        rerun = CachedTeacher(OpenAITeacher(openai_cfg(server, concurrency=8)), TeacherCache(path))
        assert rerun.complete(ask(texts)) == [t.upper() for t in texts]
    assert server.requests - before == rerun.stats.paid == 200 - cached


# --- the pipeline: tokens per stage in teacher.json, and the token budget

def test_a_stage_records_its_tokens_and_the_budget_charges_them(tmp_path, examples_dir):
    from dataclasses import dataclass
    from protege.loop.stage import StageInputs, teacher_stage
    from protege.loop.state import Budget, RunState

    @dataclass(frozen=True)
    class Asked(StageInputs):
        k: int

    task = load_task(examples_dir / "iso-dates", ["budget.requests=50", "budget.tokens=20"])

    def state_of(teacher):
        return RunState(task=task, run=Run(tmp_path / "run"), device="cpu", base=None, students=None,
                        teacher=teacher, budget=Budget(50, 20))
    with StubServer(shout) as server:
        teacher = CachedTeacher(OpenAITeacher(openai_cfg(server)), TeacherCache(tmp_path / "c.sqlite"))
        state = state_of(teacher)
        build = lambda out: teacher.complete(ask(["a b", "c"])) and None  # noqa: E731 (7 in, 3 out, as above)
        folder = teacher_stage(state, "synth-x", Asked(1), build)
        again = state_of(teacher)
        teacher_stage(again, "synth-x", Asked(1), build)  # done already: charged from its teacher.json
    used = read_json(folder / "teacher.json")
    assert (used["requests"], used["tokens_in"], used["tokens_out"], used["retried"]) == (2, 7, 3, 0)
    budget = state.budget
    assert budget.spent_tokens == again.budget.spent_tokens == 10 and budget.tokens_left == 10
    assert budget.left == 2  # 10 tokens left at 5 a request; the request budget alone would allow 50
    budget.spent_tokens = 20
    assert budget.left == 0


# --- the local teacher

def test_local_teacher_generates_in_batches_and_loads_only_on_a_miss(tmp_path):
    from protege.models.generate import chat_prompts, generate
    from protege.models.tiny import build_tiny

    model = tmp_path / "tiny"
    build_tiny(model, 0)
    cfg = LocalTeacherConfig(model=str(model), max_tokens=6, batch_size=2, device="cpu")
    teacher = build_teacher(cfg, tmp_path)
    assert teacher.identity().startswith("local:") and not teacher.uses_vllm()  # no GPU here
    # sampled: the tiny random model's greedy replies are empty (and would be dropped)
    requests = [TeacherRequest("answer", "Shout it.", input=t, temperature=1.0) for t in ["one", "two", "three"]]
    arrived = []
    cache = TeacherCache(tmp_path / "c.sqlite")
    replies = CachedTeacher(teacher, cache).complete(requests)
    assert teacher.complete(requests, on_reply=lambda i, reply, usage: arrived.append((i, usage))) == replies
    # batch_size 2: one generate call for the first two requests, one for the third, seeded by `sample`
    model_, tokenizer = teacher._load()
    chats = [r.chat() for r in requests]
    assert replies == generate(model_, tokenizer, chats[:2], 6, temperature=1.0, seed=0) + \
        generate(model_, tokenizer, chats[2:], 6, temperature=1.0, seed=0)
    assert all(replies) and [i for i, _ in arrived] == [0, 1, 2]
    assert [u.tokens_in for _, u in arrived] == [len(p) for p in chat_prompts(tokenizer, chats)]
    fresh = build_teacher(cfg, tmp_path)
    assert CachedTeacher(fresh, cache).complete(requests) == replies and fresh._loaded is None


def test_local_batches_group_by_sampling_settings_in_order():
    requests = [TeacherRequest("answer", "", input="a"), TeacherRequest("answer", "", input="b", temperature=0.7),
                TeacherRequest("answer", "", input="c"), TeacherRequest("answer", "", input="d"),
                TeacherRequest("answer", "", input="e", temperature=0.7)]
    assert batches(requests, 2) == [[0, 2], [3], [1, 4]]
