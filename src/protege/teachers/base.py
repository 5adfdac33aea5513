"""The one interface every teacher speaks: a list of requests in, a list of replies out."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Callable, Literal, Protocol

from ..config import ConfigError


class TeacherError(RuntimeError):
    """The teacher cannot be used at all (unreachable, refused every request, misconfigured)."""


class TeacherTaskError(TeacherError, ConfigError):
    """The task's own teacher is wrong: its spec, or its code (a module that does not import, a function
    that raises, hangs or returns no text). The user's to fix, so it is reported as their input (exit 2)."""


Purpose = Literal["answer", "write_input", "critique", "judge-pointwise", "judge-pairwise", "evolve", "reflect",
                  "act"]
WRITES_INPUT = ("write_input", "evolve")  # the purposes whose reply is a new input to the task
# the reply a teacher writing an input may be held to (structured outputs); synth/written.py takes the
# input out of it
NEW_INPUT_SCHEMA = {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"],
                    "additionalProperties": False}

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

# Evol-Instruct (Xu et al. 2023, WizardLM): the paper's depth and breadth prompts, told what the task is
# so that a rewrite stays an input to it.
EVOLVE_DEPTH = (
    "I want you to act as a Prompt Rewriter. Your objective is to rewrite a given prompt into a more complex "
    "version to make famous AI systems (e.g., ChatGPT and GPT-4) a bit harder to handle. But the rewritten prompt "
    "must be reasonable and must be understood and responded to by humans. The prompt is an input to this task: "
    "{instruction}\nThe rewritten prompt must still be an input to that task. Do not omit the non-text parts "
    "such as tables and code in #Given Prompt#, nor the input in #Given Prompt#.\n"
    "You SHOULD complicate the given prompt using the following method:\n{method}\n"
    "#Rewritten Prompt# can only add 10 to 20 words to #Given Prompt#. '#Given Prompt#', '#Rewritten Prompt#', "
    "'given prompt' and 'rewritten prompt' are not allowed to appear in #Rewritten Prompt#. "
    "Reply with the rewritten prompt only.\n\n#Given Prompt#:\n{input}\n\n#Rewritten Prompt#:"
)
EVOLVE_BREADTH = (
    "I want you to act as a Prompt Creator. Your goal is to draw inspiration from the #Given Prompt# to create a "
    "brand new prompt. This new prompt should belong to the same domain as the #Given Prompt# but be even more "
    "rare. The prompt is an input to this task: {instruction}\nThe created prompt must still be an input to "
    "that task. The length and complexity of the #Created Prompt# should be similar to that of the #Given "
    "Prompt#. The #Created Prompt# must be reasonable and must be understood and responded to by humans. "
    "'#Given Prompt#', '#Created Prompt#', 'given prompt' and 'created prompt' are not allowed to appear in "
    "#Created Prompt#. Reply with the created prompt only.\n\n#Given Prompt#:\n{input}\n\n#Created Prompt#:"
)
EVOLUTIONS = {
    "constraints": "Please add one more constraint or requirement into #Given Prompt#.",
    "deepen": "If #Given Prompt# contains inquiries about certain issues, the depth and breadth of the inquiry "
              "can be increased.",
    "concretize": "Please replace general concepts with more specific concepts.",
    "reasoning": "If #Given Prompt# can be solved with just a few simple thinking processes, you can rewrite it "
                 "to explicitly request multiple-step reasoning.",
    "breadth": "",  # the breadth prompt is a prompt of its own
}

# Mistake and reflection (LEMMA): the teacher writes what the solver should think on finding its mistake.
REFLECT_SYSTEM = (
    "You help a student learn from mistakes on this task: {instruction}\n\n"
    "You are shown a problem, the student's wrong solution and a correct solution. Write the reflection the "
    "student should have on rereading the wrong solution: which step is wrong, why, and what to do instead, in a "
    "few sentences, in the first person. Do not write out the corrected solution. Begin with \"Wait,\"."
)
REFLECT_USER = "Problem:\n{input}\n\nWrong solution:\n{candidate}\n\nCorrect solution:\n{reference}"


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
    evolution: str = ""  # the rewrite asked for (purpose=evolve): a key of EVOLUTIONS
    # purpose=act: the next assistant message of an agent's episode. The episode so far (OpenAI chat
    # messages, tool calls and results among them) and the tools' schemas, as JSON text so that the
    # request stays hashable; the reply is the assistant message as JSON (see act_reply).
    episode: str = ""
    tools: str = ""
    # purpose=answer on a conversation: the turns before the input, as JSON text (hashable)
    context: str = ""

    def messages(self) -> list[dict]:
        """purpose=act: the episode so far, without the system message (chat() adds the instruction)."""
        return json.loads(self.episode) if self.episode else []

    def tool_schemas(self) -> list[dict]:
        """purpose=act: the OpenAI tool schemas the agent may call."""
        return json.loads(self.tools) if self.tools else []

    def chat(self) -> list[dict]:
        if self.purpose == "act":
            return [{"role": "system", "content": self.instruction}, *self.messages()]
        if self.purpose == "answer":
            return [{"role": "system", "content": self.instruction}, *json.loads(self.context or "[]"),
                    {"role": "user", "content": self.input}]
        if self.purpose == "critique":
            return self._graded(CRITIQUE_SYSTEM, CRITIQUE_USER)
        if self.purpose == "judge-pointwise":
            return self._graded(JUDGE_POINTWISE_SYSTEM, JUDGE_POINTWISE_USER)
        if self.purpose == "judge-pairwise":
            return self._graded(JUDGE_PAIRWISE_SYSTEM, JUDGE_PAIRWISE_USER)
        if self.purpose == "evolve":
            template = EVOLVE_BREADTH if self.evolution == "breadth" else EVOLVE_DEPTH
            return [{"role": "user", "content": template.format(
                instruction=self.instruction, method=EVOLUTIONS[self.evolution], input=self.input)}]
        if self.purpose == "reflect":
            return [{"role": "system", "content": REFLECT_SYSTEM.format(instruction=self.instruction)},
                    {"role": "user", "content": REFLECT_USER.format(input=self.input, candidate=self.candidate,
                                                                    reference=self.reference)}]
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

    def cache_payload(self, response_format: dict | None = None) -> dict:
        """What the cache keys the request by; response_format: the reply's shape the teacher asks for
        (structured outputs), part of the key where there is one."""
        payload = {"messages": self.chat(), "temperature": self.temperature, "sample": self.sample}
        payload |= {"tools": self.tool_schemas()} if self.tools else {}
        return payload | ({"response_format": response_format} if response_format else {})


@dataclass(frozen=True)
class JsonAnswers:
    """The task's answers are JSON (its metric is json): a teacher that can ask for a reply's shape asks
    for this one when it answers. schema: the JSON schema they follow; None: any JSON object."""

    schema: dict | None = None


def act_request(instruction: str, messages: list[dict], tools: list[dict], sample: int = 0,
                temperature: float = 0.0) -> TeacherRequest:
    """Ask for the next assistant message of an agent's episode."""
    return TeacherRequest("act", instruction, episode=json.dumps(messages, ensure_ascii=False),
                          tools=json.dumps(tools, ensure_ascii=False), sample=sample, temperature=temperature)


def act_reply(message: dict | str | None) -> str | None:
    """An agent's assistant message as the JSON text a teacher replies and the cache keeps: a final
    answer (a string) becomes {role, content}; content and tool_calls are all that is kept."""
    if isinstance(message, str):
        message = {"role": "assistant", "content": message}
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    content = (content.strip() if isinstance(content, str) else content) or None  # blank text is no answer
    if not (content or message.get("tool_calls")):
        return None
    kept = {"role": "assistant", "content": content}
    if message.get("tool_calls"):
        kept["tool_calls"] = [{"id": c.get("id") or f"call_{i}", "type": "function",
                               "function": {"name": c["function"]["name"],
                                            "arguments": arguments_text(c["function"].get("arguments"))}}
                              for i, c in enumerate(message["tool_calls"])]
    return json.dumps(kept, ensure_ascii=False)


def arguments_text(arguments) -> str:
    """A tool call's arguments as the JSON string OpenAI's format carries (a dict is serialized)."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments or {}, ensure_ascii=False)


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
    dropped: int = 0  # given up because every reply was unusable (empty, malformed, the wrong type, too late)
    over_budget: int = 0  # not sent: the token budget was spent
    tokens_in: int = 0  # prompt tokens of every reply, cached or not: what the token budget counts
    tokens_out: int = 0  # completion tokens, likewise
    dropped_why: Counter = field(default_factory=Counter)  # reason -> replies dropped for it
    retried_why: Counter = field(default_factory=Counter)  # reason -> retries made for it
    notes: Counter = field(default_factory=Counter)  # what a backend did otherwise than asked -> requests

    def add(self, other: "TeacherStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def add_outcomes(self, other: "TeacherStats") -> None:
        """What only a backend sees, for a cache in front of it: retries and drops, with their reasons,
        and its notes."""
        self.retried += other.retried
        self.dropped += other.dropped
        self.retried_why += other.retried_why
        self.dropped_why += other.dropped_why
        self.notes += other.notes

    def copy(self) -> "TeacherStats":
        return TeacherStats(**{f.name: _copied(getattr(self, f.name)) for f in fields(self)})

    def as_dict(self) -> dict:
        return {f.name: _copied(getattr(self, f.name)) for f in fields(self)}

    def minus(self, other: "TeacherStats") -> "TeacherStats":
        return TeacherStats(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def charge(self, usage: Usage) -> None:
        self.tokens_in += usage.tokens_in
        self.tokens_out += usage.tokens_out

    def drop(self, reason: str) -> None:
        """A request given up with no usable reply, and why."""
        self.failed += 1
        self.dropped += 1
        self.dropped_why[reason] += 1

    def retry(self, reason: str) -> None:
        self.retried += 1
        self.retried_why[reason] += 1

    def note(self, what: str) -> None:
        """A request the backend sent otherwise than it was asked (no structured output, say), and how."""
        self.notes[what] += 1

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out


def _copied(value):
    """A count as it is, a Counter of reasons as a new one (most common first), so copies share nothing."""
    return Counter(dict(value.most_common())) if isinstance(value, Counter) else value


OnReply = Callable[[int, "str | None", Usage], None]


class Teacher(Protocol):
    """`complete` returns one reply per request, None where the teacher gave nothing usable. A backend
    may also have `stats` (a TeacherStats: the retries and drops only it sees), a `label` for error
    lines, `reply_rule` (what a usable reply is, said when most were not), `user_code` (True: the
    task's own code, whose faults are the task's: TeacherTaskError), `answers` (a JsonAnswers or None,
    set by build_teacher where the task's answers are JSON) and `response_format(request)` (the reply's
    shape it asks the endpoint for, None for free text: part of the cache key)."""

    name: str

    def identity(self) -> str:
        """Endpoint and model: the part of the cache key that says who answered."""

    def complete(self, requests: list[TeacherRequest], on_reply: OnReply | None = None) -> list[str | None]:
        """Answer every request; call on_reply(index, reply, usage) as each one arrives (backends
        that know no token counts may call on_reply(index, reply))."""


def cache_key(identity: str, request: TeacherRequest, options: dict, response_format: dict | None = None) -> str:
    import hashlib
    blob = json.dumps({"who": identity, "req": request.cache_payload(response_format), "opt": options},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
