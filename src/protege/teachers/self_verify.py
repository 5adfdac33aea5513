"""The student as its own teacher: sample k answers, keep the first one a verifier accepts
(STaR / rejection sampling).

An agent's step (purpose "act") is sampled as the student acts in evaluation (models.acting): k turns
per step, the first whose tool calls all parse and match their schemas kept (the verifier judges
answers, not steps; a whole episode is judged by the task's tools.verifier when curated)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

from pydantic import Field

from ..config import TeacherConfig
from ..models.acting import act, agent_chat
from ..registry import TEACHER
from .base import TeacherError, TeacherRequest, act_reply
from .function import load_task_function


class SelfTeacherConfig(TeacherConfig):
    kind: Literal["self"] = Field("self", description="The student samples answers and a verifier keeps the "
                                  "first that passes (STaR, rejection sampling); in agent tasks it samples turns "
                                  "and keeps the first whose tool calls are valid.")
    samples: int = Field(4, gt=0, description="Answers (in agent tasks: turns) sampled per input.")
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

    def _model(self) -> tuple:
        if self._loaded is None:
            self._loaded = self._load()  # the student loads only when a request misses the cache
        return self._loaded

    def _sample(self, requests: list[TeacherRequest]) -> list[list[str]]:
        model, tokenizer = self._model()
        from ..models.generate import generate  # torch: not when protege loads this file
        chats = [r.chat() for r in requests for _ in range(self.samples)]
        outs = generate(model, tokenizer, chats, self.max_new_tokens, batch_size=32,
                        temperature=self.temperature, seed=requests[0].sample if requests else 0,
                        desc="self-sample")
        return [outs[i * self.samples:(i + 1) * self.samples] for i in range(len(requests))]

    def _kept(self, request: TeacherRequest, candidates: list[str]) -> str | None:
        if request.purpose == "answer":
            kept = [c for c in candidates if c and self.verifier(request.input, c)]
        else:
            kept = [c for c in candidates if c]
        return kept[0] if kept else None

    def _act(self, requests: list[TeacherRequest]) -> list[str | None]:
        """Agent steps offered the same tools: k turns each, the first valid one kept."""
        episodes = [agent_chat(r.instruction, r.messages()) for r in requests for _ in range(self.samples)]
        turns = act(*self._model(), episodes, requests[0].tool_schemas(), self.max_new_tokens,
                    temperature=self.temperature, seed=requests[0].sample, desc="self-act")
        return [first_valid(turns[i * self.samples:(i + 1) * self.samples]) for i in range(len(requests))]

    def _replies(self, requests: list[TeacherRequest]) -> list[str | None]:
        """Every request's reply: agent steps grouped by the tools offered, the rest sampled together."""
        replies: list[str | None] = [None] * len(requests)
        for indices in purpose_groups(requests):
            group = [requests[i] for i in indices]
            if group[0].purpose == "act":
                kept = self._act(group)
            else:
                kept = [self._kept(r, c) for r, c in zip(group, self._sample(group))]
            for i, reply in zip(indices, kept):
                replies[i] = reply
        return replies

    def complete(self, requests: list[TeacherRequest], on_reply=None) -> list[str | None]:
        replies = self._replies(requests)
        if on_reply:
            for i, reply in enumerate(replies):
                on_reply(i, reply)
        return replies


def purpose_groups(requests: list[TeacherRequest]) -> list[list[int]]:
    """Indices of requests sampled together: agent steps by the tools they offer, all others in one."""
    groups: dict[str | None, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(request.tools if request.purpose == "act" else None, []).append(i)
    return list(groups.values())


def first_valid(turns) -> str | None:
    """The first turn whose tool calls all parse and match their schemas, as act_reply's JSON."""
    return next((reply for turn in turns if turn.valid and (reply := act_reply(turn.message))), None)


@TEACHER.register(SelfTeacherConfig)
def build(cfg: SelfTeacherConfig, task_dir: Path, student=None) -> SelfTeacher:
    """student: (load() -> (model, tokenizer), identity) of the student that samples."""
    if not cfg.verifier:
        raise TeacherError("teacher.verifier (module:attr(input, answer) -> bool) is required for kind=self")
    load, identity = student
    verifier = load_task_function(cfg.verifier, task_dir, "teacher.verifier")
    return SelfTeacher(load, verifier, cfg.samples, max_new_tokens=cfg.max_tokens, identity=identity)
