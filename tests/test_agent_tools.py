"""protege.agents tools: schemas from type hints and docstrings (and by hand), clear errors for tools
defined badly, environments and SQLite databases fresh per episode, and tool calls whose every failure
(unknown tool, bad JSON, bad arguments, an exception, a hang) comes back as a one-line error result."""

import enum
import json
import sqlite3
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Literal, Optional

import pytest
from pydantic import BaseModel, ValidationError

from protege.agents.environment import load_tools
from protege.agents.tools import ToolError, Toolbox, call_tool, tool_schema
from protege.config import ToolsConfig


class Speed(enum.Enum):
    standard = "standard"
    express = "express"


class Line(BaseModel):
    sku: str
    quantity: int = 1


def ship(address: str, lines: list[Line], weight: float, gift: bool = False, speed: Speed = Speed.standard,
         tags: list[str] = [], carrier: Literal["UPS", "DHL"] = "UPS", note: Optional[str] = None,
         boxes: int = 1) -> dict:
    """Ship an order's lines to an address.

    The carrier picks the
    route itself.

    Args:
        address: Where the parcel goes,
            street first.
        lines (list[Line]): What is in the parcel.
        weight: Kilograms.
        gift: Wrap it.

    Returns:
        The shipment.
    """
    return {}


SHIP_SCHEMA = {"type": "function", "function": {
    "name": "ship",
    "description": "Ship an order's lines to an address.\n\nThe carrier picks the route itself.",
    "parameters": {
        "type": "object",
        "properties": {
            "address": {"type": "string", "description": "Where the parcel goes, street first."},
            "lines": {"type": "array", "description": "What is in the parcel.",
                      "items": {"type": "object", "properties": {"sku": {"type": "string"},
                                                                 "quantity": {"type": "integer", "default": 1}},
                                "required": ["sku"]}},
            "weight": {"type": "number", "description": "Kilograms."},
            "gift": {"type": "boolean", "description": "Wrap it.", "default": False},
            "speed": {"type": "string", "enum": ["standard", "express"], "default": "standard"},
            "tags": {"type": "array", "items": {"type": "string"}, "default": []},
            "carrier": {"type": "string", "enum": ["UPS", "DHL"], "default": "UPS"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "boxes": {"type": "integer", "default": 1},
        },
        "required": ["address", "lines", "weight"],
        "additionalProperties": False,
    }}}


def test_schema_from_type_hints_and_docstring():
    assert tool_schema(ship) == SHIP_SCHEMA
    # the order OpenAI's examples write, since the model reads it in its prompt
    assert list(tool_schema(ship)["function"]["parameters"]) == ["type", "properties", "required",
                                                                 "additionalProperties"]


def test_parameter_names_are_data_not_keywords():
    def tag(title: str, json: int, model_id: str = "x") -> str:
        """Tag a page."""
        return title

    parameters = tool_schema(tag)["function"]["parameters"]
    assert parameters["properties"] == {"title": {"type": "string"}, "json": {"type": "integer"},
                                        "model_id": {"type": "string", "default": "x"}}
    assert call_tool(Toolbox.of(tag), "tag", '{"title": "home", "json": 1}').content == "home"


def test_no_docstring_gives_an_empty_description():
    def ping() -> str:
        return "pong"

    assert tool_schema(ping)["function"] == {"name": "ping", "description": "",
                                             "parameters": {"type": "object", "properties": {},
                                                            "additionalProperties": False}}


def test_hand_written_schema_normalized():
    part = {"name": "refund", "description": "Refund.", "parameters": {"type": "object", "properties": {}}}
    assert tool_schema(part) == {"type": "function", "function": part}
    assert tool_schema({"type": "function", "function": part}) == {"type": "function", "function": part}


def no_hint(amount) -> str:
    return ""


def star_args(*amounts: float) -> str:
    return ""


def star_kwargs(**amounts: float) -> str:
    return ""


def positional_only(amount: float, /) -> str:
    return ""


class Ledger:  # no JSON schema describes it
    pass


def unsupported(ledger: Ledger) -> str:
    return ""


def callback(then: Callable[[], None]) -> str:
    return ""


def unresolved(then: "Shipment") -> str:  # noqa: F821 - a hint naming nothing
    return ""


@pytest.mark.parametrize("fn, says", [(no_hint, "parameter 'amount' has no type hint"),
                                      (star_args, "parameter 'amounts'"),
                                      (star_kwargs, "parameter 'amounts'"),
                                      (positional_only, "parameter 'amount'"),
                                      (unsupported, "Ledger"),
                                      (callback, "parameter 'then': its type"),
                                      (unresolved, "Shipment")])
def test_bad_definition_names_the_tool(fn, says):
    with pytest.raises(ToolError) as error:
        tool_schema(fn)
    message = str(error.value)
    assert message.startswith(f"tool {fn.__name__!r} (test_agent_tools:{fn.__name__}): ")
    assert says in message and "\n" not in message


@pytest.mark.parametrize("schema, says", [
    ({"description": "x", "parameters": {"type": "object"}}, "tool '(no name)'"),
    ({"name": "refund", "description": "x"}, "tool 'refund'"),
    ({"name": "refund", "parameters": {"type": "string"}}, "type"),
    ({"type": "function", "function": {"name": "has space", "parameters": {"type": "object"}}}, "has space"),
])
def test_bad_hand_written_schema(schema, says):
    with pytest.raises(ToolError, match="hand-written schema") as error:
        tool_schema(schema)
    assert says in str(error.value) and "\n" not in str(error.value)


# ---- task folders


def task(tmp_path: Path, **modules: str) -> Path:
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return tmp_path


SHOP = """
    class Shop:
        starts = 0  # counted across instances: reset() runs once per episode

        def __init__(self):
            self.refunded = {}
            self.calls = 0

        def reset(self):
            Shop.starts += 1

        def refund(self, order_id: int, amount: float) -> dict:
            '''Refund an order once.

            Args:
                order_id: The order's number.
                amount: How much.
            '''
            self.calls += 1
            if order_id in self.refunded:
                raise ValueError(f"order {order_id} was refunded already")
            self.refunded[order_id] = amount
            return {"order_id": order_id, "refunded": amount}

        def count(self) -> int:
            '''How many calls this episode has made.'''
            self.calls += 1
            return self.calls

        @staticmethod
        def rate(currency: str) -> float:
            '''The exchange rate of a currency.'''
            return 1.5

        def _audit(self) -> None:
            pass
    """


def test_environment_class_is_fresh_every_episode(tmp_path):
    tools = load_tools({"environment": "shop:Shop"}, task(tmp_path, shop=SHOP))
    assert [s["function"]["name"] for s in tools.schemas] == ["refund", "count", "rate"]
    assert tools.schemas[0]["function"]["parameters"]["properties"]["order_id"] == {
        "type": "integer", "description": "The order's number."}
    for _ in range(2):  # the second episode sees neither the refund nor the calls of the first
        with tools.episode() as toolbox:
            assert call_tool(toolbox, "refund", '{"order_id": 7, "amount": 5}').content == \
                '{"order_id": 7, "refunded": 5.0}'
            again = call_tool(toolbox, "refund", '{"order_id": 7, "amount": 5}')
            assert (again.kind, again.content) == ("raised", "error: refund raised ValueError: order 7 was "
                                                   "refunded already")
            assert call_tool(toolbox, "count", "").content == "3"
            assert call_tool(toolbox, "rate", {"currency": "EUR"}).content == "1.5"
    assert type(toolbox.environment).starts == 2


SHOP_DB = """
    def add_note(text: str, db) -> str:
        '''Write a note.

        Args:
            text: The note.
            db: The episode's database, filled in by protege.
        '''
        db.execute("insert into notes values (?)", (text,))
        return "saved"

    def notes(db) -> list:
        '''Every note.'''
        return [row[0] for row in db.execute("select text from notes")]

    class Desk:
        def __init__(self, db):
            self.db = db

        def count(self) -> int:
            '''How many notes there are.'''
            return self.db.execute("select count(*) from notes").fetchone()[0]
    """


def notes_database(folder: Path) -> Path:
    path = folder / "notes.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("create table notes (text)")
        db.execute("insert into notes values ('seeded')")
    db.close()
    return path


def test_database_is_copied_per_episode(tmp_path):
    original = notes_database(task(tmp_path, notes=SHOP_DB))
    before = original.read_bytes()
    cfg = {"environment": "notes:Desk", "functions": ["notes:add_note", "notes:notes"], "database": "notes.sqlite"}
    tools = load_tools(cfg, tmp_path)
    add_note = tools.schemas[1]["function"]
    assert add_note["parameters"]["properties"] == {"text": {"type": "string", "description": "The note."}}
    assert add_note["parameters"]["required"] == ["text"]  # db is the environment's, not the model's
    for _ in range(2):
        with tools.episode() as toolbox:
            assert call_tool(toolbox, "notes", "{}").content == '["seeded"]'
            assert call_tool(toolbox, "add_note", '{"text": "mine"}').content == "saved"
            assert call_tool(toolbox, "notes", "{}").content == '["seeded", "mine"]'
            assert call_tool(toolbox, "count", "{}").content == "2"  # the class got the same copy
            copy = Path(toolbox.db.execute("pragma database_list").fetchone()[2])
            assert copy != original and copy.exists()
    assert not copy.exists()
    assert original.read_bytes() == before


def test_db_parameter_without_database_is_an_error(tmp_path):
    with pytest.raises(ToolError, match=r"tool 'add_note' \(notes:add_note\): parameter 'db' has no type hint"):
        load_tools({"functions": ["notes:add_note"]}, task(tmp_path, notes=SHOP_DB))


def test_hand_written_schemas_replace_derived_ones(tmp_path):
    task(tmp_path, tools="""
        def refund(order, amount=0.0):
            return f"refunded {amount} of {order}"
        """)
    schema = {"name": "refund", "description": "Refund an order.",
              "parameters": {"type": "object", "properties": {"order": {"type": "integer"},
                                                              "amount": {"type": "number"}},
                             "required": ["order"]}}
    (tmp_path / "schemas.json").write_text(json.dumps([schema]))
    for schemas in ([schema], "schemas.json"):
        tools = load_tools({"functions": ["tools:refund"], "schemas": schemas}, tmp_path)
        assert tools.schemas == [{"type": "function", "function": schema}]
        with tools.episode() as toolbox:
            assert call_tool(toolbox, "refund", '{"order": 3}').content == "refunded 0.0 of 3"
            assert call_tool(toolbox, "refund", '{"amount": 1}').kind == "bad-arguments"


@pytest.mark.parametrize("cfg, says", [
    ({"environment": "shop:missing"}, "tools.environment shop:missing: ValueError"),
    ({"environment": "nowhere:Shop"}, "tools.environment nowhere:Shop: ModuleNotFoundError"),
    ({"functions": ["shop:Shop.count"]}, "tools.functions shop:Shop.count"),
    ({"environment": "shop:make"}, "tools.environment shop:make: not a class"),
    ({"environment": "shop:Needy"}, "tools.environment shop:Needy: cannot be made with no arguments"),
    ({"environment": "shop:Shop", "functions": ["shop:count"]}, "two tools are named 'count'"),
    ({}, "neither tools.environment nor tools.functions declares a tool"),
    ({"functions": ["shop:count"], "database": "missing.sqlite"}, "tools.database: no file"),
    ({"functions": ["shop:count"], "schemas": "missing.json"}, "tools.schemas: no file"),
    ({"functions": ["shop:count"], "schemas": [{"name": "refund", "parameters": {"type": "object"}}]},
     "tools.schemas: no tool is named refund"),
    ({"functions": ["shop:count"], "schemas": [{"name": "count", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer"}}}}]},
     "tool 'count' (shop:count): the schema names parameters the function does not have: n"),
])
def test_bad_task_tools_say_what_and_where(tmp_path, cfg, says):
    task(tmp_path, shop=SHOP + """
    def make():
        return Shop()

    def count() -> int:
        '''A count.'''
        return 0

    class Needy:
        def __init__(self, url):
            self.url = url
    """)
    with pytest.raises(ToolError) as error:
        load_tools(cfg, tmp_path)
    assert says in str(error.value) and "\n" not in str(error.value)


def test_environment_that_cannot_start_is_the_tasks_error(tmp_path):
    tools = load_tools({"environment": "broken:Broken"}, task(tmp_path, broken="""
        class Broken:
            def reset(self):
                raise RuntimeError("no stock file")

            def look(self) -> str:
                '''Look.'''
                return ""
        """))
    with pytest.raises(ToolError, match="tools.environment broken:Broken: could not start an episode: "
                                        "RuntimeError: no stock file"):
        with tools.episode():
            pass


def test_shop_example_loads(examples_dir):
    tools = load_tools({"environment": "shop:Shop"}, examples_dir / "shop-agent")
    assert [s["function"]["name"] for s in tools.schemas] == ["find_customer", "list_orders", "get_shipment",
                                                              "issue_refund"]
    refund = '{"order_id": 1004, "amount": 10}'  # delivered within the last 30 days
    for _ in range(2):  # a refund never outlives its episode
        with tools.episode() as toolbox:
            assert call_tool(toolbox, "issue_refund", refund).content == '{"order_id": 1004, "refunded": 10.0}'
            assert call_tool(toolbox, "issue_refund", refund).content == \
                "error: issue_refund raised ValueError: refund refused: the order was refunded already"


# ---- calls


def refund(order_id: int, amount: float, reason: str = "") -> dict:
    """Refund an order."""
    if amount > 100:
        raise ValueError(f"amount {amount}\nis over the limit")
    return {"order_id": order_id, "refunded": amount}


def quote() -> str:
    """A quote."""
    return "to be or not to be"


@pytest.fixture
def toolbox():
    release = threading.Event()

    def hang() -> str:
        """Never answers in time."""
        release.wait(10)
        return "late"

    yield Toolbox.of(refund, quote, hang, timeout=5)
    release.set()  # the abandoned worker thread ends with the test


@pytest.mark.parametrize("name, arguments, kind, content", [
    ("refund", '{"order_id": 7, "amount": 12.5}', "ok", '{"order_id": 7, "refunded": 12.5}'),
    ("refund", {"order_id": "7", "amount": 1}, "ok", '{"order_id": 7, "refunded": 1.0}'),
    ("quote", "", "ok", "to be or not to be"),
    ("quote", None, "ok", "to be or not to be"),
    ("refnud", "{}", "unknown-tool", "error: unknown tool 'refnud'; tools: refund, quote, hang"),
    ("refund", '{"order_id": 7, "amount": 12.5', "bad-json",
     "error: bad JSON in the arguments for refund: Expecting ',' delimiter: line 1 column 31 (char 30)"),
    ("refund", '{"order_id": 7, "amount": [1]}', "bad-arguments",
     "error: bad arguments for refund: amount: Input should be a valid number"),
    ("refund", '{"order_id": 7}', "bad-arguments", "error: bad arguments for refund: amount: Field required"),
    ("refund", '{"order_id": 7, "amount": 1, "coupon": "X"}', "bad-arguments",
     "error: bad arguments for refund: coupon: Extra inputs are not permitted"),
    ("refund", "[7, 1]", "bad-arguments", "error: bad arguments for refund: the arguments must be a JSON object, "
     "not list"),
    ("refund", '{"order_id": 7, "amount": 500}', "raised",
     "error: refund raised ValueError: amount 500.0 is over the limit"),
])
def test_call_results(toolbox, name, arguments, kind, content):
    result = call_tool(toolbox, name, arguments)
    assert (result.kind, result.content, result.error) == (kind, content, kind != "ok")


def test_a_tool_that_hangs_times_out(toolbox):
    started = time.monotonic()
    result = call_tool(toolbox, "hang", "{}", timeout=0.2)
    assert time.monotonic() - started < 2
    assert (result.kind, result.content) == ("timeout", "error: hang did not finish within 0.2 s")
    assert call_tool(toolbox, "quote", "{}").kind == "ok"  # the toolbox still answers


def test_results_that_cannot_be_written_are_the_tools_error():
    def loop() -> list:
        """A list that holds itself."""
        items: list = []
        items.append(items)
        return items

    result = call_tool(Toolbox.of(loop), "loop", "{}")
    assert (result.kind, result.content) == ("raised", "error: loop raised ValueError: Circular reference detected")


# ---- the tools: section


def test_tools_config_defaults_and_descriptions():
    cfg = ToolsConfig()
    assert (cfg.environment, cfg.functions, cfg.schemas, cfg.database, cfg.timeout, cfg.max_turns, cfg.verifier) \
        == ("", [], [], "", 10.0, 8, "")
    assert all(info.description for info in ToolsConfig.model_fields.values())
    assert "tools:" in ToolsConfig.__doc__


@pytest.mark.parametrize("bad", [{"environment": "Shop"}, {"functions": ["shop:a", "b"]}, {"verifier": "v"},
                                 {"timeout": 0}, {"max_turns": 0}, {"tools": []}])
def test_tools_config_refuses(bad):
    with pytest.raises(ValidationError):
        ToolsConfig(**bad)
