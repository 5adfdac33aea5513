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
    assert task.spec.train.adapter.name == "lora" and task.spec.student.model.startswith("embedded:")


def test_examples_load(examples_dir):
    for name, inputs in [("iso-dates", 300), ("arithmetic", 400)]:
        task = load_task(examples_dir / name)
        assert len(task.inputs) == inputs and len(task.test) >= 100


@pytest.mark.parametrize("text,line,field,words", [
    (GOOD + "rounds: two\n", 10, "rounds", "integer"),
    (GOOD.replace("  kind: function", "  kind: function\n  temprature: 0.5"), 9, "teacher.temprature", "unknown key"),
    (GOOD + "train:\n  epochs: -1\n", 11, "train.epochs", "greater than 0"),
    (GOOD.replace("seeds:\n  - {input: a, output: b}", "seeds: missing.jsonl"), 3, "seeds", "file not found"),
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


@pytest.mark.parametrize("text, line, field, words", [
    (GOOD + "train:\n  method: {name: dpo, beta: -1}\n", 11, "train.method.beta", "greater than 0"),
    (GOOD + "train:\n  method:\n    name: grpo\n    beams: 2\n", 13, "train.method.beams", "unknown key"),
    (GOOD + "train:\n  adapter: {name: lora, r: x}\n", 11, "train.adapter.r", "valid integer"),
    (GOOD + "train:\n  method: ppo\n", 11, "train.method", "expected tags: 'cft', 'distill', 'dpo'"),
    (GOOD + "metric: {name: numeric, tolerance: -1}\n", 10, "metric.tolerance", "greater than or equal to 0"),
    (GOOD.replace("  function:", "  base_url: x\n  function:"), 9, "teacher.base_url", "unknown key"),
])
def test_a_methods_own_options_name_file_line_field(tmp_path, text, line, field, words):
    with pytest.raises(ConfigError) as err:
        load_task(write(tmp_path, text))
    assert str(err.value).startswith(f"{tmp_path / 'task.yaml'}:{line}: field '{field}': ") and words in str(err.value)


def test_method_options_set_from_the_command_line(tmp_path):
    task = load_task(write(tmp_path, GOOD), ["train.method=dpo", "train.method.beta=0.2", "train.adapter.r=4"])
    assert (task.spec.train.method.name, task.spec.train.method.beta, task.spec.train.adapter.r) == ("dpo", 0.2, 4)
    with pytest.raises(ConfigError, match="field 'train.method.beta': unknown key"):
        load_task(write(tmp_path, GOOD), ["train.method.beta=0.2"])  # sft has no beta


def test_legacy_flat_train_keys_are_read_with_one_line_each(tmp_path, capsys):
    text = GOOD + "train:\n  method: dpo\n  dpo_beta: 0.3\n  lora_r: 4\n  grpo_max_steps: 7\n"
    task = load_task(write(tmp_path, text), ["train.rl_learning_rate=0.001"])
    train = task.spec.train
    assert (train.method.beta, train.method.learning_rate, train.adapter.r) == (0.3, 0.001, 4)
    lines = capsys.readouterr().err.splitlines()
    where = tmp_path / "task.yaml"
    assert lines == [
        f"{where}:12: train.dpo_beta is read as train.method.beta; write train: {{method: {{name: dpo, beta: 0.3}}}}",
        f"{where}:14: train.grpo_max_steps is read by grpo only, not by dpo: ignored; to set it, write train: "
        "{method: {name: grpo, max_steps: 7}}",
        "--set train.rl_learning_rate: train.rl_learning_rate is read as train.method.learning_rate; write train: "
        "{method: {name: dpo, learning_rate: 0.001}}",
        f"{where}:13: train.lora_r is read as train.adapter.r; write train: {{adapter: {{name: lora, r: 4}}}}",
    ]


def test_switching_a_method_on_the_command_line_drops_the_options_of_the_one_it_replaces(tmp_path, capsys):
    task = load_task(write(tmp_path, GOOD), ["teacher.kind=openai", "teacher.base_url=http://x/v1"])
    assert (task.spec.teacher.kind, task.spec.teacher.base_url) == ("openai", "http://x/v1")
    assert capsys.readouterr().err == "--set teacher.kind=openai: dropped function, which openai does not read\n"
    with pytest.raises(ConfigError, match="field 'teacher.function': unknown key"):
        load_task(write(tmp_path, GOOD.replace("kind: function", "kind: openai")))  # in the file: a mistake
