"""Inputs a teacher writes (seed expansion, the failure loop, Self-Instruct, LLM2LLM, Evol-Instruct's
rewrites), cleaned and checked before anything answers them. A weak teacher wraps its input ("Here is
a new input:\n- May the 27th, 2085"), lists several, or gives back what it was shown; every one of
those would be labeled and trained on as it is.

Cleaning takes off what is no part of the input: a code fence, a JSON object's "input" (the reply of
a structured-output request), a preamble ("Sure!", "Here is a new input:", "#Rewritten Prompt#:"), a
closing remark ("Let me know if..."), the bullet or "1." of a list of one, surrounding quotes. It does
not split: a reply that lists several inputs is dropped, since which one the teacher meant is unknown.
A list, a bullet or a number is left alone where the examples shown have them too.

A cleaned input is dropped, and counted by reason, when it is empty, lists several inputs, copies what
the teacher was shown (its example, or the prompt an evolution rewrites), is a test input, repeats an
input of the data or an earlier one, holds the evolving prompt's own words, or the task's
synth.input_validator (module:attr, text -> bool) says no."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..config import ConfigError
from ..records import normalize

# "Sure, I can do that:" as a line of its own, or "Sure! " before the rest
ASSENT = re.compile(r"^(?:sure|certainly|of course|okay|ok|absolutely|alright|great)\b(?:[^\n]*:[ \t]*\n|[!.,]+\s*)",
                    re.I)
HERE = re.compile(r"^here(?:'s|’s| is| are)\b[^\n:]*:\s*", re.I)
LABEL = re.compile(r"^#*\s*(?:(?:a|an|the|one|my)\s+)?(?:(?:new|another|rewritten|created|evolved|generated)\s+"
                   r"(?:input|prompt|question|example|instruction)|input)\s*#*(?:\s+is)?\s*:\s*", re.I)
CLOSING = re.compile(r"^(?:let me know|i hope|hope this|feel free|this (?:new )?(?:input|prompt|question)\b)", re.I)
FENCE = re.compile(r"^```[\w+-]*\n(.*?)\n?```$", re.S)
ITEM = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)]|\(\d{1,2}\))\s+(?=\S)")
NUMBERED = re.compile(r"^\s*(?:new\s+)?(?:input|prompt|question|example)\s*#?\d+\s*[:.)]", re.I)
ONE_ITEM = re.compile(r"^(?:[-*•]|1[.)]|\(1\))\s+(?=\S)")  # a list of one starts at 1
QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`"}
VALIDATOR = "synth.input_validator"


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def is_list(text: str) -> bool:
    """Two or more list items (bullets, numbers, "Input 2:") and nothing else."""
    rows = lines(text)
    return len(rows) >= 2 and all(ITEM.match(row) or NUMBERED.match(row) for row in rows)


def from_json(text: str) -> str:
    """The "input" of a JSON object reply (a structured-output request asks for one); else the text."""
    if not text.startswith("{"):
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    found = value.get("input") if isinstance(value, dict) and len(value) == 1 else None
    return found if isinstance(found, str) else text


def unquoted(text: str) -> str:
    close = QUOTES.get(text[:1])
    inner = text[1:-1]
    if close and len(text) >= 2 and text.endswith(close) and text[0] not in inner and close not in inner:
        return inner.strip()
    return text


def without_closing(text: str) -> str:
    """The text without a last line like "Let me know if you need more!"."""
    rows = lines(text)
    while len(rows) > 1 and CLOSING.match(rows[-1].strip()):
        rows.pop()
    return text if len(rows) == len(lines(text)) else "\n".join(rows)


def without_marker(text: str, lists_are_inputs: bool) -> str:
    """A single bullet or "1." taken off, unless the task's inputs begin that way."""
    if lists_are_inputs or len(lines(text)) != 1:
        return text
    return ONE_ITEM.sub("", text.strip(), count=1)


def clean_once(text: str, lists_are_inputs: bool) -> str:
    fenced = FENCE.match(text)
    text = fenced.group(1).strip() if fenced else text
    text = from_json(text).strip()
    for wrapper in (ASSENT, HERE, LABEL):
        text = wrapper.sub("", text, count=1).strip()
    text = without_marker(without_closing(text), lists_are_inputs)
    return unquoted(text.strip())


def clean_input(reply: object, shown: Sequence[str] = ()) -> str:
    """The input in a teacher's reply, without the wrappers a chat model puts around it ("" if none).
    shown: the examples the teacher saw; where they begin with a bullet or are lists, so may the input."""
    if not isinstance(reply, str):
        return ""
    lists_are_inputs = any(is_list(s) or ITEM.match(s) for s in shown)
    text, before = reply.strip(), None
    while text != before:  # "Sure! Here is one:\n- "x"" takes several passes
        before, text = text, clean_once(text, lists_are_inputs)
    return text


def shown_to(request) -> tuple[str, ...]:
    """What the teacher was shown to imitate (write_input) or to rewrite (evolve)."""
    return tuple(request.examples) if request.purpose == "write_input" else (request.input,)


def prompt_lines(request) -> list[str]:
    """The request's own sentences (4 words or more, none holding what it shows), normalized: a reply
    holding one repeats the prompt instead of writing an input."""
    shown = [key for key in map(normalize, shown_to(request)) if key]
    text = "\n".join(str(m.get("content") or "") for m in request.chat())
    return [key for key in map(normalize, lines(text)) if len(key.split()) >= 4 and not any(s in key for s in shown)]


@dataclass
class WrittenInputs:
    """Checks the inputs a teacher writes, one reply at a time; counts and keeps what it drops by reason."""

    never: Iterable[str] = ()  # the test inputs
    known: Iterable[str] = ()  # the inputs of the data so far: a copy is a repeat
    validator: Callable[[str], bool] | None = None  # the task's synth.input_validator
    prompt_words: tuple[str, ...] = ()  # words no input may hold (Evol-Instruct's "given prompt")
    dropped: Counter = field(default_factory=Counter)
    removed: list[dict] = field(default_factory=list)  # {reply, reason} of each reply dropped
    kept: int = 0

    def __post_init__(self) -> None:
        self._never = {normalize(t) for t in self.never}
        self._seen = {normalize(t) for t in self.known}

    def keep(self, reply: object, request) -> str | None:
        """The input in the reply to a write_input or evolve request, cleaned; None when it is dropped."""
        text = clean_input(reply, shown_to(request))
        reason = self.fault(text, request) if isinstance(reply, str) else "unanswered"
        if reason:
            self.dropped[reason] += 1
            self.removed.append({"reply": reply if isinstance(reply, str) else None, "reason": reason})
            return None
        self._seen.add(normalize(text))
        self.kept += 1
        return text

    def fault(self, text: str, request) -> str | None:
        """Why a cleaned input is no new input, or None; the validator last, as it is the task's code."""
        key, shown = normalize(text), shown_to(request)
        if not key:
            return "empty"
        if is_list(text) and not any(is_list(s) for s in shown):
            return "several inputs"
        if key in {normalize(s) for s in shown}:
            return "copies what it was shown"
        if any(words in key for words in self.prompt_words) or any(line in key for line in prompt_lines(request)):
            return "copies the prompt"
        if key in self._never:
            return "test input"
        if key in self._seen:
            return "repeat"
        return f"rejected by {VALIDATOR}" if self.validator and not self.validator(text) else None

    def summary(self) -> dict:
        """What the stage writes to written.json."""
        return {"kept": self.kept, "dropped": dict(self.dropped), "removed": self.removed}

    def line(self, what: str) -> str:
        asked = self.kept + sum(self.dropped.values())
        return f"{what}: kept {self.kept} of {asked} teacher-written inputs, dropped {dict(self.dropped) or 'none'}"


def context_check(ctx, known: Iterable[str], prompt_words: tuple[str, ...] = ()) -> WrittenInputs:
    """The check of a synthesis method's written inputs: none a test input or one of `known`."""
    return WrittenInputs(never=ctx.exclude, known=known, validator=ctx.input_validator, prompt_words=prompt_words)


def count_drops(ctx, check: WrittenInputs) -> None:
    """The check's drops into the step's notes (methods.json), counted by reason."""
    for reason, count in check.dropped.items():
        ctx.drop(reason, count)


def load_validator(spec: str, task_dir: Path | None) -> Callable[[str], bool] | None:
    """The task's synth.input_validator as a callable whose failure is the task's error (exit 2), with
    the file and line of the task's code it came from; None when the task gives none."""
    from ..teachers import load_task_function
    from ..teachers.function import raised, user_frame
    if not spec:
        return None
    check = load_task_function(spec, task_dir, VALIDATOR)

    def valid(text: str) -> bool:
        try:
            return bool(check(text))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - sys.exit() in the task's code is its error too
            raise ConfigError(f"{VALIDATOR} {spec} raised {raised(exc)} at {user_frame(exc, task_dir)} "
                              f"on the input {text[:60]!r}") from None
    return valid
