"""The one interface every teacher speaks: a list of requests in, a list of replies out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Literal, Protocol

Purpose = Literal["answer", "write_input"]

WRITE_INPUT_PROMPT = (
    "You write new inputs for this task: {instruction}\n\n"
    "Here are examples of inputs:\n{examples}\n\n"
    "Write one new input of the same kind, different from all of them. "
    "Reply with the input only, nothing else."
)


@dataclass(frozen=True)
class TeacherRequest:
    """What protege asks a teacher. `chat()` is what an LLM sees; function teachers read the
    structured fields instead."""

    purpose: Purpose
    instruction: str
    input: str = ""  # the input to answer (purpose=answer)
    examples: tuple[str, ...] = ()  # inputs to imitate (purpose=write_input)
    sample: int = 0  # distinguishes repeated requests for different outputs
    temperature: float = 0.0

    def chat(self) -> list[dict]:
        if self.purpose == "answer":
            return [{"role": "system", "content": self.instruction},
                    {"role": "user", "content": self.input}]
        listing = "\n".join(f"- {e}" for e in self.examples)
        prompt = WRITE_INPUT_PROMPT.format(instruction=self.instruction, examples=listing)
        return [{"role": "user", "content": prompt}]

    def cache_payload(self) -> dict:
        return {"messages": self.chat(), "temperature": self.temperature, "sample": self.sample}


class Teacher(Protocol):
    """`complete` returns one reply per request, None where the teacher gave nothing usable."""

    name: str

    def identity(self) -> str:
        """Endpoint and model: the part of the cache key that says who answered."""

    def complete(self, requests: list[TeacherRequest],
                 on_reply: Callable[[int, str | None], None] | None = None) -> list[str | None]:
        """Answer every request; call on_reply(index, reply) as each one arrives."""


def cache_key(identity: str, request: TeacherRequest, options: dict) -> str:
    import hashlib
    blob = json.dumps({"who": identity, "req": request.cache_payload(), "opt": options}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
