"""`protege serve`: a real uvicorn server on loopback with a tiny random model, driven by the real
openai client (and by protege's own OpenAITeacher)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import uvicorn

from protege.models.tiny import build_tiny
from protege.serve import build_app
from protege.serve.app import apply_stop
from protege.serve.batching import cut_at_stop
from protege.teachers.base import TeacherRequest
from protege.teachers.openai_api import OpenAITeacher, OpenAITeacherConfig

KEY = "test-key"
MAX_TOKENS = 64
MAX_BYTES = 20_000
NAME = "tiny-student"


def varied_tiny(directory):
    """build_tiny's default init makes every reply repeat the prompt's last token, so answers could not
    tell requests apart; larger weights make replies depend on the prompt."""
    return build_tiny(directory, seed=0, weight_std=0.3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # a wide batching window so that requests sent together surely meet in one batch
    app = build_app(varied_tiny(tmp_path_factory.mktemp("tiny")), api_key=KEY, max_tokens_limit=MAX_TOKENS,
                    max_request_bytes=MAX_BYTES, model_name=NAME, batch_wait_ms=300)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.02)
    yield app, f"http://127.0.0.1:{uv.config.port}/v1"
    uv.should_exit = True
    thread.join(timeout=10)


def client(server, key=KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[1], api_key=key, max_retries=0)


def raw_request(url: str, body: bytes | None = None, key: str | None = KEY) -> tuple[int, dict]:
    """Status and JSON body of a request the openai client would not send (bad JSON, no key)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers)) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def chat(server, content: str, max_tokens: int = 12, **kw):
    return client(server).chat.completions.create(model=NAME, messages=[{"role": "user", "content": content}],
                                                  max_tokens=max_tokens, temperature=0, **kw)


def test_cut_at_stop_keeps_tokens_before_the_first_stop_and_counts_it():
    assert cut_at_stop([5, 6, 2, 0, 0], {2}, 5) == ([5, 6], 3, "stop")
    assert cut_at_stop([5, 6, 7], {2}, 3) == ([5, 6, 7], 3, "length")
    assert cut_at_stop([2, 0], {2, 9}, 2) == ([], 1, "stop")


def test_apply_stop_cuts_at_the_earliest_stop_string():
    assert apply_stop("ab##cd;;", ["x", ";;", "##"]) == ("ab", True)
    assert apply_stop("abc", "z") == ("abc", False)
    assert apply_stop("abc", None) == ("abc", False)


def test_lists_the_served_model(server):
    assert [m.id for m in client(server).models.list().data] == [NAME]


def test_chat_completion_follows_the_openai_schema(server):
    reply = chat(server, "hello", max_tokens=10)
    # the byte-level chat template: "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert reply.object == "chat.completion" and reply.model == NAME
    assert reply.usage.prompt_tokens == 1 + 5 + 5 + 1 + 1 + 1 + 10
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    finish = reply.choices[0].finish_reason
    assert (finish, reply.usage.completion_tokens) == ("length", 10) or finish == "stop"


def test_streamed_chunks_join_to_the_whole_reply(server):
    whole = chat(server, "tell me a story").choices[0].message.content
    chunks = list(chat(server, "tell me a story", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert len(chunks) > 1 and chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_completions_take_a_raw_prompt(server):
    reply = client(server).completions.create(model=NAME, prompt="abcdef", max_tokens=8, temperature=0)
    assert reply.object == "text_completion" and reply.choices[0].text
    assert reply.usage.prompt_tokens == 6  # one token a byte


def test_a_wrong_or_missing_key_is_401(server):
    with pytest.raises(openai.AuthenticationError, match="API key"):
        client(server, key="wrong").models.list()
    status, body = raw_request(f"{server[1]}/models", key=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_max_tokens_over_the_limit_is_400_saying_so(server):
    with pytest.raises(openai.BadRequestError, match=f"max_tokens is {MAX_TOKENS + 1}.*at most {MAX_TOKENS}"):
        chat(server, "hi", max_tokens=MAX_TOKENS + 1)


def test_without_max_tokens_a_reply_is_held_to_the_servers_limit(server):
    # the context (1024) has room for more: the server's --max-tokens bounds the default
    reply = client(server).chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}],
                                                   temperature=0)
    assert 0 < reply.usage.completion_tokens <= MAX_TOKENS


def test_an_oversized_body_is_413(server):
    with pytest.raises(openai.APIStatusError, match=f"at most {MAX_BYTES}") as caught:
        chat(server, "x" * MAX_BYTES)
    assert caught.value.status_code == 413


def test_unknown_model_is_404_and_bad_requests_are_400(server):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(server).chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    status, body = raw_request(f"{server[1]}/chat/completions", json.dumps({"model": NAME}).encode())
    assert status == 400 and body["error"]["message"] == "messages: Field required"
    status, body = raw_request(f"{server[1]}/chat/completions", b"{not json")
    assert status == 400 and body["error"]["code"] == "invalid_json"


def test_concurrent_requests_are_batched_and_answered_as_alone(server):
    prompts = ["a", "bb", "what is 2+2?", "tell me about cats", "x" * 30, "hello", "?", "one two three"]
    alone = [chat(server, p).choices[0].message.content for p in prompts]
    assert len(set(alone)) > 1  # replies depend on the prompt, so a mix-up would show
    sizes = server[0].state.server.batcher.batch_sizes
    before = len(sizes)
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: chat(server, p).choices[0].message.content, prompts))
    assert together == alone
    assert max(sizes[before:]) > 1


def test_serves_as_protege_teacher(server, monkeypatch):
    monkeypatch.setenv("PROTEGE_SERVE_TEST_KEY", KEY)
    cfg = OpenAITeacherConfig(base_url=server[1], model=NAME, api_key_env="PROTEGE_SERVE_TEST_KEY",
                        max_tokens=16, max_retries=0)
    requests = [TeacherRequest("answer", "Reverse the word.", input=w) for w in ("cat", "horse")]
    replies = OpenAITeacher(cfg).complete(requests)
    assert all(isinstance(r, str) and r for r in replies)
