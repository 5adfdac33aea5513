"""How a student sees tool calls: the one place that renders an episode for a tokenizer and parses the
student's generated text back into an OpenAI assistant message.

Two paths, chosen per tokenizer by `supports_tools` (a probe rendering, not a list of model names):

- The template renders tools (Qwen2.5, Llama 3.1, Hermes, ...): the episode goes to
  `apply_chat_template(messages, tools=tools)` as it is, except that tool-call arguments become dicts
  (what transformers' templates expect; a JSON string would be quoted again by `tojson`).
- It does not (the embedded SmolLM2-135M-Instruct, plain ChatML): the episode is rewritten into plain
  {role, content} messages in protege's text format, close to Qwen2.5/Hermes's so that a model trained
  on it also reads naturally:

  * the tool definitions end the system message, after a blank line (a system message is added when
    the episode has none):

        You can call tools. Their signatures, one JSON object a line, are within <tools></tools>:
        <tools>
        {"type": "function", "function": {"name": "get_price", ...}}        (one line per tool)
        </tools>
        To call a tool, write <tool_call>{"name": <tool name>, "arguments": <arguments as a JSON
        object>}</tool_call>; for several calls, write several blocks. Each result comes back as
        <tool_response>{"name": <tool name>, "content": <result>}</tool_response>.

    (the last sentence is one line: TOOLS_USAGE)
  * an assistant tool call is a block in the assistant's text, one block per call, each on its own
    line after the assistant's words (if any; stripped):
        <tool_call>{"name": "get_price", "arguments": {"sku": "A1"}}</tool_call>
  * a tool result is a block in a USER message; the results of consecutive tool messages share one
    user message, one block a line:
        <tool_response>{"name": "get_price", "content": "3.50"}</tool_response>
    a result that is a JSON object or array is the content's JSON itself, not a string of it
    ({"name": "find_customer", "content": {"customer_id": "C001"}}): no escaped quotes to read past.
    User rather than the template's `tool` role: every template renders a user turn, while one that
    does not know tools may drop or reject a `tool` message, and a user turn is never in the loss.

Training: `rendered_record` gives SFT messages whose assistant turns are exactly what the model
writes (its words and its tool-call blocks) and whose tool results sit in user turns, so protege's SFT
(the loss on every assistant turn, found by rendering the chat up to each turn) applies unchanged on
the text path. On the native path the template also needs the tools: whatever tokenizes the chat must
pass `tools=` to apply_chat_template, as `chat_text` and `assistant_spans` do.

`parse_assistant` reads `<tool_call>` blocks: protege's format, and Qwen2.5/Hermes's (the same blocks
with newlines around the JSON). It never raises on model output: each problem is counted instead.
Arguments are checked against the tool's parameters schema by a small checker written here (type,
enum, properties, required, additionalProperties, items, anyOf/oneOf): `jsonschema` is not one of
protege's dependencies, and tool schemas use only that subset.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, Iterator

from ..conversations import normalize_tools

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
TOOLS_INTRO = "You can call tools. Their signatures, one JSON object a line, are within <tools></tools>:"
TOOLS_USAGE = ('To call a tool, write <tool_call>{"name": <tool name>, "arguments": <arguments as a JSON '
               'object>}</tool_call>; for several calls, write several blocks. Each result comes back as '
               '<tool_response>{"name": <tool name>, "content": <result>}</tool_response>.')

JSON_DECODER = json.JSONDecoder()
SPACES = re.compile(r"\s*")

# the kinds of ParseProblem
MALFORMED_JSON, UNKNOWN_TOOL, SCHEMA_MISMATCH, UNCLOSED_BLOCK, EMPTY = (
    "malformed_json", "unknown_tool", "schema_mismatch", "unclosed_block", "empty")


# ---- tool schemas


def functions_by_name(tools: list[dict] | None) -> dict[str, dict]:
    return {tool["function"]["name"]: tool["function"] for tool in normalize_tools(tools)}


# ---- which path a tokenizer takes

PROBE_TOOL = {"type": "function", "function": {
    "name": "protege_probe_tool", "description": "Probe.",
    "parameters": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}}}
PROBE_CHAT = [
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_0", "type": "function",
         "function": {"name": "protege_probe_tool", "arguments": {"x": "protege_probe_argument"}}}]},
    {"role": "tool", "tool_call_id": "call_0", "name": "protege_probe_tool", "content": "protege_probe_result"},
]
_SUPPORTS: dict[str, bool] = {}


def supports_tools(tokenizer) -> bool:
    """Does the tokenizer's chat template render tool definitions, tool calls and tool results? Found by
    rendering a probe episode (cached per template), since no template declares it."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return False
    key = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    if key not in _SUPPORTS:
        _SUPPORTS[key] = probe_renders_tools(tokenizer)
    return _SUPPORTS[key]


def probe_renders_tools(tokenizer) -> bool:
    try:
        text = tokenizer.apply_chat_template(PROBE_CHAT, tools=[PROBE_TOOL], tokenize=False)
        without = tokenizer.apply_chat_template(PROBE_CHAT[:1], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that fails on tool messages does not support them
        return False
    marks = ("protege_probe_tool", "protege_probe_argument", "protege_probe_result")
    return all(mark in text for mark in marks) and "protege_probe_tool" not in without


# ---- rendering


def chat_text(messages: list[dict], tools: list[dict] | None, tokenizer, add_generation_prompt: bool = False) -> str:
    """The episode as the student's prompt text, by whichever path the tokenizer takes."""
    return template_text(render_messages(messages, tools, tokenizer), tools, tokenizer, add_generation_prompt)


def render_messages(messages: list[dict], tools: list[dict] | None, tokenizer=None) -> list[dict]:
    """The messages the tokenizer's template is given: the episode itself (arguments as dicts) where the
    template renders tools, protege's text format otherwise (and without a tokenizer)."""
    if tokenizer is not None and supports_tools(tokenizer):
        return native_messages(messages)
    return text_messages(messages, tools)


def rendered_record(record: dict, tokenizer=None) -> dict:
    """An episode record ready for SFT's tokenizer: its messages rendered, every assistant turn exactly
    what the model writes (words and tool-call blocks), tool results in user turns outside the loss."""
    return {**record, "messages": render_messages(record["messages"], record.get("tools"), tokenizer)}


def native_messages(messages: list[dict]) -> list[dict]:
    return [native_message(message) for message in messages]


def native_message(message: dict) -> dict:
    native = {**message, "content": message.get("content") or ""}
    if message.get("tool_calls"):
        native["tool_calls"] = [native_call(call) for call in message["tool_calls"]]
    return native


def native_call(call: dict) -> dict:
    function = call["function"]
    return {**call, "function": {**function, "arguments": arguments_object(function.get("arguments"))}}


def text_messages(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    plain: list[dict] = []
    for is_tool, group in groupby(with_tool_definitions(named_results(messages), normalize_tools(tools)),
                                  key=lambda message: message["role"] == "tool"):
        if is_tool:  # the results of one round of calls share one user turn
            plain.append({"role": "user", "content": "\n".join(response_block(m) for m in group)})
        else:
            plain.extend(plain_message(message) for message in group)
    return plain


def plain_message(message: dict) -> dict:
    if message["role"] == "assistant":
        return {"role": "assistant", "content": assistant_text(message)}
    return {"role": message["role"], "content": message.get("content") or ""}


def with_tool_definitions(messages: list[dict], tools: list[dict]) -> list[dict]:
    if not tools:
        return list(messages)
    definitions = tools_text(tools)
    if messages and messages[0]["role"] == "system":
        system = (messages[0].get("content") or "").rstrip()
        return [{"role": "system", "content": f"{system}\n\n{definitions}" if system else definitions},
                *messages[1:]]
    return [{"role": "system", "content": definitions}, *messages]


def tools_text(tools: list[dict]) -> str:
    lines = [json.dumps(tool, ensure_ascii=False) for tool in tools]
    return "\n".join([TOOLS_INTRO, "<tools>", *lines, "</tools>", TOOLS_USAGE])


def named_results(messages: list[dict]) -> list[dict]:
    """The messages, each tool result named after the latest call with its id (ids may repeat across
    turns: the result answers the call just before it)."""
    names: dict[str, str] = {}
    named = []
    for message in messages:
        names.update({call.get("id", ""): call["function"]["name"] for call in message.get("tool_calls") or []})
        if message["role"] == "tool" and not message.get("name"):
            message = {**message, "name": names.get(message.get("tool_call_id", ""), "")}
        named.append(message)
    return named


def assistant_text(message: dict) -> str:
    """What the model writes for an assistant turn: its words, then one block per tool call."""
    blocks = [call_block(call) for call in message.get("tool_calls") or []]
    return "\n".join(part for part in [(message.get("content") or "").strip(), *blocks] if part)


def call_block(call: dict) -> str:
    function = call["function"]
    body = {"name": function["name"], "arguments": arguments_object(function.get("arguments"))}
    return CALL_OPEN + json.dumps(body, ensure_ascii=False) + CALL_CLOSE


def response_block(message: dict) -> str:
    body = {"name": message["name"], "content": result_value(message.get("content") or "")}
    return RESPONSE_OPEN + json.dumps(body, ensure_ascii=False) + RESPONSE_CLOSE


def result_value(content: str) -> Any:
    """A result that is a JSON object or array goes in as JSON, not as a string of it: escaped quotes
    cost a token each and bury the fields a small model must read (a list it must count). Anything else,
    "3.50" included, stays the string it is."""
    if content.lstrip()[:1] not in ("{", "["):
        return content
    try:
        return json.loads(content)
    except ValueError:
        return content


def arguments_object(arguments: str | dict | None) -> dict:
    """A record's arguments (a JSON string, as OpenAI stores them, or already a dict) as a dict; a
    record's arguments are data, so bad ones raise."""
    if isinstance(arguments, dict):
        return arguments
    value = json.loads(arguments) if arguments and arguments.strip() else {}
    if not isinstance(value, dict):
        raise ValueError(f"tool-call arguments must be a JSON object, got {arguments!r:.80}")
    return value


def assistant_spans(messages: list[dict], tools: list[dict] | None, tokenizer) -> list[tuple[int, int]]:
    """(start, end) character offsets in chat_text(messages, tools, tokenizer) of every assistant turn:
    from after the assistant header to the end of the turn's rendering (end-of-turn marker included),
    found as protege's SFT finds them, by rendering the chat up to each turn."""
    rendered = render_messages(messages, tools, tokenizer)
    full = template_text(rendered, tools, tokenizer, False)
    spans = []
    for i, message in enumerate(rendered):
        if message["role"] == "assistant":
            spans.append(turn_span(rendered, i, tools, tokenizer, full))
    return spans


def turn_span(rendered: list[dict], i: int, tools, tokenizer, full: str) -> tuple[int, int]:
    # a chat that opens with the assistant has no header to skip (and an empty chat cannot be rendered)
    start = len(template_text(rendered[:i], tools, tokenizer, True)) if i else 0
    through_turn = template_text(rendered[:i + 1], tools, tokenizer, False)
    if not full.startswith(through_turn):
        raise ValueError("the chat template renders a turn differently inside a longer chat; "
                         "it cannot be split into turns for the loss")
    return start, len(through_turn)


def template_text(rendered: list[dict], tools, tokenizer, add_generation_prompt: bool) -> str:
    # the messages are rendered already: only the native path still needs the tools
    native_tools = (normalize_tools(tools) or None) if supports_tools(tokenizer) else None
    return tokenizer.apply_chat_template(rendered, tools=native_tools, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


# ---- parsing


@dataclass(frozen=True)
class ParseProblem:
    kind: str  # MALFORMED_JSON, UNKNOWN_TOOL, SCHEMA_MISMATCH, UNCLOSED_BLOCK or EMPTY
    detail: str


@dataclass
class ParsedTurn:
    """The student's turn as an OpenAI assistant message, with what was wrong in it."""

    content: str | None
    tool_calls: list[dict] = field(default_factory=list)
    problems: list[ParseProblem] = field(default_factory=list)
    blocks: int = 0  # <tool_call> blocks opened, parsed or not: the denominator of a valid-call rate

    @property
    def valid(self) -> bool:
        """Every call parsed and matched its tool's schema (and the turn was not empty)."""
        return not self.problems

    @property
    def counts(self) -> Counter:
        return Counter(problem.kind for problem in self.problems)

    @property
    def message(self) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return message


def parse_assistant(text: str, tools: list[dict] | None, first_id: int = 0) -> ParsedTurn:
    """The student's generated text as an assistant message: the text outside tool-call blocks
    (stripped; None when there are only calls) and one OpenAI tool call per block that holds a JSON
    {"name", "arguments"} object, with ids call_<first_id>, call_<first_id + 1>, ... and arguments
    re-serialized as a JSON string. A call to an unknown tool or with arguments its schema refuses is
    kept (the tool answers it with an error the model can read) and counted; a block that is not JSON
    is dropped and counted; an unclosed block is counted and kept when its JSON parses. tools=None
    checks no names and no schemas."""
    text = text if isinstance(text, str) else ""
    functions = None if tools is None else safe_functions(tools)
    turn = ParsedTurn(content=None)
    outside = []
    position = 0
    for start, end, body, closed in call_blocks(text):
        outside.append(text[position:start])
        position = end
        read_block(turn, body, closed, functions, first_id)
    outside.append(text[position:])
    turn.content = turn_content("".join(outside), turn.blocks)
    if not text.strip():
        turn.problems.append(ParseProblem(EMPTY, "the turn is empty"))
    return turn


def safe_functions(tools: list[dict]) -> dict[str, dict]:
    # the task's tools were checked when they loaded; one bad schema must not make parsing raise
    try:
        return functions_by_name(tools)
    except ValueError:
        return {}


def call_blocks(text: str) -> Iterator[tuple[int, int, str, bool]]:
    """(start, end, body, closed) of each <tool_call> block."""
    position = 0
    while (start := text.find(CALL_OPEN, position)) != -1:
        body_start = start + len(CALL_OPEN)
        body_end, closed = json_block_end(text, body_start) or tag_block_end(text, body_start)
        position = body_end + len(CALL_CLOSE) if closed else body_end
        yield start, position, text[body_start:body_end], closed


def json_block_end(text: str, body_start: int) -> tuple[int, bool] | None:
    """The end of a body that is one JSON value followed by the closing tag. Read as JSON first, so that
    a closing tag inside a string argument does not end the block."""
    try:
        _, end = JSON_DECODER.raw_decode(text, SPACES.match(text, body_start).end())
    except json.JSONDecodeError:
        return None
    end = SPACES.match(text, end).end()
    return (end, True) if text.startswith(CALL_CLOSE, end) else None


def tag_block_end(text: str, body_start: int) -> tuple[int, bool]:
    """The end of a body that is not JSON: the closing tag; an unclosed block ends where the next one
    opens, or at the end of the text."""
    close, reopen = text.find(CALL_CLOSE, body_start), text.find(CALL_OPEN, body_start)
    if close != -1 and (reopen == -1 or close < reopen):
        return close, True
    return (reopen if reopen != -1 else len(text)), False


def turn_content(outside: str, blocks: int) -> str | None:
    content = outside.strip()
    return None if blocks and not content else content


def read_block(turn: ParsedTurn, body: str, closed: bool, functions: dict | None, first_id: int) -> None:
    turn.blocks += 1
    number = turn.blocks
    if not closed:
        turn.problems.append(ParseProblem(UNCLOSED_BLOCK, f"tool call {number} has no {CALL_CLOSE}"))
    call, problem = decoded_call(body)
    if call is None:
        turn.problems.append(ParseProblem(MALFORMED_JSON, f"tool call {number}: {problem}"))
        return
    name, arguments = call
    turn.problems.extend(call_problems(name, arguments, functions, number))
    turn.tool_calls.append(openai_call(f"call_{first_id + len(turn.tool_calls)}", name, arguments))


def decoded_call(body: str) -> tuple[tuple[str, dict] | None, str]:
    """((name, arguments), "") from a block's JSON, or (None, what is wrong)."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at character {exc.pos})"
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None, 'not a {"name", "arguments"} object'
    # "parameters" is Llama 3's key for the same thing; a missing one is a call without arguments
    arguments = value.get("arguments", value.get("parameters", {}))
    arguments = decoded_arguments(arguments)
    if arguments is None:
        return None, "arguments are not a JSON object"
    return (value["name"], arguments), ""


def decoded_arguments(arguments: Any) -> dict | None:
    # some models write the arguments as a JSON string, as OpenAI's API stores them
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None
    return arguments if isinstance(arguments, dict) else None


def call_problems(name: str, arguments: dict, functions: dict | None, number: int) -> list[ParseProblem]:
    if functions is None:
        return []
    if name not in functions:
        return [ParseProblem(UNKNOWN_TOOL, f"tool call {number}: no tool named {name!r}")]
    errors = schema_errors(arguments, functions[name].get("parameters") or {}, "arguments")
    return [ParseProblem(SCHEMA_MISMATCH, f"tool call {number} to {name}: {errors[0]}")] if errors else []


def message_problems(message: dict, tools: list[dict] | None) -> list[ParseProblem]:
    """What is wrong with the tool calls of an assistant message that was not parsed here (a teacher's
    reply, already in OpenAI's format): arguments that are not a JSON object, unknown tools, arguments
    their tool's schema refuses. A turn is judged by the same rules whoever wrote it."""
    functions = None if tools is None else safe_functions(tools)
    problems = []
    for number, call in enumerate(message.get("tool_calls") or [], 1):
        arguments = decoded_arguments(call["function"].get("arguments"))
        if arguments is None:
            problems.append(ParseProblem(MALFORMED_JSON, f"tool call {number}: arguments are not a JSON object"))
        else:
            problems.extend(call_problems(call["function"]["name"], arguments, functions, number))
    return problems


def openai_call(call_id: str, name: str, arguments: dict) -> dict:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


# ---- the subset of JSON Schema tool parameters use

JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def schema_errors(value: Any, schema: dict, where: str) -> list[str]:
    """What is wrong with `value` under `schema`, one line each ([] when it matches)."""
    if not isinstance(schema, dict):
        return []
    for check in (alternatives_errors, type_errors, enum_errors, object_errors, array_errors):
        errors = check(value, schema, where)
        if errors:
            return errors
    return []


def alternatives_errors(value: Any, schema: dict, where: str) -> list[str]:
    options = schema.get("anyOf") or schema.get("oneOf")
    if not options or any(not schema_errors(value, option, where) for option in options):
        return []
    return [f"{where}: {json.dumps(value, ensure_ascii=False):.60} matches none of its allowed schemas"]


def type_errors(value: Any, schema: dict, where: str) -> list[str]:
    expected = schema.get("type")
    if expected is None:
        return []
    names = expected if isinstance(expected, list) else [expected]
    if any(JSON_TYPES.get(name, lambda v: True)(value) for name in names):
        return []
    return [f"{where}: expected {' or '.join(names)}, got {json_type(value)}"]


def json_type(value: Any) -> str:
    return next(name for name in ("null", "boolean", "integer", "number", "string", "array", "object")
                if JSON_TYPES[name](value)) if is_json(value) else type(value).__name__


def is_json(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, dict))


def enum_errors(value: Any, schema: dict, where: str) -> list[str]:
    allowed = schema.get("enum")
    if allowed is None or value in allowed:
        return []
    return [f"{where}: {value!r} is not one of {allowed}"]


def object_errors(value: Any, schema: dict, where: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    properties = schema.get("properties") or {}
    missing = [key for key in schema.get("required") or [] if key not in value]
    if missing:
        return [f"{where}: missing required {', '.join(missing)}"]
    if schema.get("additionalProperties") is False:
        extra = [key for key in value if key not in properties]
        if extra:
            return [f"{where}: unexpected {', '.join(extra)}"]
    return [error for key, item in value.items() if key in properties
            for error in schema_errors(item, properties[key], f"{where}.{key}")][:1]


def array_errors(value: Any, schema: dict, where: str) -> list[str]:
    items = schema.get("items")
    if not isinstance(value, list) or not isinstance(items, dict):
        return []
    return [error for n, item in enumerate(value) for error in schema_errors(item, items, f"{where}[{n}]")][:1]
