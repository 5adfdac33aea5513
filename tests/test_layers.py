"""The house's rules, checked on the source: layers import one way and no package has an import
cycle (import-linter's contracts in pyproject.toml), and no module imports another's private name."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "protege"


def test_import_linter_contracts_are_kept():
    command = shutil.which("lint-imports") or f"{Path(sys.executable).parent}/lint-imports"
    result = subprocess.run([command, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def private_imports(path: Path) -> list[str]:
    """`from X import _name`: a private name taken from another module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            found += [f"{path.parent.name}/{path.name}:{node.lineno}: {alias.name} from {'.' * node.level}{node.module}"
                      for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names():
    assert [line for path in sorted(SOURCE.rglob("*.py")) for line in private_imports(path)] == []


def test_the_private_import_check_sees_one(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from .config import _line_of\nfrom .runs import digest\nfrom . import __version__\n")
    assert private_imports(module) == [f"{tmp_path.name}/m.py:1: _line_of from .config"]
