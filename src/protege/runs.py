"""Run directories: atomic files, content-addressed stages that are skipped when done."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable


def digest(obj: Any) -> str:
    """Stable short hash of any JSON-able value: the key of a stage."""
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def cache_root() -> Path:
    """Where converted models and the teacher cache live; PROTEGE_CACHE_DIR moves it."""
    return Path(os.environ.get("PROTEGE_CACHE_DIR") or Path.home() / ".cache" / "protege")


def build_dir_atomic(target: Path, build: Callable[[Path], None]) -> None:
    """Build a folder in a temporary sibling and rename it into place when the build finishes, so
    a crash leaves nothing that looks done and no temporary folder behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class JSONLError(ValueError):
    """A line of a JSONL file that is not JSON; says which file and line."""

    def __init__(self, path: Path, line: int, msg: str):
        self.path, self.line, self.msg = path, line, msg
        super().__init__(f"{path}:{line}: invalid JSON: {msg}")


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise JSONLError(path, n, exc.msg) from None
    return rows


class Run:
    """A run directory. Each stage lives in stages/NAME-KEY; a stage whose folder exists is done."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.stages = self.root / "stages"

    def stage_dir(self, name: str, key: str) -> Path:
        return self.stages / f"{name}-{key}"

    def stage(self, name: str, key_material: Any, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """Return the stage's folder, building it first (atomically) unless it exists.
        Returns (folder, reused)."""
        final = self.stage_dir(name, digest(key_material))
        if final.is_dir():
            return final, True

        def build_and_record(out: Path) -> None:
            build(out)
            write_json(out / "stage.json", {"name": name, "key": key_material})

        if not is_main_process():
            return follow_main_process(final, build), False
        build_dir_atomic(final, build_and_record)
        return final, False


def is_main_process() -> bool:
    """Under `accelerate launch` or torchrun every process runs protege; rank 0 writes the run."""
    return int(os.environ.get("RANK", "0")) == 0


def follow_main_process(final: Path, build: Callable[[Path], None], timeout: float = 3600) -> Path:
    """Another rank does the same work (a training step needs every rank) into a scratch folder
    it then drops, and waits for rank 0's folder to appear."""
    import time
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.rank") as scratch:
        build(Path(scratch))
    deadline = time.time() + timeout
    while not final.is_dir():
        if time.time() > deadline:
            raise TimeoutError(f"rank 0 did not finish {final}")
        time.sleep(0.2)
    return final
