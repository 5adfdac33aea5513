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


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: invalid JSON: {exc.msg}") from None
    return rows


class Run:
    """A run directory. Each stage lives in stages/NAME-KEY; a stage whose folder exists is done."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.stages = self.root / "stages"

    def stage_dir(self, name: str, key: str) -> Path:
        return self.stages / f"{name}-{key}"

    def stage(self, name: str, key_material: Any, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """Return the stage's folder, building it first unless it exists. The build writes into a
        temporary folder that is renamed into place only when it finishes, so a crash leaves
        nothing that looks done. Returns (folder, reused)."""
        final = self.stage_dir(name, digest(key_material))
        if final.is_dir():
            return final, True
        self.stages.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.stages, prefix=f".{final.name}."))
        try:
            build(tmp)
            write_json(tmp / "stage.json", {"name": name, "key": key_material})
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final, False
