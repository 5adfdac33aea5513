"""Seeds and test items given as conversations: OpenAI chat JSONL or ShareGPT (a JSON array, as
LLaMA-Factory's files are), with or without tool calls. A plain multi-turn chat's earlier turns are
context the student and the teacher see, its last assistant turn the reference; an agent task's
seed with a reference trajectory trains as it is, and the teacher is not asked to act on it."""

import json
import shutil
from pathlib import Path

import pytest

from protege.cli import main
from protege.config import ConfigError, load_task
from protege.records import task_chat
from protege.runs import read_jsonl

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop-agent"
TINY = ["--set", "student.model=tiny:0", "--set", "train.max_steps=1", "--set", "eval.max_new_tokens=4",
        "--set", "forgetting.probe_items=10", "--set", "forgetting.max_new_tokens=2", "--set", "rounds=1",
        "--set", "merge.strengths=[]", "--set", "train.report_to=[none]", "--set", "train.max_length=4096"]

# the teacher can only answer from the earlier turns: "what was my number?"
TEACHER = '''
import json

def teacher(request):
    if request.purpose != "answer":
        return "What number did I tell you?"
    said = [m["content"] for m in json.loads(request.context or "[]") if m["role"] == "user"]
    return said[0].split()[-1] if said else "no context"
'''


def chat(number: int) -> dict:
    return {"messages": [{"role": "system", "content": "ignored: the task's instruction is the system turn"},
                         {"role": "user", "content": f"remember {number}"},
                         {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": "which number did I give you a moment ago?"},
                         {"role": "assistant", "content": str(number)}]}


def sharegpt(number: int) -> dict:
    return {"conversations": [{"from": "human", "value": f"remember {number}"}, {"from": "gpt", "value": "ok"},
                              {"from": "human", "value": "what was my number?"}, {"from": "gpt", "value": str(number)}]}


def memory_task(folder: Path) -> Path:
    folder.mkdir()
    (folder / "teacher.py").write_text(TEACHER)
    (folder / "seeds.jsonl").write_text("".join(json.dumps(chat(n)) + "\n" for n in range(3)))
    (folder / "test.json").write_text(json.dumps([sharegpt(n) for n in range(10, 16)], indent=1))
    (folder / "task.yaml").write_text("instruction: Answer the user.\nseeds: seeds.jsonl\ntest: test.json\n"
                                      "teacher: {kind: function, function: 'teacher:teacher'}\n"
                                      "synth: {label_inputs: false}\nbudget: {requests: 4}\n")
    return folder


def test_chat_files_become_examples_whose_earlier_turns_are_context(tmp_path):
    task = load_task(memory_task(tmp_path / "memory"))
    seed, item = task.seeds[0], task.test[0]
    assert (seed.input, seed.output) == ("which number did I give you a moment ago?", "0")
    assert item.output == "10" and [m["content"] for m in item.context()] == ["remember 10", "ok"]
    assert all(m["role"] != "system" for m in seed.messages)
    assert task_chat("Answer.", item.input, item.context())[1:] == item.messages[:-1]


def test_a_conversation_task_runs_with_context_for_teacher_student_and_training(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["run", str(memory_task(tmp_path / "memory")), "--run-dir", str(run_dir), *TINY]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["teacher"]["accuracy"] == 1.0  # it answered from the context it was given
    stages = {p.name.rsplit("-", 1)[0]: p for p in (run_dir / "stages").iterdir()}
    seeds = [r for r in read_jsonl(stages["synth-r0"] / "data.jsonl") if r["meta"]["source"] == "seed"]
    assert [m["content"] for m in seeds[0]["messages"]] == ["Answer the user.", "remember 0", "ok",
                                                             "which number did I give you a moment ago?", "0"]


def test_a_bad_chat_row_names_file_line_and_field(tmp_path, capsys):
    folder = memory_task(tmp_path / "memory")
    rows = [chat(1), {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}]
    (folder / "seeds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=r"seeds\.jsonl:2: field 'seeds': messages\[1\]: expected a message with a role"):
        load_task(folder)
    assert main(["run", str(folder), "--run-dir", str(tmp_path / "run"), *TINY]) == 2
    assert not (tmp_path / "run").exists()


def reference_trajectory() -> dict:
    call = {"id": "call_0", "type": "function", "function": {"name": "get_shipment",
                                                              "arguments": json.dumps({"order_id": 1027})}}
    return {"messages": [{"role": "user", "content": "Where is order 1027 now? Tell me its status."},
                         {"role": "assistant", "content": None, "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": "call_0", "content": '{"status": "delivered"}'},
                         {"role": "assistant", "content": "delivered"}]}


def test_an_agent_seed_with_a_reference_trajectory_trains_as_given(tmp_path):
    shop = tmp_path / "shop"
    shutil.copytree(SHOP, shop)
    (shop / "seeds.jsonl").write_text(json.dumps(reference_trajectory()) + "\n")
    run_dir = tmp_path / "run"
    assert main(["run", str(shop), "--run-dir", str(run_dir), *TINY, "--set", "synth.label_inputs=false",
                 "--set", "budget.requests=1"]) == 0
    stages = {p.name.rsplit("-", 1)[0]: p for p in (run_dir / "stages").iterdir()}
    seeds = [r for r in read_jsonl(stages["synth-r0"] / "data.jsonl") if r["meta"]["source"] == "seed"]
    assert len(seeds) == 1 and seeds[0]["meta"]["reference"] is True
    assert seeds[0]["messages"][1:] == load_task(shop).seeds[0].messages
    assert {t["function"]["name"] for t in seeds[0]["tools"]} >= {"get_shipment", "issue_refund"}


GLAIVE = [{"conversations": [
    {"from": "human", "value": "What is the weather in Paris?"},
    {"from": "function_call", "value": json.dumps({"name": "weather", "arguments": {"city": "Paris"}})},
    {"from": "observation", "value": json.dumps({"celsius": 21})},
    {"from": "gpt", "value": "21 degrees."}],
    "tools": json.dumps([{"name": "weather", "description": "Weather of a city.",
                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}])}]


def test_train_reads_sharegpt_function_call_data_as_llama_factory_writes_it(tmp_path):
    data = tmp_path / "glaive.json"
    data.write_text(json.dumps(GLAIVE * 3, indent=2))
    run_dir = tmp_path / "run"
    args = ["train", str(memory_task(tmp_path / "memory")), "--data", str(data), "--run-dir", str(run_dir), *TINY]
    assert main(args) == 0
    converted = read_jsonl(run_dir / "given-glaive.jsonl")
    assert converted[0]["messages"][1]["tool_calls"][0]["function"] == {"name": "weather",
                                                                         "arguments": '{"city": "Paris"}'}
    assert converted[0]["messages"][2]["role"] == "tool" and converted[0]["tools"][0]["function"]["name"] == "weather"
    assert any((run_dir / "stages").glob("train-r0-*/model"))


def test_train_data_with_a_bad_row_names_file_line_and_field(tmp_path, capsys):
    data = tmp_path / "glaive.json"
    bad = {"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "not json"}]}
    data.write_text(json.dumps([GLAIVE[0], bad], indent=2))
    args = ["train", str(memory_task(tmp_path / "memory")), "--data", str(data), "--run-dir", str(tmp_path / "r"), *TINY]
    assert main(args) == 2
    second = [n for n, line in enumerate(data.read_text().splitlines(), 1) if line == "  {"][1]  # row 2 starts
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {data}:{second}: field 'data': ") and err.count("\n") == 0
