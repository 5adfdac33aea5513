"""The one interface every teacher speaks: a list of requests in, a list of replies out."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable, Literal, Protocol

Purpose = Literal["answer", "write_input", "critique", "judge-pointwise", "judge-pairwise"]

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

JUDGE_RUBRIC = "What matters: {rubric}\n\n"
JUDGE_POINTWISE_SYSTEM = (
    "You grade answers to this task: {instruction}\n\n{rubric}"
    "Say briefly what is right and what is wrong in the answer. End your reply with a last line that is "
    "exactly \"Score: N\", where N is a whole number from 1 (useless) to 10 (perfect), nothing after it."
)
JUDGE_POINTWISE_USER = "Problem:\n{input}\n\n{reference}Answer to grade:\n{candidate}"
JUDGE_PAIRWISE_SYSTEM = (
    "You compare two answers to this task: {instruction}\n\n{rubric}"
    "The order in which the answers are shown says nothing about which is better. Say briefly how they "
    "differ. End your reply with a last line that is exactly \"Winner: A\", \"Winner: B\" or "
    "\"Winner: tie\", nothing after it."
)
JUDGE_PAIRWISE_USER = "Problem:\n{input}\n\n{reference}Answer A:\n{candidate}\n\nAnswer B:\n{answer_b}"


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
    candidate: str = ""  # the solution to check (critique), to grade (judge-pointwise), answer A (pairwise)
    reference: str = ""  # the known answer, shown when non-empty (purposes critique and judge-*)
    answer_b: str = ""  # the second answer compared (judge-pairwise, where candidate is answer A)
    rubric: str = ""  # what the judge weighs (judge-*); empty: no rubric shown

    def chat(self) -> list[dict]:
        if self.purpose == "answer":
            return [{"role": "system", "content": self.instruction},
                    {"role": "user", "content": self.input}]
        if self.purpose == "critique":
            return self._graded(CRITIQUE_SYSTEM, CRITIQUE_USER)
        if self.purpose == "judge-pointwise":
            return self._graded(JUDGE_POINTWISE_SYSTEM, JUDGE_POINTWISE_USER)
        if self.purpose == "judge-pairwise":
            return self._graded(JUDGE_PAIRWISE_SYSTEM, JUDGE_PAIRWISE_USER)
        listing = "\n".join(f"- {e}" for e in self.examples)
        prompt = WRITE_INPUT_PROMPT.format(instruction=self.instruction, examples=listing)
        return [{"role": "user", "content": prompt}]

    def _graded(self, system: str, user: str) -> list[dict]:
        """A critic's or judge's chat: the reference and the rubric appear only when given."""
        reference = CRITIQUE_REFERENCE.format(reference=self.reference) if self.reference else ""
        rubric = JUDGE_RUBRIC.format(rubric=self.rubric) if self.rubric else ""
        return [{"role": "system", "content": system.format(instruction=self.instruction, rubric=rubric)},
                {"role": "user", "content": user.format(input=self.input, reference=reference,
                                                        candidate=self.candidate, answer_b=self.answer_b)}]

    def cache_payload(self) -> dict:
        return {"messages": self.chat(), "temperature": self.temperature, "sample": self.sample}


@dataclass(frozen=True)
class Usage:
    """What one reply cost, in the backend's own tokens."""

    tokens_in: int = 0  # prompt tokens
    tokens_out: int = 0  # completion tokens


@dataclass
class TeacherStats:
    requests: int = 0  # asked by the run, cached or not: what the request budget counts
    paid: int = 0  # sent to the backend
    failed: int = 0  # the backend gave nothing usable (dropped ones included)
    retried: int = 0  # attempts repeated after a timeout, 429, 5xx, lost connection or unusable reply
    dropped: int = 0  # given up because every reply was malformed or empty; never written as data
    over_budget: int = 0  # not sent: the token budget was spent
    tokens_in: int = 0  # prompt tokens of every reply, cached or not: what the token budget counts
    tokens_out: int = 0  # completion tokens, likewise

    def add(self, other: "TeacherStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def copy(self) -> "TeacherStats":
        return replace(self)

    def as_dict(self) -> dict:
        return asdict(self)

    def minus(self, other: "TeacherStats") -> "TeacherStats":
        return TeacherStats(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def charge(self, usage: Usage) -> None:
        self.tokens_in += usage.tokens_in
        self.tokens_out += usage.tokens_out

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out


OnReply = Callable[[int, "str | None", Usage], None]


class Teacher(Protocol):
    """`complete` returns one reply per request, None where the teacher gave nothing usable."""

    name: str

    def identity(self) -> str:
        """Endpoint and model: the part of the cache key that says who answered."""

    def complete(self, requests: list[TeacherRequest], on_reply: OnReply | None = None) -> list[str | None]:
        """Answer every request; call on_reply(index, reply, usage) as each one arrives (backends
        that know no token counts may call on_reply(index, reply))."""


def cache_key(identity: str, request: TeacherRequest, options: dict) -> str:
    import hashlib
    blob = json.dumps({"who": identity, "req": request.cache_payload(), "opt": options}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
