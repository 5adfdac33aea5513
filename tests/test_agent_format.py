"""protege.agents chat format and conversations: tool calls rendered for a template with and without
tool support and parsed back (round trips; malformed output counted, never raised), SFT's loss on
exactly the assistant turns of a rendered episode, and OpenAI / ShareGPT conversation files converted
into episode records with FILE:LINE errors for bad rows."""

import json
import re

import pytest

from protege.models.chat_format import (CALL_CLOSE, response_block, CALL_OPEN, EMPTY, MALFORMED_JSON, SCHEMA_MISMATCH, TOOLS_INTRO,
                                        UNCLOSED_BLOCK, UNKNOWN_TOOL, assistant_spans, assistant_text, chat_text,
                                        normalize_tools, parse_assistant, render_messages, rendered_record,
                                        supports_tools)
from protege.conversations import last_assistant, read_conversations
from protege.models.tiny import tiny_tokenizer

# a ChatML template that renders tools: definitions in a system turn, calls as blocks, a `tool` role
TOOLS_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\n# Tools\n' }}{% for tool in tools %}{{ tool | tojson }}{{ '\n' }}"
    "{% endfor %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}{% if m['content'] %}{{ m['content'] }}{% endif %}"
    "{% if m['tool_calls'] %}{% for c in m['tool_calls'] %}{{ '<tool_call>' }}"
    "{{ {'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson }}{{ '</tool_call>' }}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

SHOP_TOOLS = [
    {"type": "function", "function": {
        "name": "get_price", "description": "The price of a product.",
        "parameters": {"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"],
                       "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "place_order", "description": "Order products for a customer.",
        "parameters": {"type": "object", "properties": {
            "customer": {"type": "string"},
            "lines": {"type": "array", "items": {"type": "object", "properties": {
                "sku": {"type": "string"}, "quantity": {"type": "integer"}}, "required": ["sku"]}},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "speed": {"type": "string", "enum": ["standard", "express"]}},
            "required": ["customer", "lines"]}}},
]


def call(call_id, name, arguments):
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def episode():
    return [
        {"role": "system", "content": "You run a shop."},
        {"role": "user", "content": "What do A1 and B2 cost?"},
        {"role": "assistant", "content": None, "tool_calls": [call("c1", "get_price", {"sku": "A1"}),
                                                               call("c2", "get_price", {"sku": "B2"})]},
        {"role": "tool", "tool_call_id": "c1", "content": "3.50"},
        {"role": "tool", "tool_call_id": "c2", "content": "1.25"},
        {"role": "assistant", "content": "A1 costs 3.50 and B2 costs 1.25."},
        {"role": "user", "content": "Order two A1 for Zoë."},
        {"role": "assistant", "content": "Ordering now.",
         "tool_calls": [call("c1", "place_order", {"customer": "Zoë", "lines": [{"sku": "A1", "quantity": 2}]})]},
        {"role": "tool", "tool_call_id": "c1", "content": "order 7"},
        {"role": "assistant", "content": "Done: order 7."},
    ]


def tools_tokenizer():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = TOOLS_TEMPLATE
    return tokenizer


def calls_of(turn):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in turn.tool_calls]


# ---- render and parse


@pytest.mark.parametrize("content, calls", [
    ("Just an answer.", []),
    (None, [("get_price", {"sku": "A1"})]),
    (None, [("get_price", {"sku": "A1"}), ("get_price", {"sku": "B2"}),
            ("place_order", {"customer": "Ann", "lines": [{"sku": "A1", "quantity": 3}]})]),
    (None, [("place_order", {"customer": "Zoë 李 ☕", "lines": [{"sku": "Ä-\"1\"</tool_call>"}], "note": "é\n"})]),
    (None, [("place_order", {"customer": "Bo", "lines": [{"sku": "A1"}, {"sku": "B2", "quantity": 1}],
                             "note": None, "speed": "express"})]),
    ("Let me look that up.", [("get_price", {"sku": "A1"}), ("get_price", {"sku": "C3"})]),
])
def test_render_then_parse_gives_the_same_calls(content, calls):
    message = {"role": "assistant", "content": content,
               "tool_calls": [call(f"x{n}", name, arguments) for n, (name, arguments) in enumerate(calls)]}
    turn = parse_assistant(assistant_text(message), SHOP_TOOLS)
    assert turn.valid, turn.problems
    assert calls_of(turn) == calls
    assert turn.content == content
    assert [c["id"] for c in turn.tool_calls] == [f"call_{n}" for n in range(len(calls))]
    assert turn.blocks == len(calls)


def test_the_text_format_strings():
    message = {"role": "assistant", "content": "Checking.", "tool_calls": [call("c", "get_price", {"sku": "Ä"})]}
    assert assistant_text(message) == 'Checking.\n<tool_call>{"name": "get_price", "arguments": {"sku": "Ä"}}</tool_call>'
    plain = render_messages(episode(), SHOP_TOOLS)
    assert [m["role"] for m in plain] == ["system", "user", "assistant", "user", "assistant", "user", "assistant",
                                          "user", "assistant"]
    assert plain[0]["content"].startswith("You run a shop.\n\n" + TOOLS_INTRO + "\n<tools>\n")
    assert json.dumps(SHOP_TOOLS[1], ensure_ascii=False) in plain[0]["content"].splitlines()
    assert plain[3]["content"] == ('<tool_response>{"name": "get_price", "content": "3.50"}</tool_response>\n'
                                   '<tool_response>{"name": "get_price", "content": "1.25"}</tool_response>')
    # ids reused across turns: each result is named after the call just before it
    assert plain[7]["content"] == '<tool_response>{"name": "place_order", "content": "order 7"}</tool_response>'
    assert all(set(m) == {"role", "content"} for m in plain)


def test_tools_without_a_system_message_get_one():
    plain = render_messages(episode()[1:], SHOP_TOOLS)
    assert plain[0]["role"] == "system" and plain[0]["content"].startswith(TOOLS_INTRO)
    assert render_messages(episode()[1:], [])[0] == {"role": "user", "content": "What do A1 and B2 cost?"}


def test_every_rendered_assistant_turn_parses_back_to_the_episode():
    original = [m for m in episode() if m["role"] == "assistant"]
    rendered = [m for m in render_messages(episode(), SHOP_TOOLS) if m["role"] == "assistant"]
    for message, plain in zip(original, rendered):
        turn = parse_assistant(plain["content"], SHOP_TOOLS)
        assert turn.valid and turn.content == message["content"]
        assert calls_of(turn) == [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                                  for c in message.get("tool_calls", [])]


def test_qwen_style_blocks_string_arguments_and_parameters_parse():
    text = ('<tool_call>\n{"name": "get_price", "arguments": "{\\"sku\\": \\"A1\\"}"}\n</tool_call>\n'
            '<tool_call>{"name": "get_price", "parameters": {"sku": "B2"}}</tool_call>')
    turn = parse_assistant(text, SHOP_TOOLS, first_id=4)
    assert turn.valid and turn.content is None
    assert calls_of(turn) == [("get_price", {"sku": "A1"}), ("get_price", {"sku": "B2"})]
    assert [c["id"] for c in turn.tool_calls] == ["call_4", "call_5"]
    assert turn.message == {"role": "assistant", "content": None, "tool_calls": turn.tool_calls}


@pytest.mark.parametrize("text, kinds, kept", [
    ('<tool_call>{"name": "get_price", "arguments": {"sku": }</tool_call>', [MALFORMED_JSON], 0),
    ('<tool_call>["get_price"]</tool_call>', [MALFORMED_JSON], 0),
    ('<tool_call>{"name": "get_price", "arguments": [1]}</tool_call>', [MALFORMED_JSON], 0),
    ('<tool_call>{"name": "refund", "arguments": {}}</tool_call>', [UNKNOWN_TOOL], 1),
    ('<tool_call>{"name": "get_price", "arguments": {"sku": 7}}</tool_call>', [SCHEMA_MISMATCH], 1),
    ('<tool_call>{"name": "get_price", "arguments": {}}</tool_call>', [SCHEMA_MISMATCH], 1),
    ('<tool_call>{"name": "get_price", "arguments": {"sku": "A", "x": 1}}</tool_call>', [SCHEMA_MISMATCH], 1),
    ('<tool_call>{"name": "place_order", "arguments": {"customer": "A", "lines": [{"quantity": 1.5}]}}</tool_call>',
     [SCHEMA_MISMATCH], 1),
    ('<tool_call>{"name": "place_order", "arguments": {"customer": "A", "lines": [], "speed": "now"}}</tool_call>',
     [SCHEMA_MISMATCH], 1),
    ('<tool_call>{"name": "place_order", "arguments": {"customer": "A", "lines": [], "note": 3}}</tool_call>',
     [SCHEMA_MISMATCH], 1),
    ('<tool_call>{"name": "get_price", "arguments": {"sku": "A1"}}', [UNCLOSED_BLOCK], 1),
    ('<tool_call>{"name": "get_price", "arguments": {"sku": "A1"}', [UNCLOSED_BLOCK, MALFORMED_JSON], 0),
    ('<tool_call>{"name": "get_price", "arguments": {"sku": "A1"}}<tool_call>{"name": "get_price", '
     '"arguments": {"sku": "B2"}}</tool_call>', [UNCLOSED_BLOCK], 2),
    ('', [EMPTY], 0),
    ('   \n', [EMPTY], 0),
    (None, [EMPTY], 0),
])
def test_malformed_output_is_counted_not_raised(text, kinds, kept):
    turn = parse_assistant(text, SHOP_TOOLS)
    assert sorted(turn.counts.elements()) == sorted(kinds)
    assert not turn.valid
    assert len(turn.tool_calls) == kept
    assert all(problem.detail for problem in turn.problems)


def test_text_around_blocks_is_the_content_and_tools_none_checks_nothing():
    text = f'Sure. {CALL_OPEN}{{"name": "anything", "arguments": {{"a": 1}}}}{CALL_CLOSE} Then more.'
    turn = parse_assistant(text, None)
    assert turn.valid and turn.content == "Sure.  Then more."
    assert calls_of(turn) == [("anything", {"a": 1})]
    assert parse_assistant("Plain answer.", SHOP_TOOLS).message == {"role": "assistant", "content": "Plain answer."}


# ---- which path a tokenizer takes


def test_supports_tools_tells_the_two_templates_apart():
    assert not supports_tools(tiny_tokenizer())
    assert supports_tools(tools_tokenizer())
    no_template = tiny_tokenizer()
    no_template.chat_template = None
    assert not supports_tools(no_template)


def test_chat_text_without_tool_support_uses_the_text_format():
    text = chat_text(episode(), SHOP_TOOLS, tiny_tokenizer(), add_generation_prompt=False)
    assert TOOLS_INTRO in text and "<|im_start|>tool" not in text
    assert ('<|im_start|>assistant\n<tool_call>{"name": "get_price", "arguments": {"sku": "A1"}}</tool_call>\n'
            '<tool_call>{"name": "get_price", "arguments": {"sku": "B2"}}</tool_call><|im_end|>') in text
    assert chat_text(episode()[:2], SHOP_TOOLS, tiny_tokenizer(), True).endswith("<|im_start|>assistant\n")


def test_chat_text_with_tool_support_uses_the_template():
    text = chat_text(episode(), SHOP_TOOLS, tools_tokenizer(), add_generation_prompt=False)
    assert text.startswith("<|im_start|>system\n# Tools\n") and TOOLS_INTRO not in text
    assert "<|im_start|>tool\n3.50<|im_end|>" in text
    # arguments reach the template as objects, not as a JSON string quoted again
    assert '<tool_call>{"name": "get_price", "arguments": {"sku": "A1"}}</tool_call>' in text


# ---- SFT: the loss on exactly the assistant turns


def labelled_texts(tokenizer, row):
    """The decoded runs of labelled tokens."""
    runs, current = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label != -100:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    return [tokenizer.decode(run) for run in runs]


def test_sft_masking_applies_unchanged_to_a_rendered_episode():
    from protege.train.sft import tokenize_chat
    tokenizer = tiny_tokenizer()
    record = rendered_record({"id": "e", "messages": episode(), "tools": SHOP_TOOLS, "meta": {"source": "t"}},
                             tokenizer)
    row = tokenize_chat(tokenizer, record["messages"], max_length=10_000)
    expected = [m["content"] + "<|im_end|>\n" for m in record["messages"] if m["role"] == "assistant"]
    assert labelled_texts(tokenizer, row) == expected
    assert expected[0].startswith(CALL_OPEN) and "<tool_response>" not in "".join(expected)
    assert record["tools"] == SHOP_TOOLS and record["meta"] == {"source": "t"}


@pytest.mark.parametrize("make_tokenizer", [tiny_tokenizer, tools_tokenizer])
def test_assistant_spans_cover_the_assistant_turns(make_tokenizer):
    tokenizer = make_tokenizer()
    text = chat_text(episode(), SHOP_TOOLS, tokenizer)
    pieces = [text[start:end] for start, end in assistant_spans(episode(), SHOP_TOOLS, tokenizer)]
    assert len(pieces) == 4 and all(piece.endswith("<|im_end|>\n") for piece in pieces)
    assert pieces[1] == "A1 costs 3.50 and B2 costs 1.25.<|im_end|>\n"
    assert pieces[0].startswith("<tool_call>") and "3.50" not in pieces[0]


# ---- conversations


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


GLAIVE_ROW = {
    "conversations": [
        {"from": "human", "value": "I need the area of a rectangle, 5 by 3."},
        {"from": "function_call",
         "value": "{\"name\": \"calculate_area\", \"arguments\": {\"shape\": \"rectangle\", \"dimensions\": [5, 3]}}"},
        {"from": "observation", "value": "{\"area\": 15}"},
        {"from": "gpt", "value": "The area is 15 square units."},
        {"from": "human", "value": "And a circle of radius 4?"},
        {"from": "function_call",
         "value": "{\"name\": \"calculate_area\", \"arguments\": {\"shape\": \"circle\", \"dimensions\": [4]}}"},
        {"from": "observation", "value": "{\"area\": 50.24}"},
        {"from": "gpt", "value": "About 50.24 square units."},
    ],
    "tools": json.dumps([{"name": "calculate_area", "description": "Area of a shape",
                          "parameters": {"type": "object", "properties": {
                              "shape": {"type": "string"}, "dimensions": {"type": "array", "items": {"type": "number"}}},
                              "required": ["shape", "dimensions"]}}]),
    "system": "You are a geometry helper.",
}


def test_openai_rows_with_tools_become_episode_records(tmp_path):
    row = {"messages": episode(), "tools": SHOP_TOOLS}
    row["messages"][2]["tool_calls"][0]["function"]["arguments"] = {"sku": "A1"}  # a dict is accepted too
    row["messages"][3] = {"role": "tool", "tool_call_id": "c1", "content": {"price": 3.5}}
    [record] = read_conversations(write_jsonl(tmp_path / "chats.jsonl", [row]))
    assert set(record) == {"id", "messages", "tools", "meta"} and record["meta"] == {"source": "seed"}
    assert record["tools"] == SHOP_TOOLS
    first_call = record["messages"][2]
    assert first_call["content"] is None
    assert first_call["tool_calls"][0]["function"]["arguments"] == '{"sku": "A1"}'
    assert record["messages"][3] == {"role": "tool", "tool_call_id": "c1", "name": "get_price",
                                     "content": '{"price": 3.5}'}
    assert last_assistant(record)["content"] == "Done: order 7."
    assert chat_text(record["messages"], record["tools"], tiny_tokenizer())  # renders as it is


def test_sharegpt_function_calls_become_episode_records(tmp_path):
    [record] = read_conversations(write_jsonl(tmp_path / "glaive.jsonl", [GLAIVE_ROW]), source="glaive")
    roles = [m["role"] for m in record["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user", "assistant", "tool", "assistant"]
    assert record["tools"][0]["type"] == "function" and record["tools"][0]["function"]["name"] == "calculate_area"
    calls = [m["tool_calls"][0] for m in record["messages"] if m.get("tool_calls")]
    assert [c["id"] for c in calls] == ["call_0", "call_1"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"shape": "circle", "dimensions": [4]}
    assert record["messages"][7] == {"role": "tool", "tool_call_id": "call_1", "name": "calculate_area",
                                     "content": "{\"area\": 50.24}"}
    assert record["meta"]["source"] == "glaive" and record["messages"][0]["content"] == "You are a geometry helper."
    # the converted episode parses back through the student's format
    assistant = render_messages(record["messages"], record["tools"])[2]["content"]
    assert calls_of(parse_assistant(assistant, record["tools"])) == [
        ("calculate_area", {"shape": "rectangle", "dimensions": [5, 3]})]


def test_sharegpt_several_calls_in_one_function_call(tmp_path):
    row = {"conversations": [
        {"from": "system", "value": "From the first turn."},
        {"from": "human", "value": "Prices of A1 and B2?"},
        {"from": "function_call", "value": [{"name": "get_price", "arguments": {"sku": "A1"}},
                                            {"name": "get_price", "arguments": "{\"sku\": \"B2\"}"}]},
        {"from": "observation", "value": "[\"3.50\", {\"price\": 1.25}]"},
        {"from": "gpt", "value": "3.50 and 1.25."}],
        "tools": SHOP_TOOLS, "system": "ignored: the system turn wins"}
    [record] = read_conversations(write_jsonl(tmp_path / "multi.jsonl", [row]))
    assert record["messages"][0] == {"role": "system", "content": "From the first turn."}
    results = [m for m in record["messages"] if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in results] == [("call_0", "3.50"), ("call_1", '{"price": 1.25}')]


def test_plain_multi_turn_chats_are_accepted(tmp_path):
    openai_rows = [{"id": "a", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                            {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
                                            {"role": "assistant", "content": "4"}], "meta": {"source": "mine"}}]
    sharegpt_rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                                        {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}]
    [openai] = read_conversations(write_jsonl(tmp_path / "o.jsonl", openai_rows))
    [sharegpt] = read_conversations(write_jsonl(tmp_path / "s.jsonl", sharegpt_rows))
    assert openai["messages"] == sharegpt["messages"] and openai["tools"] == sharegpt["tools"] == []
    assert openai["id"] == "a" and openai["meta"] == {"source": "mine"}
    assert last_assistant(sharegpt) == {"role": "assistant", "content": "4"}


def test_a_json_array_file_reads_with_line_numbers(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GLAIVE_ROW, {"conversations": [{"from": "human", "value": "x"}]}], indent=2))
    with pytest.raises(ValueError, match=r"data\.json:(\d+): messages: no assistant turn") as info:
        read_conversations(path)
    line = int(str(info.value).split(":")[1])
    assert path.read_text().splitlines()[line - 1].strip() == "{"
    assert len(read_conversations(write_json_array(tmp_path / "ok.json", [GLAIVE_ROW, GLAIVE_ROW]))) == 2


def write_json_array(path, rows):
    path.write_text(json.dumps(rows))
    return path


def with_message(n, message):
    messages = episode()
    messages[n] = message
    return {"messages": messages, "tools": SHOP_TOOLS}


BAD_OPENAI_ROWS = [
    (with_message(3, {"role": "tool", "tool_call_id": "zz", "content": "x"}), "messages[3]: tool_call_id 'zz'"),
    (with_message(4, {"role": "user", "content": "hm"}), "messages[4]: tool call 'c2' has no tool message"),
    (with_message(1, {"role": "robot", "content": "x"}), "messages[1]: expected a message with a role"),
    (with_message(1, {"role": "tool", "content": "x"}), "messages[1]: a tool message that answers no tool call"),
    (with_message(2, {"role": "assistant", "tool_calls": [call("c1", "refund", {})]}),
     "messages[2].tool_calls[0]: calls 'refund'"),
    (with_message(2, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_price", "arguments": "{sku"}}]}),
     "messages[2].tool_calls[0].arguments: not JSON"),
    (with_message(2, {"role": "assistant", "content": None}), "messages[2].content: expected text"),
    ({"messages": [{"role": "user", "content": "alone"}]}, "messages: no assistant turn"),
    ({"messages": episode(), "tools": [{"description": "nameless"}]}, "tools[0]: expected an OpenAI tool schema"),
    ({"conversations": []}, "expected an object with 'messages'"),
]


@pytest.mark.parametrize("bad, message", BAD_OPENAI_ROWS)
def test_a_bad_openai_row_names_the_file_and_line(tmp_path, bad, message):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    path = write_jsonl(tmp_path / "chats.jsonl", [good, good, bad])
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}:3: {message}")):
        read_conversations(path)


def sharegpt_with(n, turn):
    turns = [dict(t) for t in GLAIVE_ROW["conversations"]]
    turns[n] = turn
    return {**GLAIVE_ROW, "conversations": turns}


BAD_SHAREGPT_ROWS = [
    (sharegpt_with(1, {"from": "function_call", "value": "{name: calculate_area}"}),
     "conversations[1]: a function_call that is not JSON"),
    (sharegpt_with(1, {"from": "function_call", "value": "{\"arguments\": {}}"}),
     "conversations[1]: a function_call must be"),
    (sharegpt_with(2, {"from": "gpt", "value": "no observation"}),
     "conversations[2]: the function_call before it has no observation"),
    (sharegpt_with(0, {"from": "observation", "value": "x"}), "conversations[0]: an observation that answers"),
    (sharegpt_with(0, {"from": "bot", "value": "x"}), "conversations[0]: expected {'from', 'value'}"),
    ({**GLAIVE_ROW, "tools": "[{not json"}, "tools: not JSON"),
    ({"messages": []}, "expected an object with 'conversations'"),
]


@pytest.mark.parametrize("bad, message", BAD_SHAREGPT_ROWS)
def test_a_bad_sharegpt_row_names_the_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "glaive.jsonl", [GLAIVE_ROW, bad])
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}:2: {message}")):
        read_conversations(path)


def test_unreadable_files_name_the_file(tmp_path):
    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_text(json.dumps(GLAIVE_ROW) + "\n\n{oops\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl:3: invalid JSON"):
        read_conversations(bad_json)
    unknown = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "x", "output": "y"}])
    with pytest.raises(ValueError, match=r"alpaca\.jsonl:1: a row needs 'messages'"):
        read_conversations(unknown)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no conversations"):
        read_conversations(empty)


def test_normalize_tools_wraps_bare_functions():
    bare = {"name": "f", "parameters": {"type": "object", "properties": {}}}
    assert normalize_tools([bare, SHOP_TOOLS[0]]) == [{"type": "function", "function": bare}, SHOP_TOOLS[0]]


def test_a_json_result_is_rendered_as_json_and_anything_else_as_its_string():
    def block(content):
        return response_block({"role": "tool", "name": "lookup", "content": content})
    assert block('{"id": "C001", "orders": [1, 2]}') == ('<tool_response>{"name": "lookup", "content": '
                                                        '{"id": "C001", "orders": [1, 2]}}</tool_response>')
    assert block('[{"a": 1}]') == '<tool_response>{"name": "lookup", "content": [{"a": 1}]}</tool_response>'
    assert block("3.50") == '<tool_response>{"name": "lookup", "content": "3.50"}</tool_response>'
    assert block("{not json") == '<tool_response>{"name": "lookup", "content": "{not json"}</tool_response>'
    assert block("error: boom") == '<tool_response>{"name": "lookup", "content": "error: boom"}</tool_response>'
