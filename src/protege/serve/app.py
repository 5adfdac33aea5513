"""`protege serve MODEL`: an OpenAI-compatible server (/v1/models, /v1/chat/completions,
/v1/completions). Requests that arrive together are generated as one batch (batching.py).

Streaming generates the whole reply first (so it can share a batch), then sends it as server-sent
events in pieces, ending with `data: [DONE]` as OpenAI does: clients that stream work, but the first
piece arrives when the whole reply is ready.

Tool calling, as OpenAI's API does it, so that a served student drops into an agent loop: a chat
request may carry `tools` and `tool_choice`, `tool` messages and assistant messages with `tool_calls`
(and empty content). A chat is rendered and a reply parsed exactly as in evaluation (models.acting
with chat_format): a reply holding `<tool_call>` blocks comes back as `tool_calls`, finish_reason
"tool_calls", also when streamed (OpenAI's tool-call deltas). `tool_choice` "auto" (the default with
tools) lets the model choose; "none" offers no tools; "required" or a named function forces a call by
constrained decoding (models.forced_calls), so its arguments always parse and match the tool's schema,
even from a random model. A forced call runs to its end past a smaller max_tokens, and stop strings do
not cut it.

With an API key, every path is behind it, the API's docs and schema included. Every error is OpenAI's
JSON shape, {"error": {"message", "type", "param", "code"}}: what the request got wrong (its JSON, a
field's type, checked as strictly as OpenAI checks it, a role, an empty prompt, a reply that cannot fit)
is a 4xx; anything else is logged and answered as a JSON 500 on a connection that stays open. A request
without max_tokens gets what fits, as vLLM gives it: the server's --max-tokens, or less where the model's
context ends first."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from jinja2 import TemplateError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from ..conversations import normalize_tools
from ..models.acting import act_prompts, parsed_turns
from ..models.forced_calls import ForcedCall
from ..models.generate import chat_prompts
from .batching import Batcher, Generation
from .proxy import ProxySpec

STREAM_PIECE_CHARS = 16
ROLES = ("system", "developer", "user", "assistant", "tool", "function")  # those OpenAI's API accepts
logger = logging.getLogger(__name__)


class APIError(Exception):
    """Answered as OpenAI does: {"error": {"message", "type", "param", "code"}} with the HTTP status."""

    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error",
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.kind, self.param = status, message, code, kind, param


def error_response(exc: APIError) -> JSONResponse:
    body = {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}}
    return JSONResponse(body, status_code=exc.status)


class Strict(BaseModel):
    """Types are checked as OpenAI's API checks them: "5" is not an integer, true not a temperature.
    Unknown fields are accepted and ignored."""
    model_config = ConfigDict(extra="allow", strict=True)


class FunctionCall(Strict):
    name: str = Field(min_length=1)
    arguments: str | dict = "{}"


class ToolCall(Strict):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(Strict):
    type: str
    text: str = ""


class Message(Strict):
    role: Literal[ROLES]
    content: str | list[ContentPart] | None = ""
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def text(self) -> str:
        """Content given as OpenAI content parts keeps its text parts."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content if part.type == "text")
        return self.content or ""

    def chat_message(self) -> dict:
        """The message as chat_format takes it: only the fields OpenAI's API defines."""
        message = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump(include={"id", "type", "function"}) for call in self.tool_calls]
        message.update({key: value for key, value in (("tool_call_id", self.tool_call_id), ("name", self.name))
                        if value is not None})
        return message


class Sampling(Strict):
    """What both endpoints share. Unknown OpenAI fields (seed, top_p, ...) are accepted and ignored."""
    model: str
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float = Field(1.0, ge=0, le=2)
    stream: bool = False
    stop: str | list[str] | None = None
    n: Literal[1] = 1


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    tools: list | None = None
    tool_choice: str | dict | None = None


class CompletionRequest(Sampling):
    prompt: str


@dataclass(frozen=True)
class ToolPlan:
    """What a chat request does with tools: those offered to the model (None: none), and the call the
    reply must be (None: the model chooses)."""
    tools: list[dict] | None
    forced: ForcedCall | None = None


def tool_plan(body: ChatRequest) -> ToolPlan:
    tools = checked_tools(body.tools)
    choice = "auto" if body.tool_choice is None else body.tool_choice
    if choice == "none" or (choice == "auto" and not tools):
        return ToolPlan(None)
    if choice == "auto":
        return ToolPlan(tools)
    if not tools:
        raise APIError(400, "tool_choice asks for a tool call, but the request has no tools", "invalid_tool_choice")
    functions = {tool["function"]["name"]: tool["function"] for tool in tools}
    if choice == "required":
        return ToolPlan(tools, ForcedCall(functions))
    name = chosen_function(choice)
    if name not in functions:
        raise APIError(400, f"tool_choice names the function {name!r}, which is not among the tools "
                       f"({', '.join(functions)})", "invalid_tool_choice")
    return ToolPlan(tools, ForcedCall({name: functions[name]}))


def chosen_function(choice: str | dict) -> str:
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise APIError(400, 'tool_choice must be "none", "auto", "required" or {"type": "function", '
                       '"function": {"name": NAME}}', "invalid_tool_choice")
    return function["name"]


def checked_tools(tools: list | None) -> list[dict]:
    """The request's tools in OpenAI's shape; a tool without a name, a repeated name or parameters that
    are not an object schema is the request's error."""
    try:
        normalized = normalize_tools(tools)
    except ValueError as exc:
        raise APIError(400, str(exc), "invalid_tools") from exc
    names = [tool["function"]["name"] for tool in normalized]
    for n, tool in enumerate(normalized):
        problem = parameters_problem(tool["function"].get("parameters"))
        if names.index(names[n]) != n:
            problem = "another tool has the same name"
        if problem:
            raise APIError(400, f"tools[{n}] ({names[n]}): {problem}", "invalid_tools")
    return normalized


def parameters_problem(parameters) -> str:
    if parameters is None:
        return ""
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        return 'parameters must be a JSON schema of type "object"'
    if not isinstance(parameters.get("properties", {}), dict):
        return "parameters.properties must be an object"
    required = parameters.get("required", [])
    if not isinstance(required, list) or not all(isinstance(key, str) for key in required):
        return "parameters.required must be a list of property names"
    return ""


def validation_error(exc: ValidationError) -> APIError:
    """The most specific problem (the deepest, where a union's branches each failed), naming the field:
    `messages: Field required`."""
    first = max(exc.errors(include_url=False), key=lambda error: len(error["loc"]))
    if first["type"] == "json_invalid":
        return APIError(400, f"request body is not valid JSON: {first['msg']}", "invalid_json")
    where = ".".join(str(part) for part in first["loc"])
    return APIError(400, f"{where or 'body'}: {first['msg']}", "invalid_request", param=where or None)


def parse_body(raw: bytes, schema: type[BaseModel]):
    """pydantic's JSON parser refuses what json.loads lets through to crash later: bytes that are not
    UTF-8, a lone surrogate ("\\ud800", which no UTF-8 text can hold), nesting deep enough to recurse."""
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def apply_stop(text: str, stop: str | list[str] | None) -> tuple[str, bool]:
    """The text cut before the earliest stop string, and whether one was found."""
    stops = [stop] if isinstance(stop, str) else stop or []
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def pieces(text: str) -> list[str]:
    return [text[i:i + STREAM_PIECE_CHARS] for i in range(0, len(text), STREAM_PIECE_CHARS)] or [""]


class Server:
    """The loaded model and the limits; one per app."""

    def __init__(self, model, tokenizer, name: str, api_key: str | None, max_tokens_limit: int,
                 max_request_bytes: int, batcher: Batcher):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.api_key, self.max_tokens_limit, self.max_request_bytes = api_key, max_tokens_limit, max_request_bytes
        self.batcher = batcher
        self.context = getattr(model.config, "max_position_embeddings", None)

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise APIError(401, "invalid or missing API key: send `Authorization: Bearer KEY`",
                           "invalid_api_key", "authentication_error")

    async def read(self, request: Request, schema: type[BaseModel]):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_request_bytes:
            raise self.too_large(int(declared))
        raw = await request.body()
        if len(raw) > self.max_request_bytes:
            raise self.too_large(len(raw))
        return parse_body(raw, schema)

    def too_large(self, size: int) -> APIError:
        return APIError(413, f"request body is {size} bytes; this server accepts at most "
                        f"{self.max_request_bytes}", "request_too_large")

    def max_tokens(self, body: Sampling, prompt: list[int], forced: ForcedCall | None = None) -> int:
        """What the request asks, or for a forced call, at least what the call may take. A request that
        asks nothing gets what fits, up to the server's limit, as vLLM does."""
        asked = body.max_completion_tokens or body.max_tokens
        if asked and asked > self.max_tokens_limit:
            raise APIError(400, f"max_tokens is {asked}; this server allows at most {self.max_tokens_limit}",
                           "max_tokens_too_large")
        bound = forced.token_bound() if forced else 0
        if bound > self.max_tokens_limit:
            raise APIError(400, f"a call to {' or '.join(forced.functions)} may take {bound} tokens; this "
                           f"server allows at most {self.max_tokens_limit}", "max_tokens_too_large")
        return max(asked or self.room(prompt), bound)

    def room(self, prompt: list[int]) -> int:
        """The most tokens a reply to `prompt` may take: the server's limit, or less where the context
        ends first (none where the prompt fills it: check_length refuses that)."""
        left = self.context - len(prompt) if self.context else self.max_tokens_limit
        return min(self.max_tokens_limit, left)

    def check_model(self, name: str) -> None:
        if name != self.name:
            raise APIError(404, f"model '{name}' does not exist; this server serves '{self.name}'",
                           "model_not_found")

    def check_length(self, prompt: list[int], max_tokens: int) -> None:
        if not prompt:
            raise APIError(400, "the prompt is empty: there is nothing to continue", "empty_prompt", param="prompt")
        if self.context and len(prompt) >= self.context:
            raise APIError(400, f"prompt ({len(prompt)} tokens) leaves no room for a reply in the model's context "
                           f"of {self.context} tokens", "context_length_exceeded")
        if self.context and len(prompt) + max_tokens > self.context:
            raise APIError(400, f"prompt ({len(prompt)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                           f"model's context of {self.context} tokens", "context_length_exceeded")

    def chat_prompt(self, messages: list[dict], tools: list[dict] | None) -> list[int]:
        """The chat as the student saw it in evaluation (models.acting renders it)."""
        try:
            chats, template_tools = act_prompts([messages], tools, self.tokenizer)
            return chat_prompts(self.tokenizer, chats, template_tools)[0]
        except (ValueError, KeyError, TemplateError) as exc:
            raise APIError(400, f"messages cannot be rendered for this model: {exc}", "invalid_messages") from exc

    async def generate(self, prompt: list[int], body: Sampling, forced: ForcedCall | None = None) -> Generation:
        self.check_model(body.model)
        max_tokens = self.max_tokens(body, prompt, forced)
        self.check_length(prompt, max_tokens)
        result = await asyncio.wrap_future(self.batcher.submit(prompt, max_tokens, body.temperature, forced))
        if forced is not None:
            return result
        text, stopped = apply_stop(result.text, body.stop)
        return Generation(text, result.prompt_tokens, result.completion_tokens,
                          "stop" if stopped else result.finish_reason)


def usage(result: Generation) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def envelope(kind: str, model: str) -> dict:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": model}


@dataclass(frozen=True)
class ChatAnswer:
    message: dict  # the assistant message, with tool_calls where the reply made calls
    finish_reason: str
    generation: Generation


def chat_answer(result: Generation, messages: list[dict], tools: list[dict] | None) -> ChatAnswer:
    """The reply as evaluation reads it where tools were offered: its calls, numbered on from the
    chat's, are tool_calls (finish_reason "tool_calls"), the text outside them the content."""
    if tools is None:
        return ChatAnswer({"role": "assistant", "content": result.text}, result.finish_reason, result)
    turn = parsed_turns([result.text], [messages], tools)[0]
    if turn.tool_calls:
        return ChatAnswer(turn.message, "tool_calls", result)
    return ChatAnswer({"role": "assistant", "content": turn.content or ""}, result.finish_reason, result)


def chat_response(answer: ChatAnswer, model: str) -> dict:
    choice = {"index": 0, "finish_reason": answer.finish_reason, "logprobs": None, "message": answer.message}
    return {**envelope("chat.completion", model), "choices": [choice], "usage": usage(answer.generation)}


def completion_response(result: Generation, model: str) -> dict:
    choice = {"index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": None}
    return {**envelope("text_completion", model), "choices": [choice], "usage": usage(result)}


def chat_stream(answer: ChatAnswer, model: str):
    head = envelope("chat.completion.chunk", model)
    for delta in chat_deltas(answer.message):
        yield sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    yield sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}],
               "usage": usage(answer.generation)})
    yield sse("[DONE]")


def chat_deltas(message: dict) -> list[dict]:
    """The message in OpenAI's stream pieces: the content, then each call (its id, type and name,
    then its arguments in pieces, all under the call's index); the first piece names the role."""
    calls = message.get("tool_calls") or []
    content = message.get("content") or ""
    deltas = [{"content": piece} for piece in pieces(content)] if content or not calls else []
    for index, call in enumerate(calls):
        function = call["function"]
        deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                       "function": {"name": function["name"], "arguments": ""}}]})
        deltas.extend({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                      for piece in pieces(function["arguments"]))
    return [{"role": "assistant", **deltas[0]}, *deltas[1:]]


def completion_stream(result: Generation, model: str):
    head = envelope("text_completion", model)
    texts = pieces(result.text)
    for i, piece in enumerate(texts):
        reason = result.finish_reason if i == len(texts) - 1 else None
        yield sse({**head, "choices": [{"index": 0, "text": piece, "finish_reason": reason, "logprobs": None}]})
    yield sse("[DONE]")


def reply(answer: Generation | ChatAnswer, body: Sampling, whole, stream) -> JSONResponse | StreamingResponse:
    if body.stream:
        return StreamingResponse(stream(answer, body.model), media_type="text/event-stream")
    return JSONResponse(whole(answer, body.model))


def add_routes(app: FastAPI, server: Server) -> None:
    @app.get("/v1/models")
    async def models(request: Request):
        card = {"id": server.name, "object": "model", "created": 0, "owned_by": "protege"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await server.read(request, ChatRequest)
        plan = tool_plan(body)
        messages = [message.chat_message() for message in body.messages]
        result = await server.generate(server.chat_prompt(messages, plan.tools), body, plan.forced)
        return reply(chat_answer(result, messages, plan.tools), body, chat_response, chat_stream)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await server.read(request, CompletionRequest)
        prompt = server.tokenizer.encode(body.prompt)
        return reply(await server.generate(prompt, body), body, completion_response, completion_stream)


def add_error_handlers(app: FastAPI) -> None:
    """Routes read their bodies themselves (parse_body), so APIError is the one error they raise; a path
    or method no route serves (404, 405) is answered in OpenAI's shape too."""
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                       "_".join(str(exc.detail).lower().split()), kind))


def add_guard(app: FastAPI, server: Server) -> None:
    """Every path is behind the key, /docs and /openapi.json included. An error that nothing else
    answered is logged with its traceback and answered as a JSON 500: Starlette's own handler would send
    plain text and re-raise, and uvicorn then drops the connection."""
    @app.middleware("http")
    async def guard(request: Request, call_next):
        try:
            server.check_key(request)
            return await call_next(request)
        except APIError as exc:
            return error_response(exc)
        except Exception:  # noqa: BLE001 - any failure is this request's 500, not the server's end
            logger.exception("%s %s failed", request.method, request.url.path)
            return error_response(APIError(500, "the server failed while answering this request; its log has "
                                           "the traceback", "internal_error", "server_error"))


def close_on_exit(batcher: Batcher):
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()
    return lifespan


def build_app(model_dir: Path | None = None, api_key: str | None = None, max_tokens_limit: int = 2048,
              max_request_bytes: int = 1_000_000, model_name: str | None = None, device: str = "cpu",
              base: Path | None = None, max_batch: int = 8, batch_wait_ms: float = 10.0,
              proxy: ProxySpec | None = None) -> FastAPI:
    """An app serving `model_dir` (with `base`, model_dir is a LoRA adapter or fine-tuned directory
    loaded on top of it), or with `proxy` (and no model_dir), a large model proxy-tuned by a small pair.
    `app.state.server.batcher.batch_sizes` records the batches run."""
    from ..models import load_model

    if proxy is not None:
        (model, tokenizer), default_name = proxy.load(device), proxy.name
    else:
        model_dir = Path(model_dir)
        model, tokenizer = (load_model(Path(base), device, adapter=model_dir) if base
                            else load_model(model_dir, device))
        default_name = model_dir.name
    batcher = Batcher(model, tokenizer, max_batch=max_batch, wait_ms=batch_wait_ms)
    server = Server(model, tokenizer, model_name or default_name, api_key, max_tokens_limit,
                    max_request_bytes, batcher)
    app = FastAPI(title="protege", lifespan=close_on_exit(batcher))
    app.state.server = server
    add_routes(app, server)
    add_error_handlers(app)
    add_guard(app, server)
    return app


def serve(model_dir: Path | None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          **options) -> None:
    """Blocks until interrupted. `options` go to build_app (limits, model_name, device, base, ...)."""
    import uvicorn

    uvicorn.run(build_app(model_dir, api_key=api_key, **options), host=host, port=port)
