import pytest

from openai_stub import StubServer
from protege.teachers import CachedTeacher, TeacherCache, TeacherError, TeacherRequest
from protege.teachers.function import FunctionTeacher
from protege.teachers.openai_api import OpenAITeacher, OpenAITeacherConfig


def shout(messages):
    return messages[-1]["content"].upper()


def ask(texts):
    return [TeacherRequest("answer", "Shout.", input=t) for t in texts]


def test_openai_teacher_answers_over_http(tmp_path):
    with StubServer(shout) as server:
        teacher = OpenAITeacher(OpenAITeacherConfig(base_url=server.base_url, model="m", concurrency=4))
        assert teacher.complete(ask(["a", "b", "c"])) == ["A", "B", "C"]
        assert server.requests == 3


def test_openai_teacher_retries_server_errors(tmp_path):
    with StubServer(shout, fail_every=2) as server:
        cfg = OpenAITeacherConfig(base_url=server.base_url, model="m", concurrency=1, max_retries=3)
        assert OpenAITeacher(cfg).complete(ask(["x", "y", "z"])) == ["X", "Y", "Z"]
        assert server.requests == 5  # requests 2 and 4 failed and were retried


def test_dead_endpoint_is_one_clear_error():
    cfg = OpenAITeacherConfig(base_url="http://127.0.0.1:9/v1", model="m", max_retries=0, timeout=2)
    with pytest.raises(TeacherError, match="127.0.0.1:9"):
        OpenAITeacher(cfg).complete(ask(["x"]))


def test_cache_pays_each_request_once(tmp_path):
    with StubServer(shout) as server:
        backend = OpenAITeacher(OpenAITeacherConfig(base_url=server.base_url, model="m"))
        first = CachedTeacher(backend, TeacherCache(tmp_path / "c.sqlite"))
        assert first.complete(ask(["a", "b"])) == ["A", "B"]
        again = CachedTeacher(backend, TeacherCache(tmp_path / "c.sqlite"))  # a new process, same file
        assert again.complete(ask(["b", "a", "c"])) == ["B", "A", "C"]
        assert server.requests == 3 and again.stats.paid == 1 and again.stats.requests == 3


def test_function_teacher_loads_task_module_by_path(tmp_path, examples_dir):
    iso = FunctionTeacher("teacher:teacher", examples_dir / "iso-dates")
    arith = FunctionTeacher("teacher:teacher", examples_dir / "arithmetic")  # same module name, other file
    assert iso.complete([TeacherRequest("answer", "", input="3 Jan 2005")]) == ["2005-01-03"]
    reply = arith.complete([TeacherRequest("answer", "", input="There are 3 jars with 6 stickers in each jar. "
                                           "How many stickers are there in total?")])[0]
    assert reply.endswith("18")
    assert iso.identity() != arith.identity()


def test_self_teacher_keeps_only_verified_samples(tmp_path):
    from protege.models import load_model, model_dir
    from protege.teachers.self_verify import SelfTeacher

    loaded = load_model(model_dir("tiny:0"))
    seen = []

    def verifier(text, answer):
        seen.append(answer)
        return answer == seen[0]  # accepts exactly the first sample it is shown

    teacher = SelfTeacher(lambda: loaded, verifier, samples=3, max_new_tokens=5)
    cached = CachedTeacher(teacher, TeacherCache(tmp_path / "c.sqlite"))
    first = cached.complete(ask(["q"]))
    assert first == [seen[0]] and 1 <= len(seen) <= 3
    assert SelfTeacher(lambda: loaded, lambda t, a: False, samples=2, max_new_tokens=5).complete(ask(["q"])) == [None]
    assert cached.complete(ask(["q"])) == first and cached.stats.paid == 1
