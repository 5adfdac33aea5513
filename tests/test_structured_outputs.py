"""Structured outputs: the openai teacher asks for the reply's shape with response_format where it is
known (a new input as {"input": ...}; an answer as JSON where the task's metric is json, in the metric's
schema if it gives one), falls back to plain prompting where the endpoint refuses the field (resent
once, remembered, counted in teacher.json), stops at that refusal when told `on`, never asks when
`off`; the shape is part of the cache key. HTTP goes to a real server on 127.0.0.1 (openai_stub)."""

import itertools
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from openai_stub import UNKNOWN_PARAMETER, StubServer
from protege.config import ConfigError, load_task
from protege.loop.data import synthesize_round0
from protege.loop.stage import StageInputs, teacher_stage
from protege.loop.state import Budget, RunState, prepare
from protege.records import record_answer, record_input
from protege.runs import Run, read_json, read_jsonl
from protege.synth.written import clean_input
from protege.teachers import (CachedTeacher, JsonAnswers, TeacherCache, TeacherError, TeacherRequest,
                              build_teacher)
from protege.teachers.base import NEW_INPUT_SCHEMA, cache_key
from protege.teachers.openai_api import FELL_BACK, FORMAT_REFUSED, OpenAITeacher, OpenAITeacherConfig

INSTRUCTION = "Give the date as JSON with its year, month and day."
SCHEMA = {"type": "object", "properties": {"year": {"type": "integer"}, "month": {"type": "integer"},
                                           "day": {"type": "integer"}},
          "required": ["year", "month", "day"], "additionalProperties": False}
NEW_INPUT = {"type": "json_schema", "json_schema": {"name": "new_input", "strict": True, "schema": NEW_INPUT_SCHEMA}}
ANSWER = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": SCHEMA}}


def write_input(sample: int = 0) -> TeacherRequest:
    return TeacherRequest("write_input", INSTRUCTION, examples=("3 Jan 2005",), sample=sample)


def evolve() -> TeacherRequest:
    return TeacherRequest("evolve", INSTRUCTION, input="3 Jan 2005", evolution="concretize")


def answer(text: str = "3 Jan 2005") -> TeacherRequest:
    return TeacherRequest("answer", INSTRUCTION, input=text)


def critique() -> TeacherRequest:
    return TeacherRequest("critique", INSTRUCTION, input="3 Jan 2005", candidate='{"year": 2005}')


def teacher(server: StubServer, answers: JsonAnswers | None = None, mode: str = "auto", concurrency: int = 1,
            cache: Path | None = None, **options) -> CachedTeacher:
    """The openai teacher at the stub, behind a cache of its own (the given file, else one in memory's place)."""
    cfg = OpenAITeacherConfig(base_url=server.base_url, model="m", structured_outputs=mode, concurrency=concurrency,
                              max_retries=1, retry_base_delay=0.01, **options)
    return CachedTeacher(build_teacher(cfg, Path("."), answers=answers), TeacherCache(cache or Path(":memory:")))


@dataclass(frozen=True)
class Asked(StageInputs):
    k: int


def in_a_stage(tmp_path: Path, cached: CachedTeacher, requests: list[TeacherRequest]) -> tuple[list, dict]:
    """Ask the requests in one teacher stage: the replies, and what its teacher.json recorded."""
    folder = tmp_path / "task"
    folder.mkdir(exist_ok=True)
    (folder / "task.yaml").write_text(json.dumps({"name": "shapes", "instruction": INSTRUCTION,
                                                  "seeds": [{"input": "a", "output": "{}"}],
                                                  "test": [{"input": "b", "output": "{}"}], "student": {"model": "tiny:0"}}))
    state = RunState(task=load_task(folder), run=Run(tmp_path / "run"), device="cpu", base=None, students=None,
                     teacher=cached, budget=Budget(1000))
    replies = []
    stage = teacher_stage(state, "synth-x", Asked(1), lambda out: replies.extend(cached.complete(requests)) and None)
    return replies, read_json(stage / "teacher.json")


def echo(messages: list[dict]) -> str:
    return "5 May 2001"


# --- what is asked for

@pytest.mark.parametrize("request_", [write_input(), evolve()], ids=["write_input", "evolve"])
def test_a_teacher_writing_an_input_asks_for_an_object_holding_it(request_):
    with StubServer(echo, structured="honour") as server:
        [reply] = teacher(server).complete([request_])
    assert server.formats == [NEW_INPUT]
    assert json.loads(reply) == {"input": "5 May 2001"}
    assert clean_input(reply) == "5 May 2001"  # what synth/written.py keeps of it


@pytest.mark.parametrize("answers, shape", [(JsonAnswers(SCHEMA), ANSWER), (JsonAnswers(), {"type": "json_object"}),
                                            (None, None)], ids=["schema", "any-object", "not-json"])
def test_answers_are_asked_as_json_where_the_tasks_answers_are(answers, shape):
    with StubServer(lambda messages: '{"year": 2005, "month": 1, "day": 3}', structured="honour") as server:
        replies = teacher(server, answers).complete([answer(), critique()])
    assert server.formats == [shape, None]  # a critic, a judge, a reflection write prose
    assert json.loads(replies[0]) == {"year": 2005, "month": 1, "day": 3}


def test_off_never_asks_for_a_shape():
    with StubServer(echo, structured="honour") as server:
        teacher(server, JsonAnswers(SCHEMA), mode="off").complete([write_input(), evolve(), answer()])
    assert server.formats == [None, None, None]
    assert all("response_format" not in body for body in server.bodies)


# --- an endpoint that does not take response_format

FASTAPI_422 = (422, {"detail": [{"loc": ["body", "response_format"], "msg": "Extra inputs are not permitted",
                                 "type": "extra_forbidden"}]})
LLAMA_CPP = (400, {"error": {"code": 400, "message": "Unsupported response_format type: json_schema",
                             "type": "invalid_request_error"}})
UNSUPPORTED = (400, {"error": {"message": "This model does not support this parameter.",
                               "type": "invalid_request_error", "param": None, "code": "unsupported_parameter"}})


@pytest.mark.parametrize("refusal", [UNKNOWN_PARAMETER, FASTAPI_422, LLAMA_CPP, UNSUPPORTED],
                         ids=["openai", "fastapi-422", "llama.cpp", "unsupported-parameter"])
def test_an_endpoint_refusing_the_shape_gets_plain_prompts_once_and_teacher_json_says_so(tmp_path, refusal):
    requests = [write_input(0), write_input(1), answer(), critique()]
    with StubServer(echo, structured="refuse", refusal=refusal) as server:
        replies, used = in_a_stage(tmp_path, teacher(server, JsonAnswers(SCHEMA)), requests)
    assert replies == ["5 May 2001"] * 4
    # the first request is refused and resent without it; no shape is asked of this endpoint again
    assert server.formats == [NEW_INPUT, None, None, None, None]
    assert used["notes"] == {FELL_BACK: 3}  # the three that wanted a shape, not the critique
    assert used["retried_why"] == {FORMAT_REFUSED: 1} and used["retried"] == 1
    assert used["failed"] == 0 and used["paid"] == 4


def test_requests_refused_together_are_each_resent_once(tmp_path):
    requests = [write_input(i) for i in range(6)]
    with StubServer(echo, structured="refuse", delay=0.05) as server:
        replies, used = in_a_stage(tmp_path, teacher(server, concurrency=6), requests)
    assert replies == ["5 May 2001"] * 6
    refused = sum(shape is not None for shape in server.formats)
    assert refused >= 1 and server.requests == 6 + refused
    assert used["notes"] == {FELL_BACK: 6} and used["retried_why"] == {FORMAT_REFUSED: refused}


def test_a_fallen_back_reply_is_kept_under_the_key_asked_so_a_resumed_run_pays_nothing(tmp_path):
    cache = tmp_path / "c.sqlite"
    requests = [write_input(0), write_input(1)]
    with StubServer(echo, structured="refuse") as server:
        first = teacher(server, cache=cache).complete(requests)
        asked = server.requests
        again = teacher(server, cache=cache)  # a new session: it does not know the endpoint refuses
        assert again.complete(requests) == first
    assert server.requests == asked == 3 and again.stats.paid == 0


def test_on_stops_at_the_refusal_with_one_line():
    with StubServer(echo, structured="refuse") as server:
        with pytest.raises(TeacherError) as caught:
            teacher(server, mode="on").complete([write_input(0), write_input(1)])
    line = str(caught.value)
    assert "\n" not in line and server.requests == 1
    assert line == (f"teacher {server.base_url} (model 'm') refused response_format (teacher.structured_outputs "
                    "is on): HTTP 400: Unknown parameter: 'response_format'.; set it to auto to fall back to plain "
                    "prompting, or off")


def test_a_refusal_for_another_reason_is_no_fallback(tmp_path):
    """A 400 that does not name response_format is that request's own fault: it fails alone, and the
    others still ask for their shape."""
    with StubServer(echo, structured="honour", fault=lambda body, attempt: "400" if body["seed"] == 0 else None) \
            as server:
        replies, used = in_a_stage(tmp_path, teacher(server), [write_input(0), write_input(1)])
    assert replies == [None, json.dumps({"input": "5 May 2001"})]
    assert server.formats == [NEW_INPUT, NEW_INPUT]
    assert used["notes"] == {} and used["retried_why"] == {} and used["failed"] == 1


# --- the cache key

def test_the_shape_is_part_of_the_cache_key():
    with StubServer(echo) as server:
        auto, off = teacher(server, JsonAnswers(SCHEMA)), teacher(server, JsonAnswers(SCHEMA), mode="off")
        other_schema = teacher(server, JsonAnswers({"type": "object"}))
        any_object, prose = teacher(server, JsonAnswers()), teacher(server)
    for request in (write_input(), evolve(), answer()):
        assert auto.key(request) != off.key(request)
    assert len({t.key(answer()) for t in (auto, other_schema, any_object, prose)}) == 4
    # where no shape is asked the key is what it was before structured outputs: caches stay valid
    for request in (critique(), answer()):
        assert prose.key(request) == off.key(request) == cache_key(prose.backend.identity(), request, {})
    assert auto.key(critique()) == off.key(critique())


# --- from the task to the teacher

TASK = {"name": "dates-json", "instruction": INSTRUCTION,
        "seeds": [{"input": "3 Jan 2005", "output": '{"year": 2005, "month": 1, "day": 3}'}],
        "test": [{"input": "4 Feb 2006", "output": '{"year": 2006, "month": 2, "day": 4}'}],
        "synth": {"label_inputs": False, "expand": 2, "seeds_per_prompt": 1}, "budget": {"requests": 10},
        "student": {"model": "tiny:0"}}


def write_task(folder: Path, base_url: str, metric) -> Path:
    spec = TASK | {"metric": metric, "teacher": {"kind": "openai", "base_url": base_url, "model": "m"}}
    (folder / "task.yaml").write_text(json.dumps(spec))
    return folder


def dates():
    """A teacher that writes a new date each time it is asked for an input, and answers in JSON."""
    count, lock = itertools.count(10), threading.Lock()

    def reply(messages: list[dict]) -> str:
        if messages[-1]["content"].startswith("You write new inputs"):
            with lock:
                return f"{next(count)} May 2001"
        return json.dumps({"year": 2001, "month": 5, "day": int(messages[-1]["content"].split()[0])})
    return reply


def test_a_json_metrics_schema_reaches_the_teacher_and_written_inputs_come_unwrapped(tmp_path):
    with StubServer(dates(), structured="honour") as server:
        write_task(tmp_path, server.base_url, {"name": "json", "json_schema": SCHEMA})
        folder = synthesize_round0(prepare(load_task(tmp_path), tmp_path / "run", say=lambda line: None)).data.parent
    assert server.formats == [NEW_INPUT, NEW_INPUT, ANSWER, ANSWER]
    expanded = [r for r in read_jsonl(folder / "data.jsonl") if r["meta"]["source"] == "expand"]
    assert sorted(record_input(r) for r in expanded) == ["10 May 2001", "11 May 2001"]
    assert sorted(json.loads(record_answer(r))["day"] for r in expanded) == [10, 11]


@pytest.mark.parametrize("metric, shape", [("json", {"type": "json_object"}), ("exact", None)])
def test_answers_are_json_only_where_the_metric_is(tmp_path, metric, shape):
    with StubServer(dates(), structured="honour") as server:
        write_task(tmp_path, server.base_url, metric)
        state = prepare(load_task(tmp_path), tmp_path / "run", say=lambda line: None)
        state.teacher.complete([answer("7 May 2001")])
    assert server.formats == [shape]


def test_a_json_schema_must_be_an_objects(tmp_path):
    write_task(tmp_path, "http://127.0.0.1:9/v1", {"name": "json", "json_schema": {"type": "array"}})
    with pytest.raises(ConfigError, match=r"json_schema.*must be the JSON schema of an object \(type: object\)"):
        load_task(tmp_path)
