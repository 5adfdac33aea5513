from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set", "cd"))]
    assert len(ci) == 1 and f"\n{ci[0]}\n" in readme


def test_the_readmes_task_files_validate():
    import re
    import yaml
    from protege.config import TaskSpec
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    for block in blocks:
        data = yaml.safe_load(block) | {"test": [{"input": "a", "output": "b"}]}  # files the example names
        TaskSpec.model_validate(data)
