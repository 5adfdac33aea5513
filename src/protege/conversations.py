"""Conversation data in, episode records out: files of chats, with or without tool calls, converted on
read (as LLaMA-Factory reads the glaive tool-call data) into protege's episode record

    {"id", "messages": [OpenAI chat messages], "tools": [OpenAI tool schemas], "meta": {"source", ...}}

Two formats, told apart per file by its first row:

- OpenAI chat: {"messages": [...], "tools": [...]}, assistant messages with `tool_calls` answered by
  `tool` messages (OpenAI's fine-tuning format).
- ShareGPT, LLaMA-Factory's field names: {"conversations": [{"from", "value"}], "tools": "<JSON string
  or list>", "system": "..."}, `from` one of human, gpt, function_call, observation, system. A
  function_call's value is a JSON {"name", "arguments"} object or a list of them; an observation
  answers the function_call before it (one observation answering several calls is split when it is a
  JSON list of one result per call).

Either may have no tools at all: a plain multi-turn chat, whose last assistant turn is the reference
answer. A file is JSONL (one row a line) or, as LLaMA-Factory's data files are, one JSON array. A bad
row raises ValueError("FILE:LINE: what is wrong").

What a record holds, whatever it came from: roles system, user, assistant, tool; every content a
string, except an assistant turn's that only calls tools (None); tool-call arguments a JSON string
holding an object; every tool call answered, before the next user or assistant turn, by one tool
message whose tool_call_id is the call's id (and whose name is the tool's); at least one assistant turn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .runs import JSONLError, digest, numbered_jsonl, read_text

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "function_call", "observation": "observation",
                  "tool": "observation"}


# ---- files


def read_conversations(path: str | Path, source: str = "seed") -> list[dict]:
    """Every row of a conversation file as an episode record; meta.source is the row's own, else `source`."""
    path = Path(path)
    rows = numbered_rows(path)
    if not rows:
        raise ValueError(f"{path}: no conversations in the file")
    convert = converter_for(path, *rows[0])
    return [converted_row(path, line, row, convert, source) for line, row in rows]


def is_chat_file(path: Path) -> bool:
    """Whether a data file holds chats: a JSON array (LLaMA-Factory's files), or JSONL whose first row
    has `messages` or `conversations`."""
    return chat_layout(path) is not None


def chat_layout(path: Path) -> str | None:
    """"array" (a JSON array of rows), "messages" or "conversations" (JSONL, by its first row's key), or
    None for a file of other rows; a first line that is no JSON is None too: the JSONL reader says where."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first = next((line.strip() for line in f if line.strip()), "")
    if first.startswith("["):
        return "array"
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return None
    return next((key for key in ("messages", "conversations") if isinstance(row, dict) and key in row), None)


def numbered_rows(path: Path) -> list[tuple[int, Any]]:
    """(line, row) for every row: a JSONL file's lines, or the elements of a JSON array."""
    text = read_text(path)
    if text.lstrip().startswith("["):
        return array_rows(path, text)
    return numbered_jsonl(path)


def array_rows(path: Path, text: str) -> list[tuple[int, Any]]:
    """The elements of a JSON array, each with the line it starts on."""
    decoder, rows = json.JSONDecoder(), []
    position = skip_space(text, text.index("[") + 1)
    while position < len(text) and text[position] != "]":
        try:
            row, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise JSONLError(path, line_at(text, exc.pos), exc.msg) from None
        rows.append((line_at(text, position), row))
        position = skip_space(text, end)
        position = skip_space(text, position + 1) if text.startswith(",", position) else position
    return rows


def skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def line_at(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def converter_for(path: Path, line: int, row: Any) -> Callable[[dict], dict]:
    """The file's format, from its first row."""
    if isinstance(row, dict) and "messages" in row:
        return episode_from_openai
    if isinstance(row, dict) and "conversations" in row:
        return episode_from_sharegpt
    raise ValueError(f"{path}:{line}: a row needs 'messages' (OpenAI chat) or 'conversations' (ShareGPT)")


def converted_row(path: Path, line: int, row: Any, convert: Callable[[dict], dict], source: str) -> dict:
    key = "messages" if convert is episode_from_openai else "conversations"
    try:
        if not isinstance(row, dict) or key not in row:
            raise ValueError(f"expected an object with {key!r}, like the file's first row")
        return with_identity(convert(row), row, source)
    except ValueError as exc:
        raise ValueError(f"{path}:{line}: {exc}") from None


def with_identity(episode: dict, row: dict, source: str) -> dict:
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    record_id = row.get("id") or digest([episode["messages"], episode["tools"]])
    return {"id": str(record_id), **episode, "meta": {"source": source, **meta}}


def last_assistant(record: dict) -> dict:
    """The reference turn of a chat: its last assistant message."""
    return next(m for m in reversed(record["messages"]) if m["role"] == "assistant")


# ---- OpenAI chat


def episode_from_openai(row: dict) -> dict:
    """{"messages", "tools"} of an OpenAI chat row, checked and normalized; raises ValueError."""
    tools = row_tools(row.get("tools"))
    return {"messages": checked_messages(row["messages"], tool_names(tools)), "tools": tools}


def row_tools(tools: Any) -> list[dict]:
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else []
        except json.JSONDecodeError as exc:
            raise ValueError(f"tools: not JSON ({exc.msg})") from None
    if tools is not None and not isinstance(tools, list):
        raise ValueError(f"tools: expected a list of tool schemas, got {type(tools).__name__}")
    return normalize_tools(tools)


def tool_names(tools: list[dict]) -> set[str]:
    return {tool["function"]["name"] for tool in tools}


def checked_messages(messages: Any, names: set[str]) -> list[dict]:
    """The messages normalized; every rule of the module docstring checked, naming the message."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: expected a non-empty list")
    state = CallState(names)
    checked = [state.message(n, message) for n, message in enumerate(messages)]
    if not any(message["role"] == "assistant" for message in checked):
        raise ValueError("messages: no assistant turn")
    return checked


class CallState:
    """The calls an episode has made and not yet seen answered, while its messages are read in order."""

    def __init__(self, names: set[str]):
        self.names, self.pending, self.calls = names, [], 0

    def message(self, n: int, message: Any) -> dict:
        where = f"messages[{n}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ValueError(f"{where}: expected a message with a role in {', '.join(ROLES)}")
        if message["role"] == "tool":
            return self.tool_result(where, message)
        if self.pending:
            raise ValueError(f"{where}: tool call {self.pending[0]['id']!r} has no tool message before it")
        if message["role"] == "assistant":
            return self.assistant(where, message)
        return {"role": message["role"], "content": text_content(message.get("content"), where)}

    def assistant(self, where: str, message: dict) -> dict:
        calls = [self.call(f"{where}.tool_calls[{k}]", call) for k, call in enumerate(tool_calls_of(message, where))]
        if len({call["id"] for call in calls}) < len(calls):
            raise ValueError(f"{where}: two tool calls share an id")
        content = message.get("content")
        if not calls:
            return {"role": "assistant", "content": text_content(content, where)}
        self.pending = list(calls)
        return {"role": "assistant", "content": text_content(content, where) if content else None,
                "tool_calls": calls}

    def call(self, where: str, call: Any) -> dict:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise ValueError(f"{where}: expected {{'function': {{'name', 'arguments'}}}}")
        if self.names and function["name"] not in self.names:
            raise ValueError(f"{where}: calls {function['name']!r}, which is not one of the row's tools")
        self.calls += 1
        call_id = call.get("id") or f"call_{self.calls - 1}"
        return {"id": str(call_id), "type": "function",
                "function": {"name": function["name"], "arguments": arguments_string(function.get("arguments"), where)}}

    def tool_result(self, where: str, message: dict) -> dict:
        answered = self.answered_call(where, message.get("tool_call_id"))
        self.pending.remove(answered)
        return {"role": "tool", "tool_call_id": answered["id"], "name": answered["function"]["name"],
                "content": result_content(message.get("content"))}

    def answered_call(self, where: str, call_id: Any) -> dict:
        if not self.pending:
            raise ValueError(f"{where}: a tool message that answers no tool call")
        if call_id is None:  # no ids in the data: results answer the calls in order
            return self.pending[0]
        for call in self.pending:
            if call["id"] == str(call_id):
                return call
        raise ValueError(f"{where}: tool_call_id {call_id!r} answers none of the calls "
                         f"{[call['id'] for call in self.pending]}")


def tool_calls_of(message: dict, where: str) -> list:
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ValueError(f"{where}.tool_calls: expected a list")
    return calls


def text_content(content: Any, where: str) -> str:
    """A message's text; OpenAI's list of content parts is joined when every part is text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(part.get("text", "")) for part in content)
    raise ValueError(f"{where}.content: expected text, got {type(content).__name__}")


def result_content(content: Any) -> str:
    # a tool's result is text for the model; structured results are written as JSON
    if isinstance(content, str):
        return content
    return "" if content is None else json.dumps(content, ensure_ascii=False)


def arguments_string(arguments: Any, where: str) -> str:
    """Arguments as a JSON string holding an object, whether the row wrote a string or an object."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}.arguments: not JSON ({exc.msg})") from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ValueError(f"{where}.arguments: expected a JSON object, got {type(arguments).__name__}")
    return json.dumps(arguments, ensure_ascii=False)


# ---- ShareGPT (LLaMA-Factory's field names)


def episode_from_sharegpt(row: dict) -> dict:
    """{"messages", "tools"} of a ShareGPT row, converted to OpenAI messages and then checked as those are."""
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise ValueError("conversations: expected a non-empty list")
    messages = sharegpt_messages(turns, row.get("system"))
    return episode_from_openai({"messages": messages, "tools": row.get("tools")})


def sharegpt_messages(turns: list, system: Any) -> list[dict]:
    if isinstance(turns[0], dict) and turns[0].get("from") == "system":
        system = None  # a system turn overrides the row's system field, as in LLaMA-Factory
    messages = [{"role": "system", "content": system}] if system else []
    pending: list[dict] = []
    for k, turn in enumerate(turns):
        role, value = sharegpt_turn(k, turn)
        messages.extend(converted_turn(f"conversations[{k}]", role, value, pending, calls_made(messages)))
    return messages


def sharegpt_turn(k: int, turn: Any) -> tuple[str, Any]:
    if not isinstance(turn, dict) or turn.get("from") not in SHAREGPT_ROLES or "value" not in turn:
        raise ValueError(f"conversations[{k}]: expected {{'from', 'value'}} with 'from' one of "
                         f"{', '.join(SHAREGPT_ROLES)}")
    return SHAREGPT_ROLES[turn["from"]], turn["value"]


def calls_made(messages: list[dict]) -> int:
    return sum(len(message.get("tool_calls") or []) for message in messages)


def converted_turn(where: str, role: str, value: Any, pending: list[dict], first_id: int) -> list[dict]:
    """The OpenAI messages of one ShareGPT turn; `pending` holds the calls still to be answered."""
    if role == "observation":
        return observations(where, value, pending)
    if pending:
        raise ValueError(f"{where}: the function_call before it has no observation")
    if role == "function_call":
        pending[:] = function_calls(where, value, first_id)
        return [{"role": "assistant", "content": None, "tool_calls": list(pending)}]
    return [{"role": role, "content": value}]


def function_calls(where: str, value: Any, first_id: int) -> list[dict]:
    """A function_call's value, {"name", "arguments"} or a list of them (JSON text or already parsed),
    as OpenAI tool calls with ids call_<first_id>, call_<first_id + 1>, ..."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: a function_call that is not JSON ({exc.msg})") from None
    calls = value if isinstance(value, list) else [value]
    if not calls or not all(isinstance(call, dict) and "name" in call for call in calls):
        raise ValueError(f'{where}: a function_call must be {{"name", "arguments"}} or a list of them')
    return [{"id": f"call_{first_id + k}", "type": "function",
             "function": {"name": call["name"], "arguments": call.get("arguments", {})}}
            for k, call in enumerate(calls)]


def observations(where: str, value: Any, pending: list[dict]) -> list[dict]:
    """Tool messages answering the pending calls: one result per call when the observation splits into
    as many, else one result for the first call still unanswered."""
    if not pending:
        raise ValueError(f"{where}: an observation that answers no function_call")
    results = split_results(value, len(pending)) if len(pending) > 1 else None
    answered = pending[:len(results)] if results else pending[:1]
    del pending[:len(answered)]
    return [{"role": "tool", "tool_call_id": call["id"], "content": result}
            for call, result in zip(answered, results or [value])]


def split_results(value: Any, count: int) -> list | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if not isinstance(value, list) or len(value) != count:
        return None
    return [item if isinstance(item, str) else json.dumps(item, ensure_ascii=False) for item in value]


def normalize_tools(tools: list[dict] | None) -> list[dict]:
    """OpenAI tool schemas {"type": "function", "function": {...}}; a bare function object (glaive's,
    LLaMA-Factory's) is wrapped. Raises ValueError for a schema without a name."""
    return [normalized_tool(tool, n) for n, tool in enumerate(tools or [])]


def normalized_tool(tool: Any, n: int) -> dict:
    function = tool.get("function", tool) if isinstance(tool, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ValueError(f"tools[{n}]: expected an OpenAI tool schema with a function name, got {tool!r:.80}")
    return {"type": "function", "function": function}
