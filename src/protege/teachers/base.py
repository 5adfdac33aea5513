"""The one interface every teacher speaks: a list of requests in, a list of replies out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Literal, Protocol

Purpose = Literal["answer", "write_input", "critique"]

WRITE_INPUT_PROMPT = (
    "You write new inputs for this task: {instruction}\n\n"
    "Here are examples of inputs:\n{examples}\n\n"
    "Write one new input of the same kind, different from all of them. "
    "Reply with the input only, nothing else."
)

CRITIQUE_SYSTEM = (
    "You check solutions to this task: {instruction}\n\n"
    "Go through the candidate solution step by step and explain what is right and what is wrong, "
    "and why. End your reply with a last line that is exactly \"Verdict: correct\" or "
    "\"Verdict: incorrect\", nothing after it."
)
CRITIQUE_REFERENCE = "Reference answer (known to be correct):\n{reference}\n\n"
CRITIQUE_USER = "Problem:\n{input}\n\n{reference}Candidate solution:\n{candidate}"


@dataclass(frozen=True)
class TeacherRequest:
    """What protege asks a teacher. `chat()` is what an LLM sees; function teachers read the
    structured fields instead."""

    purpose: Purpose
    instruction: str
    input: str = ""  # the input to answer (purpose=answer) or whose solution to check (critique)
    examples: tuple[str, ...] = ()  # inputs to imitate (purpose=write_input)
    sample: int = 0  # distinguishes repeated requests for different outputs
    temperature: float = 0.0
    candidate: str = ""  # the solution to check (purpose=critique)
    reference: str = ""  # the known answer, shown to the critic when non-empty (purpose=critique)

    def chat(self) -> list[dict]:
        if self.purpose == "answer":
            return [{"role": "system", "content": self.instruction},
                    {"role": "user", "content": self.input}]
        if self.purpose == "critique":
            reference = CRITIQUE_REFERENCE.format(reference=self.reference) if self.reference else ""
            return [{"role": "system", "content": CRITIQUE_SYSTEM.format(instruction=self.instruction)},
                    {"role": "user", "content": CRITIQUE_USER.format(input=self.input, reference=reference,
                                                                     candidate=self.candidate)}]
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
