"""What goes wrong in a teacher is said, counted and never silent: a function teacher's module that
does not import, a call that raises, exits, hangs or returns no text; an OpenAI endpoint that refuses
connections or speaks no TLS; a cache file that is not a database. Function teachers are real modules
written into the test's folder; HTTP goes to a real server on 127.0.0.1 (openai_stub)."""

import json
import socket
import ssl
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2  # the openai client's HTTP library
import openai
import pytest

from openai_stub import StubServer
from protege.cli import main
from protege.config import ConfigError, load_task
from protege.loop.stage import StageInputs, teacher_stage
from protege.loop.state import Budget, RunState
from protege.runs import Run, read_json
from protege.teachers import (CacheError, CachedTeacher, TeacherCache, TeacherError, TeacherRequest, TeacherTaskError,
                              act_request, build_teacher, cached_teacher)
from protege.teachers.function import FunctionTeacher, FunctionTeacherConfig
from protege.teachers.openai_api import OpenAITeacher, OpenAITeacherConfig, Retry, cause

INPUTS = [f"item {i}" for i in range(60)]


def write_task(folder: Path, teacher: str, **modules: str) -> Path:
    """A task whose teacher is teacher.py (source `teacher`), with 60 inputs to label and a tiny student."""
    (folder / "teacher.py").write_text(textwrap.dedent(teacher))
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    spec = {"name": "errors", "instruction": "Shout it.", "seeds": [{"input": "a", "output": "A"}],
            "inputs": INPUTS, "test": [{"input": "z", "output": "Z"}], "metric": "exact",
            "teacher": {"kind": "function", "function": "teacher:teacher"}, "student": {"model": "tiny:0"}}
    (folder / "task.yaml").write_text(json.dumps(spec))  # JSON is YAML
    return folder


def synth(task: Path, capsys) -> tuple[int, str]:
    """`protege synth` on the task: its exit status and the last line it wrote to stderr."""
    status = main(["synth", str(task), "--run-dir", str(task / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    return status, lines[-1] if lines else ""


def answer(texts):
    return [TeacherRequest("answer", "Shout it.", input=t) for t in texts]


@dataclass(frozen=True)
class Asked(StageInputs):
    k: int


def in_a_stage(tmp_path: Path, teacher: CachedTeacher, requests: list[TeacherRequest]) -> dict:
    """Ask the requests in one teacher stage; what its teacher.json recorded."""
    folder = tmp_path / "task"
    folder.mkdir(exist_ok=True)
    task = load_task(write_task(folder, "def teacher(r):\n    return r.input\n"))
    state = RunState(task=task, run=Run(tmp_path / "run"), device="cpu", base=None, students=None, teacher=teacher,
                     budget=Budget(1000))
    folder = teacher_stage(state, "synth-x", Asked(1), lambda out: teacher.complete(requests) and None)
    return read_json(folder / "teacher.json")


def function_teacher(tmp_path: Path, source: str, timeout: float = 60.0) -> CachedTeacher:
    (tmp_path / "fn.py").write_text(textwrap.dedent(source))
    cfg = FunctionTeacherConfig(function="fn:teacher", timeout=timeout)
    return CachedTeacher(build_teacher(cfg, tmp_path), TeacherCache(tmp_path / "c.sqlite"))


# --- a function teacher that returns no text

@pytest.mark.parametrize("returned, kind", [("7", "int"), ("{'text': r.input}", "dict"), ("None", "None")])
def test_a_function_returning_no_text_stops_the_run_saying_so(tmp_path, capsys, returned, kind):
    task = write_task(tmp_path, f"def teacher(r):\n    return {returned}\n")
    status, line = synth(task, capsys)
    assert status == 2
    assert line == (f"error: teacher teacher:teacher: 60 of 60 replies dropped (returned {kind}: 60); it must return "
                    "a string (for an agent's act request: an assistant message as a dict, or a string)")
    assert not list((task / "run" / "stages").glob("synth-r0-*"))  # the stage is not recorded as done


def test_replies_dropped_by_a_few_are_counted_by_reason_in_teacher_json(tmp_path):
    teacher = function_teacher(tmp_path, """
        def teacher(r):
            return {"b": None, "c": 3, "d": "  "}.get(r.input, r.input.upper())
    """)
    used = in_a_stage(tmp_path, teacher, answer(["a", "b", "c", "d", "e", "f", "g", "h"]))
    assert (used["paid"], used["dropped"], used["failed"]) == (8, 3, 3)
    assert used["dropped_why"] == {"returned None": 1, "returned int": 1, "returned an empty string": 1}
    assert used["retried_why"] == {}


def test_an_agent_step_takes_an_assistant_message_dict_and_drops_what_is_none(tmp_path):
    teacher = function_teacher(tmp_path, """
        def teacher(r):
            if r.messages()[-1]["content"] == "call":
                return {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "look", "arguments": {"q": 1}}}]}
            return {"answer": "done"}.get(r.messages()[-1]["content"], 5)
    """)
    steps = [act_request("Act.", [{"role": "user", "content": c}], []) for c in ["call", "answer", "other"]]
    call, final, dropped = teacher.complete(steps)
    assert json.loads(call)["tool_calls"][0]["function"] == {"name": "look", "arguments": '{"q": 1}'}
    assert json.loads(final) == {"role": "assistant", "content": "done"} and dropped is None
    assert teacher.stats.dropped_why == {"returned int": 1}


# --- a function teacher that raises or exits

def test_sys_exit_in_a_teacher_is_the_teachers_error_with_its_line(tmp_path, capsys):
    task = write_task(tmp_path, """
        import sys

        def teacher(r):
            sys.exit(3)
    """)
    status, line = synth(task, capsys)
    assert status == 2
    assert line == (f"error: teacher.function teacher:teacher raised SystemExit: 3 at {tmp_path / 'teacher.py'}:5 "
                    "on the answer request for 'item 0'")


def test_an_exception_deep_in_a_helper_names_the_task_code_it_came_from(tmp_path):
    (tmp_path / "helper.py").write_text("import json\n\ndef parse(text):\n    return json.loads(text)\n")
    teacher = function_teacher(tmp_path, """
        import helper

        def teacher(r):
            return helper.parse(r.input)
    """)
    with pytest.raises(TeacherTaskError, match=rf"raised JSONDecodeError: .* at {tmp_path / 'helper.py'}:4 on"):
        teacher.complete(answer(["not json"]))


# --- a teacher module that does not import, and one that imports its neighbours

@pytest.mark.parametrize("source, line, says", [
    ("def teacher(r):\n    return r.input +\n", 2, "SyntaxError: invalid syntax"),
    ("x = 1\nraise RuntimeError('no key file')\n", 2, "RuntimeError: no key file"),
    ("import sys\nsys.exit('bye')\n", 2, "SystemExit: bye"),
    ("import no_such_library\n", 1, "ModuleNotFoundError: No module named 'no_such_library'"),
])
def test_a_teacher_module_that_fails_to_import_names_its_file_and_line(tmp_path, capsys, source, line, says):
    task = write_task(tmp_path, source)
    status, last = synth(task, capsys)
    assert status == 2
    assert last == f"error: teacher.function teacher:teacher: {tmp_path / 'teacher.py'}:{line}: {says}"


def test_a_missing_teacher_module_is_named(tmp_path, capsys):
    # a name no other test imports: a plain `teacher` module another test put on sys.path would be found
    task = write_task(tmp_path, "def teacher(r):\n    return r.input\n")
    (task / "task.yaml").write_text((task / "task.yaml").read_text().replace("teacher:teacher", "absent_teacher:teacher"))
    status, line = synth(task, capsys)
    assert status == 2
    assert line == (f"error: teacher.function absent_teacher:teacher: no module 'absent_teacher' in {tmp_path} "
                    "or on the import path")


def test_a_teacher_imports_modules_and_packages_beside_it_also_when_it_runs(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "__init__.py").write_text("from .core import teacher\n")
    (tmp_path / "rules" / "core.py").write_text("from . import words\n\ndef teacher(r):\n"
                                                "    return words.X + r.input\n")
    (tmp_path / "rules" / "words.py").write_text("X = 'pkg:'\n")
    (tmp_path / "late.py").write_text("X = 'late:'\n")
    (tmp_path / "fn.py").write_text("def teacher(r):\n    import late\n    return late.X + r.input\n")
    assert FunctionTeacher("rules:teacher", tmp_path).complete(answer(["a"])) == ["pkg:a"]
    assert FunctionTeacher("fn:teacher", tmp_path).complete(answer(["b"])) == ["late:b"]


# --- a function teacher that hangs

def test_a_call_past_the_time_limit_is_dropped_as_a_timeout_and_the_rest_answered(tmp_path):
    teacher = function_teacher(tmp_path, """
        import time

        def teacher(r):
            if r.input == "slow":
                time.sleep(3)
            return r.input.upper()
    """, timeout=0.2)
    start = time.perf_counter()
    assert teacher.complete(answer(["a", "slow", "b"])) == ["A", None, "B"]
    assert time.perf_counter() - start < 1.5
    assert teacher.stats.dropped_why == {"timeout": 1} and teacher.stats.failed == 1


def test_a_teacher_hanging_on_every_request_stops_after_three(tmp_path):
    teacher = function_teacher(tmp_path, "import time\n\ndef teacher(r):\n    time.sleep(3)\n", timeout=0.1)
    start = time.perf_counter()
    with pytest.raises(TeacherTaskError, match=r"did not return within 0.1 s on 3 requests in a row.*teacher.timeout"):
        teacher.complete(answer(INPUTS))
    assert time.perf_counter() - start < 1.5


def test_the_time_limit_is_a_documented_field_of_the_task(tmp_path):
    task = write_task(tmp_path, "def teacher(r):\n    return r.input\n")
    spec = load_task(task, ["teacher.timeout=2.5"]).spec
    assert spec.teacher.timeout == 2.5
    assert "Seconds one call" in FunctionTeacherConfig.model_fields["timeout"].description
    assert FunctionTeacherConfig().timeout == 60.0
    with pytest.raises(ConfigError, match="timeout"):
        load_task(task, ["teacher.timeout=0"])


# --- an OpenAI endpoint that cannot be reached

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_closed_port_is_reported_as_refused_after_quick_tries_not_as_a_timeout():
    port = closed_port()
    cfg = OpenAITeacherConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m")  # default retries and delays
    start = time.perf_counter()
    with pytest.raises(TeacherError, match=rf"^teacher http://127.0.0.1:{port}/v1 \(model 'm'\): connection refused "
                       r"\(.*\), after 3 tries; is the server running"):
        OpenAITeacher(cfg).complete(answer(INPUTS))
    assert time.perf_counter() - start < 2.5  # two backoffs of at most 0.5 s and 1 s


def test_a_tls_error_stops_at_the_first_try(tmp_path):
    with StubServer(str.upper) as server:  # plain HTTP, asked for TLS
        cfg = OpenAITeacherConfig(base_url=server.base_url.replace("http:", "https:"), model="m")
        with pytest.raises(TeacherError, match=r"TLS error .*WRONG_VERSION_NUMBER.*at the first try; does "
                           r"teacher.base_url's scheme"):
            OpenAITeacher(cfg).complete(answer(["a", "b"]))
    assert server.requests == 0


def failed_connection(inner: BaseException) -> openai.APIConnectionError:
    """What the client raises for a connection that failed with `inner` (its transport wraps it twice)."""
    request = httpx2.Request("POST", "http://teacher.example/v1/chat/completions")
    try:
        try:
            raise inner
        except BaseException as exc:
            raise OSError("Cannot connect to host") from exc
    except OSError as wrapped:
        try:
            raise openai.APITimeoutError(request=request) from wrapped  # aiohttp's transport calls it a timeout
        except openai.APITimeoutError as outer:
            return outer


def test_the_cause_is_read_from_the_chain_not_from_the_outer_error():
    assert cause(failed_connection(ConnectionRefusedError(111, "refused")))[0] == "connection refused"
    assert cause(failed_connection(socket.gaierror(-2, "Name or service not known"))) == (
        "DNS failure", "DNS failure ([Errno -2] Name or service not known)")
    assert cause(failed_connection(ssl.SSLCertVerificationError("self-signed certificate")))[0] == "TLS error"
    assert cause(failed_connection(TimeoutError("read")))[0] == "timeout"
    assert cause(failed_connection(ConnectionResetError("reset")))[0] == "connection lost"
    request = httpx2.Request("POST", "http://teacher.example/v1/chat/completions")
    assert cause(openai.APITimeoutError(request=request))[0] == "timeout"


@pytest.mark.parametrize("inner", [socket.gaierror(-2, "Name or service not known"),
                                   ssl.SSLCertVerificationError("self-signed certificate")])
def test_no_dns_or_tls_stops_at_once_unless_the_server_answered_before(inner):
    teacher = OpenAITeacher(OpenAITeacherConfig(base_url="https://teacher.example/v1", model="m"))
    failure = teacher.connection_failure(failed_connection(inner))
    assert isinstance(failure, TeacherError) and "at the first try" in str(failure)
    assert "teacher.base_url" in str(failure) and str(inner) in str(failure)
    teacher.reached = True  # a resolver's hiccup or a broken handshake in the middle of a run is retried
    assert isinstance(teacher.connection_failure(failed_connection(inner)), Retry)


def test_teacher_json_says_why_each_retry_happened(tmp_path):
    plan = {"a": ["429"], "b": ["500", "timeout"], "c": ["empty", "empty", "empty"], "d": ["drop"]}

    def fault(body, attempt):
        kinds = plan.get(body["messages"][-1]["content"], [])
        return kinds[attempt] if attempt < len(kinds) else None

    with StubServer(lambda messages: messages[-1]["content"].upper(), fault=fault, stall=2.0) as server:
        cfg = OpenAITeacherConfig(base_url=server.base_url, model="m", max_retries=2, retry_base_delay=0.01,
                                  timeout=0.5)
        teacher = CachedTeacher(OpenAITeacher(cfg), TeacherCache(tmp_path / "c.sqlite"))
        used = in_a_stage(tmp_path, teacher, answer(["a", "b", "c", "d", "e"]))
    assert used["retried_why"] == {"HTTP 429": 1, "HTTP 500": 1, "timeout": 1, "empty reply": 2,
                                   "connection lost": 1}
    assert used["dropped_why"] == {"empty reply": 1} and used["retried"] == 6


def test_an_endpoint_answering_mostly_empty_replies_stops_its_stage(tmp_path):
    with StubServer(lambda messages: "", fault=None) as server:
        cfg = OpenAITeacherConfig(base_url=server.base_url, model="m", max_retries=0)
        teacher = CachedTeacher(OpenAITeacher(cfg), TeacherCache(tmp_path / "c.sqlite"))
        with pytest.raises(TeacherError, match=rf"teacher {server.base_url} \(model 'm'\): 3 of 3 replies dropped "
                           r"\(empty reply: 3\)$"):
            in_a_stage(tmp_path, teacher, answer(["a", "b", "c"]))


# --- a cache file that is not a database

def test_a_cache_that_is_not_a_database_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    task = write_task(tmp_path, "def teacher(r):\n    return r.input\n")
    monkeypatch.setenv("PROTEGE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    path = tmp_path / "cache" / "teacher_cache.sqlite"
    path.write_text("these are my notes, not a database\n" * 100)
    status, line = synth(task, capsys)
    assert status == 2
    assert line.startswith(f"error: {path}: cannot use this file as the teacher cache (file is not a database)")
    assert path.read_text().startswith("these are my notes")  # left as it was
    with pytest.raises(CacheError, match=str(path)):
        cached_teacher(FunctionTeacherConfig(function="teacher:teacher"), task)
