import subprocess
import sys

import pytest

from protege.config import ConfigError, load_task

GOOD = """name: t
instruction: Do it.
seeds:
  - {input: a, output: b}
test:
  - {input: c, output: d}
teacher:
  kind: function
  function: "teacher:teacher"
"""


def write(tmp_path, text):
    (tmp_path / "task.yaml").write_text(text)
    return tmp_path


def test_valid_spec_loads_with_defaults(tmp_path):
    task = load_task(write(tmp_path, GOOD))
    assert task.spec.name == "t" and task.seeds[0].output == "b" and task.test[0].input == "c"
    assert task.spec.train.adapter == "lora" and task.spec.student.model.startswith("embedded:")


def test_examples_load(examples_dir):
    for name, inputs in [("iso-dates", 300), ("arithmetic", 400)]:
        task = load_task(examples_dir / name)
        assert len(task.inputs) == inputs and len(task.test) >= 100


@pytest.mark.parametrize("text,line,field,words", [
    (GOOD + "rounds: two\n", 10, "rounds", "integer"),
    (GOOD.replace("  kind: function", "  kind: function\n  temprature: 0.5"), 9, "teacher.temprature", "unknown key"),
    (GOOD + "train:\n  epochs: -1\n", 11, "train.epochs", "greater than 0"),
    (GOOD + "seeds: missing.jsonl\n", 10, "seeds", "file not found"),
    (GOOD + "metric:\n  name: regex\n  pattern: \"(\"\n", 12, "metric.pattern", "invalid pattern"),
    (GOOD.replace("instruction: Do it.", "instruction: [unclosed"), 3, "", "invalid YAML"),
])
def test_bad_spec_names_file_line_field(tmp_path, text, line, field, words):
    with pytest.raises(ConfigError) as err:
        load_task(write(tmp_path, text))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'task.yaml'}:{line}:"), message
    assert f"field '{field}'" in message or not field
    assert words in message


def test_cli_exits_2_and_writes_nothing(tmp_path):
    write(tmp_path, GOOD + "rounds: two\n")
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "protege.cli", "run", str(tmp_path), "--run-dir", str(run_dir)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "rounds" in proc.stderr
    assert not run_dir.exists()


def test_override_from_command_line(tmp_path):
    task = load_task(write(tmp_path, GOOD), ["student.model=tiny:0", "train.epochs=1"])
    assert task.spec.student.model == "tiny:0" and task.spec.train.epochs == 1.0
    with pytest.raises(ConfigError, match="train.epoch"):
        load_task(write(tmp_path, GOOD), ["train.epoch=1"])


def test_bad_jsonl_line_names_file_line_field(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"input": "c", "output": "d"}\n{"input": oops}\n')
    with pytest.raises(ConfigError) as err:
        load_task(write(tmp_path, GOOD.replace("test:\n  - {input: c, output: d}", "test: test.jsonl")))
    assert str(err.value).startswith(f"{tmp_path / 'test.jsonl'}:2: field 'test': invalid JSON")
