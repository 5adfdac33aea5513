"""Any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, Ollama, protege serve).

Requests go out asynchronously, at most `concurrency` at a time. The openai client's own retries are
off (max_retries=0) so that this loop decides: timeouts, lost connections, 408/409/429 and 5xx are
retried with exponential backoff and jitter (429 and 503 wait what Retry-After says); malformed or
empty replies are retried too, and dropped (None, counted) after the last try, never returned as
text. 401, 403 and 404 stop the whole call at once: no retry fixes a wrong key, model or URL. A call
also stops (TeacherError) when a full round of its requests failed every try with no answer from the
server (no connection, timeouts, 5xx, 429); a request answered with nothing usable or refused with
another 4xx fails alone (None), since the server is up and the fault is that request's.

Every failure is named by its real cause, read from the chain of exceptions the client wraps (its
aiohttp transport reports a refused connection as "Request timed out."): connection refused, DNS
failure, TLS error, timeout, connection lost, an HTTP status, an unusable reply. Where retrying cannot
help, the call stops at once with that cause: a teacher that has not answered once yet and fails its
TLS handshake or whose host name does not resolve, or (after REFUSED_TRIES quick tries, for a server
still starting) refuses the connection. Once it has answered, the same faults are retried: a server
restarting, a resolver's hiccup. The stats count retries and drops by reason (retried_why, dropped_why), and so does
every stage's teacher.json.

An agent's step (purpose "act") goes out through OpenAI's tool calling: the episode as the messages,
the tool schemas as `tools` with `tool_choice: "auto"`; its reply is the assistant message (content
and/or tool calls) as act_reply's JSON text, and one with neither is unusable like an empty reply.

Structured outputs (teacher.structured_outputs): a reply whose shape is known is asked for with
`response_format`. A teacher writing an input (write_input, evolve) is held to {"input": "..."}, which
synth/written.py unwraps; where the task's answers are JSON (its metric is json) an answer is held to the
metric's schema (json_schema), or to any JSON object (json_object) where it gives none. The shape is
part of the request's cache key, whatever the endpoint makes of it, so a resumed run finds every reply
of the last one. In auto mode, an endpoint that refuses the field (a 400 or 422 naming response_format
or json_schema, or an unsupported-parameter error) gets the request again without it, once, and no
shape is asked of it for the rest of the teacher's life; each request sent without the shape it wanted
is counted in the stats' notes (and teacher.json) under FELL_BACK. In on mode that refusal is the run's
error; off never asks."""

from __future__ import annotations

import asyncio
import email.utils
import importlib.util
import os
import random
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..config import TeacherConfig
from ..registry import TEACHER
from .base import (NEW_INPUT_SCHEMA, WRITES_INPUT, JsonAnswers, TeacherError, TeacherRequest, TeacherStats, Usage,
                   act_reply)

if TYPE_CHECKING:  # imported where used: importing protege loads every teacher file
    import openai

# openai is imported where a request goes out, not here: importing protege loads every teacher kind's file

FATAL_STATUS = {401, 403, 404}
RETRY_STATUS = {408, 409, 429}
RETRY_AFTER_CAP = 120.0  # seconds; a server asking for longer is treated as down (the openai client's cap)
REFUSED_TRIES = 3  # tries of a teacher that refuses connections and has never answered: a server starting up
# the deepest cause in an error's chain names it; the first matching kind here wins
CAUSES = ((ConnectionRefusedError, "connection refused"), (socket.gaierror, "DNS failure"),
          (ssl.SSLError, "TLS error"), (TimeoutError, "timeout"),
          (ConnectionError, "connection lost"))
FELL_BACK = "structured outputs unsupported: fell back to plain prompting"
FORMAT_REFUSED = "response_format refused"  # the retry that resends a request without it
# where a refusal names no field: OpenAI's codes for a parameter the model does not take
UNSUPPORTED_CODES = ("unsupported_parameter", "unknown_parameter", "unsupported_value")
HINTS = {"connection refused": "is the server running, at that address and port?",
         "DNS failure": "is the host name in teacher.base_url right?",
         "TLS error": "does teacher.base_url's scheme (http or https) match the server?"}


class OpenAITeacherConfig(TeacherConfig):
    kind: Literal["openai"] = Field("openai", description="Any OpenAI-compatible endpoint (OpenAI, vLLM, "
                                    "llama.cpp server, Ollama, protege serve).")
    base_url: str = Field("", description="Endpoint of the OpenAI-compatible server.")
    model: str = Field("", description="The model name sent to the endpoint.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    concurrency: int = Field(8, gt=0, description="Requests in flight at once.")
    max_retries: int = Field(5, ge=0, description="Retries after a timeout, a lost connection, 429, 5xx or a "
                             "malformed or empty reply; after the last one the request counts as failed (or "
                             "dropped, when its replies were unusable) and gives no data. Where no retry can "
                             "help the run stops at once, saying why: before the server has answered once, a "
                             "TLS error, a host name that does not resolve or (after "
                             f"{REFUSED_TRIES} tries) a refused connection.")
    retry_base_delay: float = Field(0.5, ge=0, description="Seconds before the first retry; each further one "
                                    "waits up to twice as long (randomly between half and all of that), up to "
                                    "retry_max_delay. A 429 or 503 with Retry-After waits what it says.")
    retry_max_delay: float = Field(8.0, ge=0, description="Longest backoff between two tries, in seconds.")
    timeout: float = Field(60.0, gt=0, description="Seconds before one request is abandoned (and retried).")
    structured_outputs: Literal["auto", "on", "off"] = Field(
        "auto", description="Ask for the reply's shape with response_format where it is known: a new input "
        "(written or evolved) as {\"input\": ...}, and an answer as JSON (the json metric's schema, else any "
        "object) when the task's metric is json. auto: where the endpoint refuses response_format (400 or "
        "422), the request is sent again without it and no shape is asked for the rest of the run, counted in "
        "teacher.json's notes; on: that refusal stops the run; off: never asked.")


class Unusable(Exception):
    """An answer came back but holds no reply (garbage JSON, no choices, empty text); `kind` is the
    reason it is counted under, the message says more."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Retry(Exception):
    """One attempt failed in a way another may not; `delay` is the server's Retry-After, if any;
    `tries`: the most attempts worth making for this cause (None: teacher.max_retries + 1)."""

    def __init__(self, error: Exception, delay: float | None = None, tries: int | None = None):
        super().__init__(str(error))
        self.error, self.delay, self.tries = error, delay, tries


def causes(error: BaseException) -> list[BaseException]:
    """The error and what it wraps (raise ... from, or raised while handling), outermost first."""
    chain = [error]
    while (inner := chain[-1].__cause__ or chain[-1].__context__) is not None and inner not in chain:
        chain.append(inner)
    return chain


def lost_connection(error: BaseException) -> bool:
    # the transports' own classes for a server that hung up (aiohttp's ServerDisconnectedError, httpx's
    # RemoteProtocolError) share no base class with the standard library's ConnectionError
    return isinstance(error, ConnectionError) or any(
        word in type(error).__name__ for word in ("Disconnect", "RemoteProtocol"))


def cause(error: BaseException) -> tuple[str, str]:
    """(reason, detail) of a failed attempt: the reason it is counted under and the words that say it."""
    import openai
    if isinstance(error, Unusable):
        return error.kind, str(error)
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}", f"HTTP {error.status_code}: {error.message}"
    for inner in reversed(causes(error)):
        reason = next((reason for kinds, reason in CAUSES if isinstance(inner, kinds)), None)
        reason = reason or ("connection lost" if lost_connection(inner) else None)
        if reason:
            return reason, f"{reason} ({inner})" if str(inner) else reason
    reason = "timeout" if isinstance(error, openai.APITimeoutError) else "connection error"
    return reason, f"{reason} ({error})"


def backoff_delay(attempt: int, base: float, cap: float, u: float) -> float:
    """Seconds before retry number attempt+1: the ceiling doubles each attempt up to cap, and the wait
    is drawn uniformly from its upper half (u in [0, 1)): clients that failed together spread out
    without any of them retrying at once ("equal jitter")."""
    ceiling = min(cap, base * 2 ** attempt)
    return ceiling / 2 * (1 + u)


def retry_after(headers, now: float | None = None) -> float | None:
    """The wait a server asked for: retry-after-ms, else Retry-After in seconds or as an HTTP date."""
    if headers.get("retry-after-ms") is not None:
        try:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if email.utils.parsedate_tz(value) else None
        return max(0.0, when.timestamp() - (now if now is not None else time.time())) if when else None


def json_schema(name: str, schema: dict) -> dict:
    """OpenAI's response_format holding the reply to a JSON schema."""
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


def refuses_format(error: openai.APIStatusError) -> bool:
    """Does a 4xx say the endpoint takes no response_format, or not this one? OpenAI names it in the
    error's param ("Unknown parameter: 'response_format'"), llama.cpp and vLLM in the message, a FastAPI
    server in its 422's field location; an unsupported-parameter code that names no field counts too."""
    if error.status_code not in (400, 422):
        return False
    said = f"{error.message} {error.body}"
    if "response_format" in said or "json_schema" in said:
        return True
    return error.code in UNSUPPORTED_CODES and error.param is None


def error_message(error: openai.APIStatusError) -> str:
    """The endpoint's own words for an error status (its body's message), else the client's line."""
    body = error.body
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) and message else error.message


def first_message(completion) -> dict:
    """The first choice's message of a chat.completion body ({} when there is none)."""
    choices = completion.get("choices") if isinstance(completion, dict) else None
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = first.get("message")
    return message if isinstance(message, dict) else {}


def reply_text(completion) -> str:
    """The reply's text, stripped, from a chat.completion body; Unusable when there is none."""
    text = first_message(completion).get("content")
    if not isinstance(text, str) or not text.strip():
        raise Unusable("empty reply" if isinstance(text, str) else "no reply text")
    return text.strip()


def act_text(completion) -> str:
    """purpose=act: the assistant message (content and/or tool calls) as act_reply's JSON text;
    Unusable when it has neither or a tool call is malformed."""
    message = first_message(completion)
    try:
        reply = act_reply(message)
    except (KeyError, TypeError, AttributeError) as exc:  # a tool call without a function or a name
        raise Unusable("malformed tool call", repr(exc)) from None
    if reply is None:
        raise Unusable("neither content nor tool calls")
    return reply


def usage_of(completion: dict) -> Usage:
    usage = completion.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def http_transport():
    """openai's aiohttp transport where aiohttp is installed (None: its default, httpx). Measured on
    loopback, a request costs the client about 1 ms of CPU through aiohttp against 2 ms through httpx;
    with dozens of requests in flight that CPU is what bounds throughput."""
    if importlib.util.find_spec("aiohttp") is None:
        return None
    import openai
    return openai.DefaultAioHttpClient()


def run_blocking(coroutine):
    """Run a coroutine to its end from synchronous code, also where an event loop is already
    running in this thread (a notebook, a server): then it runs in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class OpenAITeacher:
    name = "openai"

    def __init__(self, cfg: OpenAITeacherConfig):
        if not cfg.base_url:
            raise TeacherError("teacher.base_url is required for kind=openai")
        self.cfg = cfg
        self.stats = TeacherStats()
        self.reached = False  # some answer came back from the server, an error status included
        self.answers: JsonAnswers | None = None  # the task's answers are JSON (build_teacher sets it)
        self.structured = True  # False once the endpoint refused response_format: never asked again
        self._random = random.Random()

    @property
    def label(self) -> str:
        return f"{self.cfg.base_url} (model {self.cfg.model!r})"

    def identity(self) -> str:
        return f"openai:{self.cfg.base_url.rstrip('/')}:{self.cfg.model}"

    def complete(self, requests: list[TeacherRequest], on_reply=None) -> list[str | None]:
        """One reply per request (None: failed or dropped); on_reply(index, reply, usage) is called
        as each one arrives, so a cache can keep it before the rest are done."""
        self.stats.requests += len(requests)
        self.stats.paid += len(requests)
        return run_blocking(_Batch(self, requests, on_reply).run()) if requests else []

    def _client(self) -> openai.AsyncOpenAI:
        import openai
        return openai.AsyncOpenAI(base_url=self.cfg.base_url, api_key=os.environ.get(self.cfg.api_key_env, "none"),
                                  max_retries=0, timeout=self.cfg.timeout, http_client=http_transport())

    def response_format(self, request: TeacherRequest) -> dict | None:
        """The reply's shape this request asks for (None: free text). It is part of the cache key as
        asked, whether the endpoint took it or not: a run resumed on the same endpoint finds the replies
        the last one kept."""
        if self.cfg.structured_outputs == "off":
            return None
        if request.purpose in WRITES_INPUT:
            return json_schema("new_input", NEW_INPUT_SCHEMA)
        if request.purpose == "answer" and self.answers is not None:
            return json_schema("answer", self.answers.schema) if self.answers.schema else {"type": "json_object"}
        return None

    def body(self, request: TeacherRequest) -> dict:
        body = {"model": self.cfg.model, "messages": request.chat(), "temperature": request.temperature,
                "max_tokens": self.cfg.max_tokens, "seed": request.sample}
        tools = request.tool_schemas() if request.purpose == "act" else []
        if tools:  # OpenAI refuses an empty tools list
            body |= {"tools": tools, "tool_choice": "auto"}
        shape = self.response_format(request) if self.structured else None
        return body | ({"response_format": shape} if shape else {})

    async def post(self, client: openai.AsyncOpenAI, request: TeacherRequest) -> object:
        """The request's completion. Where the endpoint refuses its response_format, in auto mode the
        request goes again without it, and no shape is asked of this endpoint from then on."""
        import openai
        body = self.body(request)
        try:
            return await client.post("/chat/completions", body=body, cast_to=object)
        except openai.APIStatusError as exc:
            if "response_format" not in body or not refuses_format(exc):
                raise
            if self.cfg.structured_outputs == "on":
                raise TeacherError(f"teacher {self.label} refused response_format (teacher.structured_outputs "
                                   f"is on): HTTP {exc.status_code}: {error_message(exc)}; set it to auto to "
                                   "fall back to plain prompting, or off") from None
            self.structured = False
            self.stats.retry(FORMAT_REFUSED)
        return await client.post("/chat/completions", body=self.body(request), cast_to=object)

    def fell_back(self, request: TeacherRequest) -> bool:
        """Was the request sent without the shape it asks for, since the endpoint refused it?"""
        return not self.structured and self.response_format(request) is not None

    async def attempt(self, client: openai.AsyncOpenAI, request: TeacherRequest) -> tuple[str, Usage]:
        """One try: the reply and its usage, or Retry, or TeacherError when no try can succeed.
        The body is posted as JSON and read back as a dict: chat.completions.create would check and
        convert both through typed models, which costs about twice the CPU per request, and at a few
        dozen requests in flight the client's CPU is what bounds throughput."""
        import openai
        try:
            completion = await self.post(client, request)
            self.reached = True
            reply = act_text(completion) if request.purpose == "act" else reply_text(completion)
            return reply, usage_of(completion)
        except openai.APIStatusError as exc:
            self.reached = True
            if exc.status_code in FATAL_STATUS:
                raise TeacherError(f"teacher {self.label} answered {exc.status_code}: {exc.message}") from None
            if exc.status_code in RETRY_STATUS or exc.status_code >= 500:
                raise Retry(exc, retry_after(exc.response.headers)) from None
            raise  # another 4xx: this request is wrong, asking again gives the same answer
        except openai.APIConnectionError as exc:  # timeouts are connection errors
            raise self.connection_failure(exc) from None
        except Unusable as exc:
            raise Retry(exc) from None
        except ValueError as exc:  # a body that is not JSON
            self.reached = True
            raise Retry(Unusable("malformed answer", str(exc))) from None

    def connection_failure(self, error: Exception) -> Exception:
        """A Retry, or a TeacherError at once where no retry can help: a server that has never answered
        and fails its TLS handshake or has a host name that does not resolve."""
        reason, _ = cause(error)
        if reason in ("TLS error", "DNS failure") and not self.reached:
            return TeacherError(self.unreachable(error, 1))
        return Retry(error, tries=REFUSED_TRIES if reason == "connection refused" and not self.reached else None)

    def unreachable(self, error: Exception, tries: int) -> str:
        """One line for the teacher given up on: its address, the real cause and what may fix it."""
        reason, detail = cause(error)
        hint = f"; {HINTS[reason]}" if reason in HINTS else ""
        when = "at the first try" if tries == 1 else f"after {tries} tries"
        return f"teacher {self.label}: {detail}, {when}{hint}"

    def wait(self, attempt: int, asked: float | None) -> float:
        if asked is not None and asked <= RETRY_AFTER_CAP:
            return asked
        return backoff_delay(attempt, self.cfg.retry_base_delay, self.cfg.retry_max_delay, self._random.random())


def request_fault(error: Exception) -> bool:
    """Did a request fail for its own content, not the teacher's state? The server answered, with
    nothing usable (Unusable) or with a 4xx that no retry fixes (a prompt too long, say); a lost
    connection, a timeout, 5xx or 429 to the last try is the teacher's."""
    import openai
    if isinstance(error, Unusable):
        return True
    return (isinstance(error, openai.APIStatusError) and error.status_code < 500
            and error.status_code not in RETRY_STATUS)


class _Batch:
    """One complete() call: the client, the bound on requests in flight, and the outcome so far."""

    def __init__(self, teacher: OpenAITeacher, requests: list[TeacherRequest], on_reply):
        self.teacher, self.requests, self.on_reply = teacher, requests, on_reply
        self.replies: list[str | None] = [None] * len(requests)
        # answered: usable replies; refused: failed by their own content; lost: failed for the teacher's
        self.answered = self.refused = self.lost = 0
        self.last_error: Exception | None = None

    async def run(self) -> list[str | None]:
        self.gate = asyncio.Semaphore(self.teacher.cfg.concurrency)
        async with self.teacher._client() as client:
            tasks = [asyncio.ensure_future(self.one(client, i)) for i in range(len(self.requests))]
            try:
                await asyncio.gather(*tasks)
            finally:  # after an error the others stop, before the client closes under them
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return self.replies

    async def one(self, client, i: int) -> None:
        await self.gate.acquire()
        # not released on an error: after a TeacherError (or while the others are cancelled for
        # one) no further request goes out
        reply, usage = await self.ask(client, self.requests[i])
        self.gate.release()
        self.replies[i] = reply
        self.answered += reply is not None
        if self.on_reply:
            self.on_reply(i, reply, usage)
        if reply is None:
            self.give_up_if_dead()

    async def ask(self, client, request: TeacherRequest) -> tuple[str | None, Usage]:
        """One request: (reply, usage), or (None, nothing) after the last try; counted in the notes
        where it went without the shape it asks for."""
        outcome = await self.tries(client, request)
        if self.teacher.fell_back(request):
            self.teacher.stats.note(FELL_BACK)
        return outcome

    async def tries(self, client, request: TeacherRequest) -> tuple[str | None, Usage]:
        """The retry loop of one request."""
        import openai
        stats, tries = self.teacher.stats, self.teacher.cfg.max_retries + 1
        for attempt in range(tries):
            try:
                reply, usage = await self.teacher.attempt(client, request)
                stats.charge(usage)
                return reply, usage
            except Retry as retry:
                error = retry.error
                if retry.tries is not None and attempt + 1 >= min(tries, retry.tries):
                    raise TeacherError(self.teacher.unreachable(error, attempt + 1)) from None
                if attempt + 1 < tries:
                    stats.retry(cause(error)[0])
                    await asyncio.sleep(self.teacher.wait(attempt, retry.delay))
            except openai.APIStatusError as exc:
                error = exc
                break
        return self.lose(error)

    def lose(self, error: Exception) -> tuple[None, Usage]:
        """A request given up: dropped when its replies were unusable, failed otherwise."""
        stats = self.teacher.stats
        if isinstance(error, Unusable):
            stats.drop(error.kind)
        else:
            stats.failed += 1
        self.last_error = error
        if request_fault(error):
            self.refused += 1
        else:
            self.lost += 1
        return None, Usage()

    def give_up_if_dead(self) -> None:
        """A teacher that has answered nothing while a full round of requests failed every try, none
        of them for its own content, is down: one clear error now, rather than every remaining request
        waiting out its retries. A request the server answered with nothing usable or refused with a
        4xx says the server is up: its None is that request's, and the call goes on (an agent's episode
        whose step fails ends, and the run's other episodes continue)."""
        cfg = self.teacher.cfg
        if self.answered == self.refused == 0 and self.lost >= min(len(self.requests), cfg.concurrency):
            raise TeacherError(f"teacher {cfg.base_url} failed every request ({self.lost} of them, "
                               f"up to {cfg.max_retries + 1} tries each): {cause(self.last_error)[1]}")


@TEACHER.register(OpenAITeacherConfig)
def build(cfg: OpenAITeacherConfig, task_dir: Path, student=None) -> OpenAITeacher:
    return OpenAITeacher(cfg)
