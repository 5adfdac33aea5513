"""Any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, Ollama, protege serve)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed

import openai

from ..config import TeacherConfig
from .base import TeacherRequest


class TeacherError(RuntimeError):
    """The teacher cannot be used at all (unreachable, refused every request)."""


class OpenAITeacher:
    """Requests go out `concurrency` at a time; the openai client retries timeouts, 429 (honouring
    Retry-After) and 5xx with exponential backoff. A request that still fails gives None."""

    name = "openai"

    def __init__(self, cfg: TeacherConfig):
        if not cfg.base_url:
            raise TeacherError("teacher.base_url is required for kind=openai")
        self.cfg = cfg
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env, "none"),
                                    max_retries=cfg.max_retries, timeout=cfg.timeout)
        self._lock = threading.Lock()

    def identity(self) -> str:
        return f"openai:{self.cfg.base_url.rstrip('/')}:{self.cfg.model}"

    def _ask(self, request: TeacherRequest) -> str | None:
        reply = self.client.chat.completions.create(
            model=self.cfg.model, messages=request.chat(), temperature=request.temperature,
            max_tokens=self.cfg.max_tokens, seed=request.sample)
        choices = getattr(reply, "choices", None) or []
        text = choices[0].message.content if choices and choices[0].message else None
        return text.strip() if isinstance(text, str) and text.strip() else None

    def complete(self, requests: list[TeacherRequest], on_reply=None) -> list[str | None]:
        replies: list[str | None] = [None] * len(requests)
        errors: list[Exception] = []
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            futures = {pool.submit(self._ask, r): i for i, r in enumerate(requests)}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    replies[i] = future.result()
                except (openai.OpenAIError, ValueError) as exc:
                    errors.append(exc)
                if on_reply:
                    with self._lock:
                        on_reply(i, replies[i])
        if requests and len(errors) == len(requests):
            raise TeacherError(f"teacher {self.cfg.base_url} failed every request: {errors[0]}")
        return replies
