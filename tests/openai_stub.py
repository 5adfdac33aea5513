"""A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions protocol, for tests and
benchmarks. `reply(messages) -> str | dict` writes the answers: a string is the reply's text; a dict is
the assistant message, `{"content": ..., "tool_calls": [...]}` (see `tool_call`), sent as it is with
finish_reason "tool_calls" when it calls tools. `bodies` keeps the last `keep` request bodies as they
arrived (messages, tools, tool_choice, ...). `fail_every` makes every Nth request a 500;
`delay` answers after a fixed delay; `fault(body, attempt) -> kind | None` injects faults (see
`seeded_faults`): a hung request ("timeout"), an HTTP error status ("429" and "503" with
Retry-After, "500", "401", ...), "garbage" JSON, a connection dropped without an answer ("drop"), or
an "empty" answer.

Structured outputs (`structured`): "ignore" (the default) answers as if no response_format were sent,
as a server that does not read it; "honour" answers with JSON, as constrained decoding would: a reply
that is a JSON object as it is, any other wrapped as the value of the schema's first required property
("answer" for json_object); "refuse" answers a request that has response_format with `refusal` (status
and body; OpenAI's 400 for a parameter it does not take by default). `formats` keeps the
response_format of every request (None where it had none), in the order they arrived.

Usage counts words: prompt_tokens is the number of whitespace-separated words in the messages'
contents, completion_tokens the number in the reply's content and its tool calls' arguments, so tests
can count tokens by hand."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

FAULTS = ("timeout", "429", "500", "garbage", "drop", "empty")
# what OpenAI answers a model that takes no response_format
UNKNOWN_PARAMETER = (400, {"error": {"message": "Unknown parameter: 'response_format'.",
                                     "type": "invalid_request_error", "param": "response_format",
                                     "code": "unknown_parameter"}})

Fault = Callable[[dict, int], "str | None"]


def seeded_faults(rate: float, seed: int = 0, kinds: tuple[str, ...] = FAULTS) -> Fault:
    """A fault for the attempt-th arrival of a request body, chosen by a hash of (seed, body, attempt):
    the same requests meet the same faults in whatever order concurrency delivers them."""
    def fault(body: dict, attempt: int) -> str | None:
        blob = f"{seed}|{attempt}|{json.dumps(body, sort_keys=True)}".encode()
        h = hashlib.sha256(blob).digest()
        if int.from_bytes(h[:8], "big") / 2 ** 64 >= rate:
            return None
        return kinds[h[8] % len(kinds)]
    return fault


def words(text: str) -> int:
    return len(text.split())


def tool_call(name: str, arguments: dict | str, id: str = "call_0") -> dict:
    """One tool call as OpenAI writes it: the arguments as a JSON string (a string is sent as given)."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": id, "type": "function", "function": {"name": name, "arguments": text}}


def reply_words(message: dict) -> int:
    calls = message.get("tool_calls") or []
    arguments = [c.get("function", {}).get("arguments") for c in calls if isinstance(c, dict)]
    return words(message.get("content") or "") + sum(words(a) for a in arguments if isinstance(a, str))


def as_json(reply: str, response_format: dict) -> str:
    """The reply as constrained decoding to the format would write it: JSON, an object as it is."""
    try:
        if isinstance(json.loads(reply), dict):
            return reply
    except ValueError:
        pass
    schema = response_format.get("json_schema", {}).get("schema", {})
    key = (schema.get("required") or list(schema.get("properties", {})) or ["answer"])[0]
    return json.dumps({key: reply})


def completion(n: int, model: str, messages: list[dict], reply: "str | dict") -> dict:
    """A chat.completion body; reply: the text, or the assistant message (content and/or tool_calls)."""
    message = {"role": "assistant", "content": reply} if isinstance(reply, str) else {
        "role": "assistant", "content": None, **reply}
    prompt = sum(words(m.get("content") or "") for m in messages)
    out = reply_words(message)
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return {"id": f"c{n}", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": finish, "message": message}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}}


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default 5 resets connections when dozens open at once


class StubServer:
    def __init__(self, reply: Callable[[list[dict]], "str | dict"], fail_every: int = 0,
                 fault: Fault | None = None, delay: float = 0.0, stall: float = 5.0, retry_after: str = "0", keep: int = 100,
                 structured: str = "ignore", refusal: tuple[int, dict] = UNKNOWN_PARAMETER):
        assert structured in ("ignore", "honour", "refuse"), structured
        self.reply, self.fail_every, self.fault = reply, fail_every, fault
        self.structured, self.refusal = structured, refusal
        self.formats: list[dict | None] = []  # each request's response_format, in arrival order
        self.delay, self.stall, self.retry_after = delay, stall, retry_after
        self.requests = 0  # every request that arrived, faulty or not
        self.answered = 0  # good answers written out in full
        self.in_flight = self.max_in_flight = 0
        self.faults: Counter = Counter()  # kind -> times injected
        self.bodies: deque[dict] = deque(maxlen=keep)  # the last `keep` request bodies, oldest first
        self._seen: Counter = Counter()  # request body -> arrivals, so a fault plan can tell retries apart
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.httpd = _Server(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "StubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()  # wakes hung (timeout-fault) requests
        self.httpd.shutdown()
        self.httpd.server_close()

    def _arrive(self, body: dict) -> tuple[int, int]:
        """The request's number, and how many times this same body came before."""
        key = json.dumps(body, sort_keys=True)
        with self._lock:
            self.requests += 1
            self.bodies.append(body)
            self.formats.append(body.get("response_format"))
            self._seen[key] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.requests, self._seen[key] - 1

    def _leave(self, answered: bool) -> None:
        with self._lock:
            self.in_flight -= 1
            self.answered += answered

    def _fault_of(self, n: int, body: dict, attempt: int) -> str | None:
        if self.fail_every and n % self.fail_every == 0:
            kind = "500"
        else:
            kind = self.fault(body, attempt) if self.fault else None
        if kind:
            with self._lock:
                self.faults[kind] += 1
        return kind

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints do
            # headers and body go out in two writes; with Nagle on, the second waits ~40 ms for an ACK
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def _send(self, code: int, data: bytes, headers: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, code: int, message: str, headers: dict | None = None) -> None:
                self._send(code, json.dumps({"error": {"message": message}}).encode(), headers)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                n, attempt = server._arrive(body)
                answered = False
                try:
                    if server.delay:
                        time.sleep(server.delay)
                    answered = self._answer(n, body, server._fault_of(n, body, attempt))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout) before the answer was written
                finally:
                    server._leave(answered)

            def _answer(self, n: int, body: dict, kind: str | None) -> bool:
                """Write the answer or the fault; True when a good answer went out."""
                shape = body.get("response_format")
                if shape and server.structured == "refuse":
                    self._send(server.refusal[0], json.dumps(server.refusal[1]).encode())
                    return False
                if kind in ("timeout", "drop"):
                    if kind == "timeout":
                        server._closing.wait(server.stall)
                    self.close_connection = True  # hang up without a word
                    return False
                if kind and kind.isdigit():  # an HTTP error status: "429", "500", "401", ...
                    wait = {"Retry-After": server.retry_after} if kind in ("429", "503") else None
                    self._error(int(kind), f"injected {kind}", wait)
                elif kind == "garbage":
                    self._send(200, b'{"id": "c", "choices": [{"message": {"content": "trunc')
                else:
                    reply = "" if kind == "empty" else server.reply(body["messages"])
                    if shape and shape.get("type") != "text" and server.structured == "honour" and reply:
                        reply = as_json(reply, shape) if isinstance(reply, str) else reply
                    self._send(200, json.dumps(completion(n, body["model"], body["messages"], reply)).encode())
                    return kind is None
                return False

        return Handler
