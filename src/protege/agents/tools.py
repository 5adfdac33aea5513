"""A task's tools: the OpenAI function-calling schema of each (from a function's signature, type hints
and Google-style docstring, or written by hand) and one call of a tool as a model asked for it, under a
time limit.

Two kinds of mistakes are told apart. A tool the task defines badly (a parameter without a type hint,
*args, a type no JSON schema can describe, a hand-written schema without a name) is the user's: it
raises ToolError naming the tool and where it came from, when the tools load. A model's mistake (an
unknown tool, malformed JSON, a wrong or missing argument) and a tool's own exception or hang are part
of an episode: call_tool returns them as a one-line `error: ...` result that goes back to the model as
the tool's message, and never raises.
"""

from __future__ import annotations

import inspect
import json
import re
import sqlite3
import textwrap
import threading
import typing
from dataclasses import dataclass
from typing import Any, Callable, Collection, Literal

from pydantic import (BaseModel, ConfigDict, Field, PydanticUserError, TypeAdapter, ValidationError, create_model,
                      field_validator)



class ToolError(ValueError):
    """A tool the task defines badly; str() is one line naming the tool and where it came from."""


# ---- schemas


@dataclass(frozen=True)
class Tool:
    """One tool as the model sees it (schema) and as its arguments are checked (arguments)."""

    name: str
    schema: dict
    arguments: type[BaseModel]

    def validate(self, arguments: dict) -> dict[str, Any]:
        """The keyword arguments of the call: validated, coerced, defaults filled in."""
        checked = self.arguments.model_validate(arguments)
        return {info.alias: getattr(checked, field) for field, info in self.arguments.model_fields.items()}


# Fields are stored as arg_NAME with the parameter's name as alias, so a parameter may be called
# json, copy or model_id without shadowing BaseModel's attributes; a model's extra argument is refused.
ARGUMENTS_CONFIG = ConfigDict(extra="forbid", protected_namespaces=())
NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def tool_schema(tool: Callable | dict, hidden: Collection[str] = ()) -> dict:
    """The OpenAI function-calling schema of a function (its signature, type hints and docstring), or of a
    hand-written schema (the OpenAI shape or just its `function` part), normalized. hidden: parameters the
    environment fills in, left out of the schema."""
    if isinstance(tool, dict):
        return normalized_schema(tool)
    name = getattr(tool, "__name__", type(tool).__name__)
    return build_tool(tool, name, f"{getattr(tool, '__module__', '?')}:{name}", hidden=hidden).schema


def build_tool(fn: Callable, name: str, where: str, *, method: bool = False, hidden: Collection[str] = (),
               schema: dict | None = None) -> Tool:
    """The tool `fn` is; where: module:attr, for errors. method: fn is a class's function, self first.
    schema: a hand-written schema to use instead of the derived one."""
    try:
        return make_tool(fn, name, method, hidden, schema)
    except (ValueError, TypeError, NameError, PydanticUserError) as exc:
        raise ToolError(f"tool {name!r} ({where}): {first_line(exc)}") from exc


def make_tool(fn: Callable, name: str, method: bool, hidden: Collection[str], schema: dict | None) -> Tool:
    description, documented = parse_docstring(inspect.getdoc(fn))
    parameters = list(inspect.signature(fn).parameters.values())[1 if method else 0:]
    parameters = [p for p in parameters if p.name not in hidden]
    hints = typing.get_type_hints(fn, include_extras=True)
    arguments = arguments_model(name, parameters, hints, documented, hints_required=schema is None)
    if schema is None:
        return Tool(name, derived_schema(name, description, arguments, parameters, hints), arguments)
    check_agreement(schema, parameters)
    return Tool(name, schema, arguments)


def arguments_model(name: str, parameters: list[inspect.Parameter], hints: dict, documented: dict[str, str],
                    hints_required: bool) -> type[BaseModel]:
    """A pydantic model of the parameters; a hand-written schema documents unhinted ones (Any here)."""
    fields = {}
    for p in parameters:
        if p.kind not in NAMED:
            raise ValueError(f"parameter {p.name!r}: a model calls tools with named arguments only, so *args, "
                             "**kwargs and positional-only parameters cannot be tools' parameters")
        if hints_required and p.name not in hints:
            raise ValueError(f"parameter {p.name!r} has no type hint")
        default = ... if p.default is p.empty else p.default
        fields[f"arg_{p.name}"] = (hints.get(p.name, Any), Field(default, alias=p.name,
                                                                 description=documented.get(p.name)))
    return create_model(f"{name}_arguments", __config__=ARGUMENTS_CONFIG, **fields)


def derived_schema(name: str, description: str, arguments: type[BaseModel], parameters: list, hints: dict) -> dict:
    try:
        parameters_schema = arguments.model_json_schema()
    except PydanticUserError:  # name the parameter whose type no JSON schema describes, when one does not
        unsupported = next((p.name for p in parameters if not json_describable(hints[p.name])), None)
        if unsupported is None:
            raise
        raise ValueError(f"parameter {unsupported!r}: its type {hints[unsupported]!r} has no JSON schema") from None
    plain = plain_schema(parameters_schema, parameters_schema.get("$defs", {}))
    return {"type": "function", "function": {"name": name, "description": description, "parameters": plain}}


def json_describable(hint: Any) -> bool:
    try:
        TypeAdapter(hint).json_schema()
        return True
    except PydanticUserError:
        return False


DATA_KEYS = frozenset({"default", "enum", "const", "examples"})  # values, not schemas: kept as they are
# the order OpenAI's examples write a schema in, which a model reads in its prompt (pydantic sorts keys)
KEY_ORDER = {key: rank for rank, key in enumerate(("type", "description", "enum", "items", "properties", "required"))}


def plain_schema(node: Any, defs: dict, seen: tuple[str, ...] = ()) -> Any:
    """pydantic's JSON schema as a model reads it best: $refs written out in place, no titles."""
    if isinstance(node, list):
        return [plain_schema(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = node["$ref"].rsplit("/", 1)[-1]
        if target in seen:
            raise ValueError(f"the recursive type {target} cannot be written out in a tool schema")
        rest = {key: value for key, value in node.items() if key != "$ref"}
        return {**plain_schema(defs[target], defs, (*seen, target)), **plain_schema(rest, defs, seen)}
    keys = sorted((k for k in node if k not in ("title", "$defs")), key=lambda k: KEY_ORDER.get(k, len(KEY_ORDER)))
    return {key: plain_value(key, node[key], defs, seen) for key in keys}


def plain_value(key: str, value: Any, defs: dict, seen: tuple[str, ...]) -> Any:
    if key in DATA_KEYS:
        return value
    if key == "properties":  # property names are data (a parameter may be called title)
        return {name: plain_schema(schema, defs, seen) for name, schema in value.items()}
    return plain_schema(value, defs, seen)


# ---- docstrings (Google style)

SECTIONS = frozenset({"args", "arguments", "parameters", "params", "returns", "return", "yields", "raises",
                      "examples", "example", "note", "notes", "attributes", "see also", "warnings", "todo"})
ARGUMENT_SECTIONS = ("args", "arguments", "parameters", "params")
ARGUMENT_LINE = re.compile(r"\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)")  # name (type): text


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(the description: the text before the first section, wrapped lines joined; the parameters'
    descriptions from the Args: section)."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in (doc or "").splitlines():
        header = line.rstrip().rstrip(":").lower()
        if line.rstrip().endswith(":") and not line[:1].isspace() and header in SECTIONS:
            current = header
            sections[current] = []
        else:
            sections[current].append(line)
    arguments = next((sections[s] for s in ARGUMENT_SECTIONS if s in sections), [])
    return unwrapped("\n".join(sections[""])), argument_descriptions(arguments)


def argument_descriptions(lines: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    last = None
    for line in textwrap.dedent("\n".join(lines)).splitlines():
        start = ARGUMENT_LINE.fullmatch(line)
        if start and not line[:1].isspace():
            last = start[1]
            found[last] = start[2]
        elif last and line.strip():  # an indented continuation of the last parameter's text
            found[last] = f"{found[last]} {line.strip()}"
    return {name: text.strip() for name, text in found.items()}


def unwrapped(text: str) -> str:
    """Paragraphs kept, the hard wraps inside each joined: a docstring's line breaks are layout."""
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


# ---- hand-written schemas


class FunctionPart(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI's own extras (strict) pass through
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    description: str = ""
    parameters: dict[str, Any]

    @field_validator("parameters")
    @classmethod
    def _object(cls, value: dict) -> dict:
        if value.get("type") != "object":
            raise ValueError('must be a JSON schema of {"type": "object", "properties": ...}')
        return value


class HandWritten(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionPart


def normalized_schema(schema: dict, where: str = "hand-written schema") -> dict:
    """{"type": "function", "function": {name, description, parameters}}, from that or its function part."""
    outer = schema if "function" in schema else {"type": "function", "function": schema}
    try:
        return HandWritten.model_validate(outer).model_dump()
    except ValidationError as exc:
        inner = outer.get("function")
        name = inner.get("name") if isinstance(inner, dict) else None
        raise ToolError(f"tool {name or '(no name)'!r} ({where}): {validation_text(exc)}") from exc


def check_agreement(schema: dict, parameters: list[inspect.Parameter]) -> None:
    """A hand-written schema names only the function's parameters and requires those without defaults."""
    properties = set(schema["function"]["parameters"].get("properties", {}))
    required = set(schema["function"]["parameters"].get("required", []))
    unknown = properties - {p.name for p in parameters}
    unrequired = {p.name for p in parameters if p.default is p.empty} - required
    if unknown:
        raise ValueError(f"the schema names parameters the function does not have: {', '.join(sorted(unknown))}")
    if unrequired:
        raise ValueError(f"the schema does not require parameters without defaults: {', '.join(sorted(unrequired))}")


# ---- one episode's tools and one call


ResultKind = Literal["ok", "unknown-tool", "bad-json", "bad-arguments", "raised", "timeout"]


@dataclass(frozen=True)
class ToolResult:
    """What a call gives back: content is the `tool` message the model reads next."""

    content: str
    error: bool = False
    kind: ResultKind = "ok"


@dataclass
class Toolbox:
    """One episode's tools, each bound to this episode's environment and database and to no other's.
    environment and db are there for a verifier to read the episode's end state."""

    tools: dict[str, Tool]
    calls: dict[str, Callable[..., Any]]
    timeout: float = 10.0
    environment: Any = None
    db: sqlite3.Connection | None = None

    @property
    def schemas(self) -> list[dict]:
        return [tool.schema for tool in self.tools.values()]

    @classmethod
    def of(cls, *functions: Callable, timeout: float = 10.0) -> "Toolbox":
        """Stateless functions as a toolbox: for tests and scripts that need no task folder."""
        tools = {fn.__name__: build_tool(fn, fn.__name__, f"{fn.__module__}:{fn.__name__}") for fn in functions}
        return cls(tools, {fn.__name__: fn for fn in functions}, timeout)


def call_tool(toolbox: Toolbox, name: str, arguments: str | dict | None, timeout: float | None = None) -> ToolResult:
    """Call the tool `name` with the arguments a model wrote (a JSON string, or parsed) within timeout
    seconds (default: the toolbox's). Never raises for a model's mistake or a tool's failure."""
    tool = toolbox.tools.get(str(name))
    if tool is None:
        return failure("unknown-tool", f"unknown tool {name!r}; tools: {', '.join(toolbox.tools) or 'none'}")
    try:
        keywords = tool.validate(parsed_arguments(arguments))
    except json.JSONDecodeError as exc:
        return failure("bad-json", f"bad JSON in the arguments for {tool.name}: {exc}")
    except ValidationError as exc:
        return failure("bad-arguments", f"bad arguments for {tool.name}: {validation_text(exc)}")
    except Exception as exc:  # not a JSON object, or a validator of the task's own raising something else
        return failure("bad-arguments", f"bad arguments for {tool.name}: {exc}")
    return run_with_limit(tool.name, toolbox.calls[tool.name], keywords, timeout or toolbox.timeout)


def parsed_arguments(arguments: str | dict | None) -> dict:
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}  # a tool without parameters is often called with "" rather than "{}"
    parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    if not isinstance(parsed, dict):
        raise TypeError(f"the arguments must be a JSON object, not {type(parsed).__name__}")
    return parsed


def run_with_limit(name: str, call: Callable[..., Any], keywords: dict, timeout: float) -> ToolResult:
    """Run the call in a worker thread and wait at most timeout seconds. Python cannot kill a thread: a
    call that hangs is abandoned, still running, as a daemon thread (it never holds the process open at
    exit), and whatever it does later to its episode's environment is that episode's, which ends anyway."""
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=capture, args=(call, keywords, outcome), daemon=True, name=f"tool-{name}")
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return failure("timeout", f"{name} did not finish within {timeout:g} s")
    if "raised" in outcome:
        exc = outcome["raised"]
        return failure("raised", f"{name} raised {type(exc).__name__}" + (f": {exc}" if str(exc) else ""))
    return ToolResult(outcome["content"])


def capture(call: Callable[..., Any], keywords: dict, outcome: dict) -> None:
    # the result is written out here too, so a result json cannot write (a cycle) is the tool's error
    try:
        outcome["content"] = result_text(call(**keywords))
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a tool must not end the worker silently
        outcome["raised"] = exc


def result_text(value: Any) -> str:
    """A result as the model reads it: JSON for data, the text itself for anything else."""
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


FAILURE_MARK = "error: "  # how every failure's one line begins


def failure(kind: ResultKind, text: str) -> ToolResult:
    return ToolResult(f"{FAILURE_MARK}{' '.join(text.split())}", True, kind)


def is_failure(content: str) -> bool:
    """Whether a tool message's content is a failure call_tool reported (a tool that itself returns text
    beginning with "error: " reads the same)."""
    return content.startswith(FAILURE_MARK)


def validation_text(exc: ValidationError) -> str:
    """`amount: Input should be a valid number; coupon: Extra inputs are not permitted`."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
