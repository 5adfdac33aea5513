import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own teacher cache; tiny models are shared across tests."""
    monkeypatch.setenv("PROTEGE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    yield


@pytest.fixture
def examples_dir() -> Path:
    return ROOT / "examples"


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
