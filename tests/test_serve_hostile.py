"""`protege serve` under hostile clients (issue 19): every path is behind the key, every error is
OpenAI's JSON shape (a 4xx where the request is at fault) on a connection that stays open, and a request
without max_tokens gets what fits in the context. A real uvicorn server on loopback, a tiny model whose
context (64) is below the server's --max-tokens (the default, 2048), raw HTTP so that any body can be sent."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest
import uvicorn
from test_serve import free_port, varied_tiny

from protege.serve import build_app

KEY = "hostile-key"
NAME = "tiny-hostile"
CONTEXT = 64
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


def short_context_tiny(directory):
    directory = varied_tiny(directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "max_position_embeddings": CONTEXT}))
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = build_app(short_context_tiny(tmp_path_factory.mktemp("tiny")), api_key=KEY, model_name=NAME)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="critical"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.02)
    yield app, uv.config.port
    uv.should_exit = True
    thread.join(timeout=10)


def send(server, method: str, path: str, body: bytes | str | None = None, key: str | None = KEY) -> tuple[int, dict]:
    """Status and JSON body; then, on the same connection, a second request must be answered: an error
    must not drop the connection."""
    connection = http.client.HTTPConnection("127.0.0.1", server[1], timeout=60)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    connection.request(method, path, body=body, headers={**headers, "Content-Type": "application/json"})
    response = connection.getresponse()
    status, kind, raw = response.status, response.getheader("content-type"), response.read()
    assert kind == "application/json", (status, kind, raw[:200])
    connection.request("GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert connection.getresponse().status == 200
    connection.close()
    return status, json.loads(raw)


def openai_error(status: int, body: dict) -> dict:
    """The error of a body in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["type"] == ("server_error" if status >= 500 else
                                     "authentication_error" if status == 401 else "invalid_request_error")
    return body["error"]


def request_body(**fields) -> str:
    """A field given as None is left out."""
    return json.dumps({key: value for key, value in {"model": NAME, "max_tokens": 4, **fields}.items()
                       if value is not None})


def chat(**fields) -> str:
    return request_body(**{"messages": [{"role": "user", "content": "hi"}], **fields})


def completion(**fields) -> str:
    return request_body(**{"prompt": "hi", **fields})


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/v1/models",
                                  "/no-such-path"])
def test_every_path_is_behind_the_key(server, path):
    status, body = send(server, "GET", path, key=None)
    assert status == 401 and openai_error(status, body)["code"] == "invalid_api_key"
    status, body = send(server, "GET", path, key="wrong")
    assert status == 401


def test_the_openapi_schema_answers_with_the_key(server):
    status, body = send(server, "GET", "/openapi.json")
    assert status == 200 and "/v1/chat/completions" in body["paths"]


HOSTILE = {
    "a content part with a non-string text": (CHAT, chat(messages=[
        {"role": "user", "content": [{"type": "text", "text": 3}]}]), "messages.0.content"),
    "a lone surrogate in a message": (CHAT, chat(messages=[{"role": "user", "content": "\ud800"}]), None),
    "a lone surrogate in the model's name": (CHAT, chat(model="\ud800"), None),
    "an empty completions prompt": (COMPLETIONS, completion(prompt=""), "prompt"),
    "an array for a body": (CHAT, "[]", None),
    "null for a body": (CHAT, "null", None),
    "a string for a body": (COMPLETIONS, '"hello"', None),
    "a string temperature": (CHAT, chat(temperature="hot"), "temperature"),
    "a boolean temperature": (CHAT, chat(temperature=True), "temperature"),
    "a string max_tokens": (CHAT, chat(max_tokens="5"), "max_tokens"),
    "a negative max_tokens": (COMPLETIONS, completion(max_tokens=-1), "max_tokens"),
    "a fractional max_tokens": (CHAT, chat(max_tokens=2.5), "max_tokens"),
    "a huge n": (CHAT, chat(n=10**6), "n"),
    "a string n": (COMPLETIONS, completion(n="1"), "n"),
    "no messages": (CHAT, chat(messages=[]), "messages"),
    "an unknown role": (CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), "messages.0.role"),
    "a string for stream": (CHAT, chat(stream="yes"), "stream"),
    "a message that is a string": (CHAT, chat(messages=["hi"]), "messages.0"),
    "a content part that is a string": (CHAT, chat(messages=[{"role": "user", "content": ["hi"]}]),
                                        "messages.0.content"),
    "nesting deep enough to recurse": (COMPLETIONS, completion(x=0).replace("0}", "[" * 50_000 + "]" * 50_000 + "}"),
                                       None),
    "bytes that are not UTF-8": (COMPLETIONS, completion(prompt="\x00").encode().replace(b"\\u0000", b"\xff"), None),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_a_hostile_request_is_a_400_in_openai_shape(server, case):
    path, body, param = HOSTILE[case]
    status, answer = send(server, "POST", path, body)
    error = openai_error(status, answer)
    assert status == 400, error
    assert param is None or (error["param"] or "").startswith(param), error


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/v1/nothing", 404),
                                                        ("GET", CHAT, 405),
                                                        ("DELETE", "/v1/models", 405)])
def test_a_path_or_method_no_route_serves_is_answered_in_openai_shape(server, method, path, status):
    answered, body = send(server, method, path)
    assert answered == status and openai_error(status, body)["code"]


def test_an_unexpected_failure_is_a_json_500_and_the_connection_stays(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in rendering")
    monkeypatch.setattr(server[0].state.server, "chat_prompt", broken)
    status, body = send(server, "POST", CHAT, chat())
    assert status == 500 and openai_error(status, body)["code"] == "internal_error"
    assert "a bug in rendering" not in body["error"]["message"]  # the traceback goes to the log only


def test_without_max_tokens_a_reply_gets_what_fits_in_the_context(server):
    for path, body in ((CHAT, chat(max_tokens=None)), (COMPLETIONS, completion(max_tokens=None))):
        assert "max_tokens" not in json.loads(body)
        status, answer = send(server, "POST", path, body)
        assert status == 200, answer
        usage = answer["usage"]
        assert 0 < usage["completion_tokens"] and usage["prompt_tokens"] + usage["completion_tokens"] <= CONTEXT


def test_an_explicit_max_tokens_that_cannot_fit_is_a_400(server):
    status, body = send(server, "POST", COMPLETIONS, completion(max_tokens=CONTEXT))
    assert status == 400 and openai_error(status, body)["code"] == "context_length_exceeded"
    assert f"plus max_tokens ({CONTEXT})" in body["error"]["message"]


def test_a_prompt_that_fills_the_context_is_a_400_without_max_tokens_too(server):
    status, body = send(server, "POST", COMPLETIONS, completion(prompt="x" * CONTEXT, max_tokens=None))
    assert status == 400 and openai_error(status, body)["code"] == "context_length_exceeded"
    assert "leaves no room for a reply" in body["error"]["message"]
