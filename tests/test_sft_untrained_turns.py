"""SFT's per-turn mask: an assistant message marked "train": false (a mistake an agent episode shows
before it corrects it, synth/agent_refine.py) is context but not in the loss, on plain chats and on
episodes rendered for a template without tool support; the flag never reaches the template."""

import pytest

from protege.models import load_model, model_dir
from protege.train.sft import tokenize_chat, tokenize_record


@pytest.fixture(scope="module")
def tokenizer():
    return load_model(model_dir("tiny:0"))[1]


def test_a_turn_marked_train_false_is_context_but_not_in_the_loss(tokenizer):
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "X", "train": False},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "Y"}]
    row = tokenize_chat(tokenizer, chat, 10_000)
    # the template: <|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nX<|im_end|>\n...: every token
    # is input, the last assistant turn's "Y<|im_end|>\n" alone is labeled
    plain = [{"role": m["role"], "content": m["content"]} for m in chat]
    assert row["input_ids"] == tokenizer(tokenizer.apply_chat_template(plain, tokenize=False),
                                         add_special_tokens=False)["input_ids"]
    tail = tokenizer("Y<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert row["labels"] == [-100] * (len(row["input_ids"]) - len(tail)) + tail
    trained = tokenize_chat(tokenizer, plain, 10_000)["labels"]
    assert tokenizer.decode([t for t in trained if t != -100]) == "X<|im_end|>\nY<|im_end|>\n"


def test_an_episode_record_keeps_its_untrained_turn_out_of_the_loss_on_the_rendered_path(tokenizer):
    def turn(name, arguments, **flag):
        return {"role": "assistant", "content": None, **flag, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}]}
    messages = [{"role": "user", "content": "buy 1 pear"}, turn("looks", '{"item": "pear"}', train=False),
                {"role": "tool", "tool_call_id": "c", "content": "error: unknown tool 'looks'"},
                turn("look", '{"item": "pear"}'), {"role": "tool", "tool_call_id": "c", "content": "5"},
                {"role": "assistant", "content": "bought 1 pear"}]
    tools = [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}]
    row = tokenize_record(tokenizer, {"messages": messages, "tools": tools}, 4096)
    learned = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
    assert '"name": "look"' in learned and "bought 1 pear" in learned
    assert "looks" not in learned and "looks" in tokenizer.decode(row["input_ids"])
