"""Constrained decoding of a forced tool call. With `tool_choice` "required" or a named function, the
served model writes chat_format's block `<tool_call>{"name": NAME, "arguments": ARGS}</tool_call>` and
ends its turn, and ARGS always parses and matches the tool's parameters schema whatever the weights
(a random model's included), as vLLM's guided decoding promises.

How: a writer per row walks the schema and asks, token by token, either for fixed text (forced: every
other token is masked) or for a free choice among the tokens that keep the text valid, which the model
makes by its own scores: a string's characters or its end, a number's digits, one of an enum's values,
whether to write an optional property, whether to add an array item. Free parts are capped
(STRING_TOKENS, NUMBER_CHARS, ARRAY_ITEMS), so the call ends within `ForcedCall.token_bound()` tokens:
the server lets a forced row run that far, past a smaller max_tokens, so a call is never cut.

Why not a grammar library (xgrammar, llguidance, lm-format-enforcer, outlines-core): they bound what
the text may be, not how long it gets, and a random model writing a string would run past any
max_tokens, leaving the call unfinished.

Schemas: the subset chat_format.schema_errors checks (type, enum, const, properties, required, items,
anyOf/oneOf, where the first alternative is written). Only required properties must be written;
additionalProperties never comes into play since no other key is. Tokens are classified once per
tokenizer by their decoded text, which for the byte-level tokenizers students use is exactly what a
token adds to the reply.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import LogitsProcessor

from .chat_format import CALL_CLOSE, CALL_OPEN

STRING_TOKENS = 32  # a string value's tokens at most (each adds at least one character)
NUMBER_CHARS = 12  # a number's characters, after which it ends
ARRAY_ITEMS = 4  # an array's items at most
CALL_START = CALL_OPEN + '{"name": '
ARGUMENTS_KEY = ', "arguments": '
CALL_END = "}" + CALL_CLOSE


@dataclass(frozen=True)
class Force:
    """Write this text: its tokens are forced one by one."""
    text: str


@dataclass(frozen=True)
class Pick:
    """Let the model pick one of these tokens (ids, or a mask over the vocabulary); the writer is sent
    the picked token's text."""
    allowed: list[int] | torch.Tensor


Writer = Generator[Force | Pick, str | None, str]


# ---- the vocabulary, by what each token may stand for


@dataclass
class Vocabulary:
    tokenizer: object
    texts: list[str]  # by token id: its text ("" for special and added tokens, which are never picked)
    ids_of: dict[str, int]  # a token whose text is exactly this
    in_string: torch.Tensor  # tokens a JSON string may hold unescaped (no quote, backslash, control)
    digits: torch.Tensor  # tokens of digits only
    leading: torch.Tensor  # digit tokens a number may start with ("0" alone, or no leading 0)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def mask(self, ids) -> torch.Tensor:
        mask = torch.zeros_like(self.digits)
        mask[list(ids)] = True
        return mask


@lru_cache(maxsize=4)
def vocabulary(tokenizer, width: int) -> Vocabulary:
    """`width`: the model's logits, which may be wider than the tokenizer."""
    texts = token_texts(tokenizer, width)
    ids_of: dict[str, int] = {}
    for token_id, text in enumerate(texts):
        ids_of.setdefault(text, token_id)
    ids_of.pop("", None)
    return Vocabulary(tokenizer, texts, ids_of, classified(texts, string_safe), classified(texts, is_digits),
                      classified(texts, lambda t: is_digits(t) and (t == "0" or not t.startswith("0"))))


def token_texts(tokenizer, width: int) -> list[str]:
    size = min(len(tokenizer), width)
    texts = tokenizer.batch_decode([[i] for i in range(size)])
    for token_id in set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {})):
        if token_id < size:
            texts[token_id] = ""
    return texts + [""] * (width - size)


def string_safe(text: str) -> bool:
    return bool(text) and "\ufffd" not in text and all(c >= " " and c not in '"\\' for c in text)


def is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def classified(texts: list[str], accepts) -> torch.Tensor:
    return torch.tensor([bool(text) and accepts(text) for text in texts])


# ---- writers: one value of a schema, token by token


class SchemaWriter:
    """Each method writes one kind of JSON value. A value that ends only when the model says so (a
    number) ends by the model picking the first character of what may follow it (`ends`); the method
    returns that character, already written, or "" when nothing past the value was written."""

    def __init__(self, vocabulary: Vocabulary):
        self.vocabulary = vocabulary

    def call(self, functions: dict[str, dict]) -> Writer:
        yield Force(CALL_START)
        options = {json.dumps(name, ensure_ascii=False) + ARGUMENTS_KEY: name for name in functions}
        chosen, _ = yield from self.choose(list(options))
        yield from self.object(functions[options[chosen]].get("parameters") or {})
        yield Force(CALL_END)
        return ""

    def value(self, schema: dict, ends: str) -> Writer:
        schema = resolved(schema)
        values = literal_values(schema)
        if values is not None:
            _, past = yield from self.choose([json.dumps(v, ensure_ascii=False) for v in values], ends=ends)
            return past
        kind = value_type(schema)
        if kind in ("integer", "number"):
            return (yield from self.number(kind == "integer", ends))
        writer = {"object": self.object, "array": self.array}.get(kind, lambda _: self.string())
        yield from writer(schema)
        return ""

    def object(self, schema: dict) -> Writer:
        properties = object_properties(schema)
        required = set(schema.get("required") or [])
        remaining = list(properties)
        yield Force("{")
        options, past = key_options(remaining, required, first=True), ""
        while True:
            chosen, _ = yield from self.choose(list(options), past)
            if options[chosen] is None:
                return ""
            key, remaining = remaining[options[chosen]], remaining[options[chosen] + 1:]
            options = key_options(remaining, required, first=False)
            past = yield from self.value(properties[key], first_characters(options))

    def array(self, schema: dict) -> Writer:
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        yield Force("[")
        opening, _ = yield from self.choose(["]", " "])  # a space (JSON whitespace) opens the first item
        count = 0 if opening == " " else ARRAY_ITEMS
        while count < ARRAY_ITEMS:
            count += 1
            options = [", ", "]"] if count < ARRAY_ITEMS else ["]"]
            past = yield from self.value(items, first_characters(options))
            if (yield from self.choose(options, past))[0] == "]":
                break
        return ""

    def string(self) -> Writer:
        vocabulary = self.vocabulary
        allowed = vocabulary.in_string | vocabulary.mask(ids_for(vocabulary, '"'))
        yield Force('"')
        for _ in range(STRING_TOKENS):
            if (yield Pick(allowed)) == '"':
                return ""
        yield Force('"')
        return ""

    def number(self, integer: bool, ends: str) -> Writer:
        vocabulary = self.vocabulary
        end_mask = vocabulary.mask(ids_for(vocabulary, *ends))
        text = yield Pick(vocabulary.leading | vocabulary.mask(ids_for(vocabulary, "-")))
        if text == "-":
            text += yield Pick(vocabulary.leading)
        fraction = False
        while True:
            allowed = self.number_continuations(text, integer, fraction) | end_mask
            if not allowed.any():
                return ""
            picked = yield Pick(allowed)
            if len(picked) == 1 and picked in ends:
                return picked
            if picked == ".":
                fraction, picked = True, picked + (yield Pick(vocabulary.digits))
            text += picked

    def number_continuations(self, text: str, integer: bool, fraction: bool) -> torch.Tensor:
        vocabulary = self.vocabulary
        allowed = torch.zeros_like(vocabulary.digits)
        if len(text) >= NUMBER_CHARS:
            return allowed
        if fraction or text.lstrip("-") != "0":
            allowed |= vocabulary.digits
        if not integer and not fraction:
            allowed |= vocabulary.mask(ids_for(vocabulary, "."))
        return allowed

    def choose(self, options: list[str], written: str = "", ends: str = "") -> Generator:
        """One of `options`, continuing `written` (already written): the model picks among the tokens
        that keep the text the start of an option. Returns (the option, the text written past it): an
        option that is also the start of a longer one (the number 1 beside 12) ends by one of `ends`."""
        while True:
            live = [option for option in options if option.startswith(written)]
            done = written in live
            if done and (len(live) == 1 or not ends):
                return written, ""
            steps = next_tokens(self.vocabulary, live, written)
            if len(live) == 1 or not steps:  # no token spells a next step: the first option is written
                yield Force(live[0][len(written):])
                return live[0], ""
            closing = ids_for(self.vocabulary, *ends) if done else []
            picked = yield Pick(sorted(set(steps) | set(closing)))
            if done and len(picked) == 1 and picked in ends:
                return written, picked
            written += picked


def next_tokens(vocabulary: Vocabulary, live: list[str], written: str) -> list[int]:
    rests = [option[len(written):] for option in live]
    steps = (vocabulary.ids_of.get(rest[:k]) for rest in rests for k in range(1, len(rest) + 1))
    return [token_id for token_id in steps if token_id is not None]


def ids_for(vocabulary: Vocabulary, *texts: str) -> list[int]:
    return [vocabulary.ids_of[text] for text in texts if text in vocabulary.ids_of]


def key_options(remaining: list[str], required: set[str], first: bool) -> dict[str, int | None]:
    """What may come next in an object: the key of any remaining property up to the next required one
    (the optional ones before it may be skipped), or its end once no required one remains."""
    separator = "" if first else ", "
    options: dict[str, int | None] = {}
    for index, key in enumerate(remaining):
        options[f"{separator}{json.dumps(key, ensure_ascii=False)}: "] = index
        if key in required:
            return options
    options["}"] = None
    return options


def first_characters(options) -> str:
    return "".join(sorted({option[0] for option in options}))


# ---- reading a schema


def resolved(schema) -> dict:
    """The schema to write: the first of anyOf/oneOf's alternatives (each one is accepted)."""
    if not isinstance(schema, dict):
        return {}
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    return resolved(alternatives[0]) if alternatives else schema


def literal_values(schema: dict) -> list | None:
    """The values allowed, where the schema allows a few: enum, const, boolean, null."""
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"]
    if "const" in schema:
        return [schema["const"]]
    return {"boolean": [True, False], "null": [None]}.get(value_type(schema))


def value_type(schema: dict) -> str:
    """The schema's type (the first of a list of types); without one, what its keywords imply."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if isinstance(kind, str):
        return kind
    return "object" if "properties" in schema else "array" if "items" in schema else "string"


def object_properties(schema: dict) -> dict[str, dict]:
    """Its properties in the schema's order, then the required keys it does not describe."""
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    undescribed = {key: {} for key in schema.get("required") or [] if key not in properties}
    return {**properties, **undescribed}


def token_bound(schema) -> int:
    """At most how many tokens a writer spends on a value: each token adds at least one byte."""
    schema = resolved(schema)
    values = literal_values(schema)
    if values is not None:
        return max(len(json.dumps(v, ensure_ascii=False).encode()) for v in values)
    kind = value_type(schema)
    if kind in ("integer", "number"):
        return NUMBER_CHARS + 2
    if kind == "object":
        return 2 + sum(len(f', {json.dumps(key, ensure_ascii=False)}: '.encode()) + token_bound(value)
                       for key, value in object_properties(schema).items())
    if kind == "array":
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return 3 + ARRAY_ITEMS * (token_bound(items) + 2)
    return STRING_TOKENS + 2


# ---- the forced call, per row of a batch


@dataclass(frozen=True)
class ForcedCall:
    """A call the reply must be: to one of `functions` (OpenAI function objects by name)."""
    functions: dict[str, dict]

    def token_bound(self) -> int:
        """The most tokens the call can take, its end-of-turn token included."""
        names = max(len((json.dumps(n, ensure_ascii=False) + ARGUMENTS_KEY).encode()) for n in self.functions)
        arguments = max(token_bound(f.get("parameters") or {}) for f in self.functions.values())
        return len(CALL_START.encode()) + names + arguments + len(CALL_END.encode()) + 1


class RowWriter:
    """One row's writer driven a token at a time: `allowed` says what the next token may be, `feed`
    takes the token generated. After the call, the end-of-turn token is forced."""

    def __init__(self, writer: Writer, vocabulary: Vocabulary, end_id: int):
        self.writer, self.vocabulary, self.end_id = writer, vocabulary, end_id
        self.forced: list[int] = []
        self.picking: torch.Tensor | list[int] = []
        self.ending = self.done = False
        self.resume(None)

    def resume(self, sent: str | None) -> None:
        """Run the writer to its next request for a token."""
        try:
            step = self.writer.send(sent)
            while isinstance(step, Force) and not (ids := self.vocabulary.encode(step.text)):
                step = self.writer.send(None)
        except StopIteration:
            self.forced, self.ending = [self.end_id], True
            return
        if isinstance(step, Force):
            self.forced = ids
        else:
            self.picking = step.allowed

    def allowed(self) -> torch.Tensor | list[int]:
        return self.forced[:1] if self.forced else self.picking

    def feed(self, token_id: int) -> None:
        if not self.forced:
            self.resume(self.vocabulary.texts[token_id])
            return
        self.forced.pop(0)
        if not self.forced:
            self.done = self.ending
            if not self.ending:
                self.resume(None)


class ForcedCalls(LogitsProcessor):
    """For transformers' generate: each row with a ForcedCall (None: a free row) masked to what its
    writer allows. Writers start at the first step, when the logits' width is known."""

    def __init__(self, calls: list[ForcedCall | None], tokenizer, end_id: int):
        self.calls, self.tokenizer, self.end_id = calls, tokenizer, end_id
        self.rows: list[RowWriter | None] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.rows is None:
            self.rows = self.start(scores.shape[-1])
        else:
            for row, writer in enumerate(self.rows):
                if writer is not None and not writer.done:
                    writer.feed(int(input_ids[row, -1]))
        for row, writer in enumerate(self.rows):
            if writer is not None and not writer.done:
                keep = self.keep(writer.allowed(), scores.shape[-1]).to(scores.device)
                scores[row] = scores[row].masked_fill(~keep, -torch.inf)
        return scores

    def start(self, width: int) -> list[RowWriter | None]:
        vocabulary_ = vocabulary(self.tokenizer, width)
        return [None if call is None else
                RowWriter(SchemaWriter(vocabulary_).call(call.functions), vocabulary_, self.end_id)
                for call in self.calls]

    @staticmethod
    def keep(allowed, width: int) -> torch.Tensor:
        if isinstance(allowed, torch.Tensor):
            return allowed
        mask = torch.zeros(width, dtype=torch.bool)
        mask[list(allowed)] = True
        return mask
