"""The student as its own teacher: sample k answers, keep the first one a verifier accepts
(STaR / rejection sampling)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

from pydantic import Field

from ..config import TeacherConfig
from ..registry import TEACHER
from .base import TeacherError, TeacherRequest
from .function import load_callable


class SelfTeacherConfig(TeacherConfig):
    kind: Literal["self"] = Field("self", description="The student samples answers and a verifier keeps the "
                                  "first that passes (STaR, rejection sampling).")
    samples: int = Field(4, gt=0, description="Answers sampled per input.")
    verifier: str = Field("", description="module:attr(input, answer) -> bool that says an answer is right "
                          "(required).")


class SelfTeacher:
    name = "self"

    def __init__(self, load: Callable[[], tuple], verifier: Callable[[str, str], bool], samples: int = 4,
                 temperature: float = 0.8, max_new_tokens: int = 128, identity: str = "self"):
        self._load, self._loaded, self.verifier = load, None, verifier
        self.samples, self.temperature, self.max_new_tokens = samples, temperature, max_new_tokens
        self._identity = identity

    def identity(self) -> str:
        return f"self:{self._identity}:k={self.samples}:t={self.temperature}"

    def _sample(self, requests: list[TeacherRequest]) -> list[list[str]]:
        if self._loaded is None:
            self._loaded = self._load()  # the student loads only when a request misses the cache
        model, tokenizer = self._loaded
        from ..models.generate import generate  # torch: not when protege loads this file
        chats = [r.chat() for r in requests for _ in range(self.samples)]
        outs = generate(model, tokenizer, chats, self.max_new_tokens, batch_size=32,
                        temperature=self.temperature, seed=requests[0].sample if requests else 0,
                        desc="self-sample")
        return [outs[i * self.samples:(i + 1) * self.samples] for i in range(len(requests))]

    def complete(self, requests: list[TeacherRequest], on_reply=None) -> list[str | None]:
        replies = []
        for i, (request, candidates) in enumerate(zip(requests, self._sample(requests))):
            if request.purpose == "answer":
                kept = [c for c in candidates if c and self.verifier(request.input, c)]
            else:
                kept = [c for c in candidates if c]
            replies.append(kept[0] if kept else None)
            if on_reply:
                on_reply(i, replies[-1])
        return replies


@TEACHER.register(SelfTeacherConfig)
def build(cfg: SelfTeacherConfig, task_dir: Path, student=None) -> SelfTeacher:
    """student: (load() -> (model, tokenizer), identity) of the student that samples."""
    if not cfg.verifier:
        raise TeacherError("teacher.verifier (module:attr(input, answer) -> bool) is required for kind=self")
    load, identity = student
    return SelfTeacher(load, load_callable(cfg.verifier, task_dir), cfg.samples, max_new_tokens=cfg.max_tokens,
                       identity=identity)
