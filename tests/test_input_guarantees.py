"""Bad input is one line naming the file, line and field, exit 2, nothing written: the task file and the
JSONL files it names, whatever is wrong with them (issue 19's probes of task files and the CLI)."""

import json
import subprocess
import sys

import pytest

from protege.config import ConfigError, load_task
from protege.train import fitting_rows

TASK = """name: t
instruction: Do it.
seeds: seeds.jsonl
inputs: inputs.jsonl
test: test.jsonl
teacher:
  kind: function
  function: "teacher:teacher"
"""
GOOD_ROWS = {"seeds.jsonl": '{"input": "a", "output": "b"}\n', "inputs.jsonl": '{"input": "x"}\n',
             "test.jsonl": '{"input": "c", "output": "d"}\n'}


def task_folder(tmp_path, task=TASK, **files):
    (tmp_path / "task.yaml").write_bytes(task.encode() if isinstance(task, str) else task)
    for name, text in {**GOOD_ROWS, **files}.items():
        (tmp_path / name).write_bytes(text.encode() if isinstance(text, str) else text)
    return tmp_path


def error_of(folder, overrides=()) -> str:
    with pytest.raises(ConfigError) as err:
        load_task(folder, list(overrides))
    return str(err.value)


def test_the_good_folder_loads(tmp_path):
    task = load_task(task_folder(tmp_path))
    assert [task.seeds[0].output, task.inputs, task.test[0].output] == ["b", ["x"], "d"]


@pytest.mark.parametrize("name, text, line, words", [
    ("seeds.jsonl", '{"input": "a", "output": "b"}\n{"input": "no answer"}\n', 2, "has no output"),
    ("seeds.jsonl", '{"output": "no question"}\n', 1, "has no input"),
    ("seeds.jsonl", '"just text"\n', 1, "expected a JSON object"),
    ("test.jsonl", '{"input": "c", "output": "d"}\n\n{"input": "no reference"}\n', 3, "has no output"),
    ("test.jsonl", '{"input": "c", "output": 4}\n', 1, "valid string"),
    ("inputs.jsonl", '{"input": "x"}\n{"text": "wrong key"}\n', 2, "has no input"),
    ("inputs.jsonl", '{"input": 7}\n', 1, "is not text"),
    ("test.jsonl", b'{"input": "c", "output": "d"}\n{"input": "caf\xe9", "output": "x"}\n', 2, "not UTF-8"),
])
def test_a_bad_row_names_its_file_and_line(tmp_path, name, text, line, words):
    message = error_of(task_folder(tmp_path, **{name: text}))
    field = name.removesuffix(".jsonl")
    assert message.startswith(f"{tmp_path / name}:{line}: field '{field}':"), message
    assert words in message


def test_inline_examples_are_held_to_the_same_rule(tmp_path):
    task = TASK.replace("seeds: seeds.jsonl", "seeds:\n  - {input: a, output: b}\n  - {input: lonely}")
    message = error_of(task_folder(tmp_path, task))
    assert message.startswith(f"{tmp_path / 'task.yaml'}:5: field 'seeds':") and "has no output" in message


def test_a_test_item_without_output_is_fine_where_something_else_judges_it(tmp_path):
    task = TASK.replace("teacher:", "metric: code\nteacher:")
    folder = task_folder(tmp_path, task, **{"test.jsonl": '{"input": "f", "tests": "assert f() == 1"}\n'})
    assert load_task(folder).test[0].tests == "assert f() == 1"


@pytest.mark.parametrize("task, line, field, words", [
    (TASK + "rounds: 1\nrounds: 2\n", 10, "rounds", "given twice"),
    (TASK.replace('  function: "teacher:teacher"', '  function: "teacher:teacher"\n  kind: openai'), 9,
     "teacher.kind", "given twice"),
    (TASK.replace("name: t", "name: ../../escaped"), 1, "name", "one folder name"),
    (TASK.replace("name: t", "name: a/b"), 1, "name", "one folder name"),
    (TASK.replace("Do it.", "Do it \xff.").encode("latin-1"), 2, "(document)", "not UTF-8"),
])
def test_a_bad_task_file_names_its_line_and_field(tmp_path, task, line, field, words):
    message = error_of(task_folder(tmp_path, task))
    assert message.startswith(f"{tmp_path / 'task.yaml'}:{line}: field '{field}':"), message
    assert words in message


@pytest.mark.parametrize("override, words", [
    ("rounds=[1,", "invalid YAML value"), ("=3", "a key is empty"), ("train..epochs=1", "a key is empty"),
    ("rounds", "expected KEY=VALUE"),
])
def test_a_bad_set_is_one_line(tmp_path, override, words):
    message = error_of(task_folder(tmp_path), [override])
    assert message.startswith(f"--set {override}:") and words in message


@pytest.mark.parametrize("override", ["name=../../escaped", "rounds=[1,", "=3"])
def test_the_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, override):
    (tmp_path / "task").mkdir()
    folder = task_folder(tmp_path / "task")
    proc = subprocess.run([sys.executable, "-m", "protege.cli", "run", str(folder), "--set", override],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task"]


def chat_row(question, answer):
    return json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})


def test_train_data_with_content_that_is_not_text_is_one_line(tmp_path, examples_dir):
    data = tmp_path / "data.jsonl"
    data.write_text(chat_row("fine", "ok") + "\n" + chat_row(5, ["x"]) + "\n")
    proc = subprocess.run([sys.executable, "-m", "protege.cli", "train", str(examples_dir / "iso-dates"), "--data",
                           str(data), "--run-dir", str(tmp_path / "run"), "--set", "student.model=tiny:0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {data}:2: field 'data': messages[0].content: expected text")


def test_an_example_far_over_max_length_is_left_out_with_a_count():
    said = []
    rows = [{"messages": [{"role": "user", "content": "x" * n}]} for n in (10, 5000, 20)]
    assert fitting_rows(rows, 16, said.append) == [rows[0], rows[2]]
    assert said == ["train: 1 of 3 examples left out, each over 1024 characters (64 a token of train.max_length 16)"]
    with pytest.raises(ValueError, match="every example is over 1024 characters"):
        fitting_rows(rows[1:2], 16, said.append)


def test_a_huge_line_trains_without_it(tmp_path, examples_dir):
    data = tmp_path / "data.jsonl"
    data.write_text(chat_row("2024-01-02?", "2024-01-02") + "\n" + chat_row("y" * 5_000_000, "z") + "\n")
    proc = subprocess.run([sys.executable, "-m", "protege.cli", "train", str(examples_dir / "iso-dates"), "--data",
                           str(data), "--run-dir", str(tmp_path / "run"), "--set", "student.model=tiny:0",
                           "--set", "train.max_steps=1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 2 examples left out, each over 32768 characters" in proc.stderr
