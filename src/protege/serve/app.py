"""`protege serve MODEL`: an OpenAI-compatible server (/v1/models, /v1/chat/completions,
/v1/completions). Requests that arrive together are generated as one batch (batching.py).

Streaming generates the whole reply first (so it can share a batch), then sends it as server-sent
events in pieces, ending with `data: [DONE]` as OpenAI does: clients that stream work, but the first
piece arrives when the whole reply is ready."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..models.generate import chat_prompts
from .batching import Batcher, Generation
from .proxy import ProxySpec

STREAM_PIECE_CHARS = 16


class APIError(Exception):
    """Answered as OpenAI does: {"error": {"message", "type", "code"}} with the HTTP status."""

    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind


def error_response(exc: APIError) -> JSONResponse:
    body = {"error": {"message": exc.message, "type": exc.kind, "code": exc.code}}
    return JSONResponse(body, status_code=exc.status)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict] | None = ""

    def text(self) -> str:
        """Content given as OpenAI content parts keeps its text parts."""
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class Sampling(BaseModel):
    """What both endpoints share. Unknown OpenAI fields (seed, top_p, ...) are accepted and ignored."""
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float = Field(1.0, ge=0, le=2)
    stream: bool = False
    stop: str | list[str] | None = None
    n: Literal[1] = 1


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str


def validation_message(exc: ValidationError) -> str:
    """The first problem, naming the field: `messages: Field required`."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def parse_body(raw: bytes, schema: type[BaseModel]):
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", "invalid_json") from exc
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise APIError(400, validation_message(exc), "invalid_request") from exc


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
        self.check_key(request)
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

    def max_tokens(self, body: Sampling) -> int:
        wanted = body.max_completion_tokens or body.max_tokens or self.max_tokens_limit
        if wanted > self.max_tokens_limit:
            raise APIError(400, f"max_tokens is {wanted}; this server allows at most {self.max_tokens_limit}",
                           "max_tokens_too_large")
        return wanted

    def check_model(self, name: str) -> None:
        if name != self.name:
            raise APIError(404, f"model '{name}' does not exist; this server serves '{self.name}'",
                           "model_not_found")

    def check_length(self, prompt: list[int], max_tokens: int) -> None:
        if self.context and len(prompt) + max_tokens > self.context:
            raise APIError(400, f"prompt ({len(prompt)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                           f"model's context of {self.context} tokens", "context_length_exceeded")

    async def generate(self, prompt: list[int], body: Sampling) -> Generation:
        self.check_model(body.model)
        max_tokens = self.max_tokens(body)
        self.check_length(prompt, max_tokens)
        result = await asyncio.wrap_future(self.batcher.submit(prompt, max_tokens, body.temperature))
        text, stopped = apply_stop(result.text, body.stop)
        return Generation(text, result.prompt_tokens, result.completion_tokens,
                          "stop" if stopped else result.finish_reason)


def usage(result: Generation) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def envelope(kind: str, model: str) -> dict:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": model}


def chat_response(result: Generation, model: str) -> dict:
    choice = {"index": 0, "finish_reason": result.finish_reason, "logprobs": None,
              "message": {"role": "assistant", "content": result.text}}
    return {**envelope("chat.completion", model), "choices": [choice], "usage": usage(result)}


def completion_response(result: Generation, model: str) -> dict:
    choice = {"index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": None}
    return {**envelope("text_completion", model), "choices": [choice], "usage": usage(result)}


def chat_stream(result: Generation, model: str):
    head = envelope("chat.completion.chunk", model)
    for i, piece in enumerate(pieces(result.text)):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        yield sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    yield sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": result.finish_reason}],
               "usage": usage(result)})
    yield sse("[DONE]")


def completion_stream(result: Generation, model: str):
    head = envelope("text_completion", model)
    texts = pieces(result.text)
    for i, piece in enumerate(texts):
        reason = result.finish_reason if i == len(texts) - 1 else None
        yield sse({**head, "choices": [{"index": 0, "text": piece, "finish_reason": reason, "logprobs": None}]})
    yield sse("[DONE]")


def reply(result: Generation, body: Sampling, whole, stream) -> JSONResponse | StreamingResponse:
    if body.stream:
        return StreamingResponse(stream(result, body.model), media_type="text/event-stream")
    return JSONResponse(whole(result, body.model))


def add_routes(app: FastAPI, server: Server) -> None:
    @app.get("/v1/models")
    async def models(request: Request):
        server.check_key(request)
        card = {"id": server.name, "object": "model", "created": 0, "owned_by": "protege"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await server.read(request, ChatRequest)
        chat = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = chat_prompts(server.tokenizer, [chat])[0]
        return reply(await server.generate(prompt, body), body, chat_response, chat_stream)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await server.read(request, CompletionRequest)
        prompt = server.tokenizer.encode(body.prompt)
        return reply(await server.generate(prompt, body), body, completion_response, completion_stream)


def add_error_handlers(app: FastAPI) -> None:
    """Routes read their bodies themselves (parse_body), so APIError is the one error they raise."""
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return error_response(exc)


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
    return app


def serve(model_dir: Path | None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          **options) -> None:
    """Blocks until interrupted. `options` go to build_app (limits, model_name, device, base, ...)."""
    import uvicorn

    uvicorn.run(build_app(model_dir, api_key=api_key, **options), host=host, port=port)
